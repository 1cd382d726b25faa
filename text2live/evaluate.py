"""``t2l-eval <run or sweep folder>``: the metrics of finished runs, in ``metrics.json`` and TensorBoard.

Each run's edit is re-rendered from its checkpoint (not read back from its 8-bit PNG/MP4 outputs) and scored
with :mod:`text2live.metrics` by the CLIP of the run's own config (run in float32).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from text2live import files, runs
from text2live.build import instantiate, is_video
from text2live.clip_guide import ClipGuide
from text2live.errors import InputError
from text2live.io import load_image
from text2live.metrics import image_metrics, video_metrics
from text2live.render import generator_from_state, load_generator, render_image
from text2live.runs import METRICS_FILE, load_config, load_run
from text2live.video_system import render_video

TB_DIR = "tb"
TB_PREFIX = "eval/"

# Config keys that say where or how often things are written, not what is computed: left out of the hparams.
# The CLIP settings of evaluation, whatever the run trained with: float32, and no second (relevancy) model.
EVAL_CLIP = {"precision": "fp32", "relevancy_name": None, "relevancy_num_layers": 0}
# The three metrics of the one-line summary (video runs: the first layer's CLIP metrics).
SUMMARY = (("clip_score", "clip_score"), ("clip_directional_similarity", "clip_dir"), ("preservation_psnr", "psnr"))


# configs ----------------------------------------------------------------------------------------------------


def flatten_hparams(cfg: dict | DictConfig, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The scalar leaves of a run config with dotted keys, for TensorBoard's HParams view.

    Lists of scalars (prompts, ``edit_layers``) are joined with `` | ``, ``null`` becomes the string ``"null"``
    (so that runs with and without a value stay comparable); other values, ``_partial_`` and the result-neutral
    keys (:data:`text2live.runs.RESULT_NEUTRAL_KEYS`: output locations, logging frequencies, trainer ...) are left out.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, str | int | float | bool] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if runs.is_result_neutral(name) or key == "_partial_":
            continue
        if isinstance(value, dict):
            flat.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, list):
            if all(isinstance(v, str | int | float | bool) for v in value):
                flat[name] = " | ".join(str(v) for v in value)
        elif value is None:
            flat[name] = "null"
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
    return flat


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# CLIP -------------------------------------------------------------------------------------------------------


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def eval_clip_config(cfg: DictConfig) -> DictConfig:
    """The run's ``clip`` config with the evaluation settings of :data:`EVAL_CLIP` (for the keys it has)."""
    clip = OmegaConf.create(_plain(cfg.clip))
    for key, value in EVAL_CLIP.items():
        if key in clip:
            clip[key] = value
    return clip


def clip_key(cfg: DictConfig) -> str:
    """Identifies the CLIP an evaluation of this run uses: runs with equal keys share one guide."""
    return json.dumps(_plain(eval_clip_config(cfg)), sort_keys=True)


def build_eval_guide(cfg: DictConfig, device: torch.device | str | None = None) -> ClipGuide:
    """The run's CLIP (``instantiate(cfg.clip)`` with :data:`EVAL_CLIP`), on ``device``, in float32."""
    guide = instantiate(eval_clip_config(cfg))
    return guide.place(device or default_device())


# one run ----------------------------------------------------------------------------------------------------


def is_up_to_date(run_dir: Path) -> bool:
    """``metrics.json`` exists, can be read and is at least as new as the run's checkpoint."""
    metrics, ckpt = Path(run_dir) / METRICS_FILE, runs.checkpoint_path(run_dir)
    if ckpt is None or not metrics.is_file() or metrics.stat().st_mtime_ns < ckpt.stat().st_mtime_ns:
        return False
    try:
        return isinstance(json.loads(metrics.read_text()).get("metrics"), dict)
    except (OSError, ValueError, AttributeError):
        return False


def _image_run_metrics(run_dir: Path, guide: ClipGuide, device) -> dict[str, float]:
    generator, cfg = load_generator(run_dir, device)
    image = load_image(cfg.image_path, cfg.data.resize_input)[None]
    layers = render_image(generator, image)
    return image_metrics(
        guide, image, layers["composite"], layers["alpha"], _plain(cfg.comp_text), _plain(cfg.src_text)
    )


def _video_run_metrics(run_dir: Path, guide: ClipGuide, device, datamodule=None) -> dict[str, float]:
    state, cfg = load_run(run_dir)
    if datamodule is None:
        datamodule = instantiate(cfg.data)
        datamodule.setup("predict")
    layers = list(cfg.edit_layers)
    generators = {layer: generator_from_state(cfg, state, f"generators.{layer}.").to(device) for layer in layers}
    _, composed = render_video(generators, datamodule, cfg.video.align_corners, device)
    visible = {layer: composed["visible"][layer][:, 3:] for layer in layers}
    comp = {layer: _plain(cfg[layer].comp_text) for layer in layers}
    src = {layer: _plain(cfg[layer].src_text) for layer in layers}
    return video_metrics(guide, datamodule.video, composed["full"], visible, comp, src)


def _json_value(value: float) -> float | None:
    return value if math.isfinite(value) else None


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file, so that a partial file never appears."""
    files.write_text(path, json.dumps(data, indent=2) + "\n")


def log_hparams(run_dir: Path, hparams: dict, metrics: dict[str, float], step: int | None = None) -> None:
    """Add the run's hparams and metrics (as ``eval/<metric>`` scalars at ``step``) to ``<run_dir>/tb``.

    TensorBoard's HParams view then lists the run beside the others of a ``tensorboard --logdir`` folder.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    values = {f"{TB_PREFIX}{k}": float(v) for k, v in metrics.items()}
    # One events file holding both the hparams and the metric scalars (add_hparams would open a second writer).
    with SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR)) as writer:
        for summary in hparams_summaries(hparams, values):
            writer._get_file_writer().add_summary(summary, step)
        for tag, value in values.items():
            writer.add_scalar(tag, value, step)


def evaluate_run(
    run_dir: str | Path,
    guide: ClipGuide | None = None,
    device: torch.device | str | None = None,
    datamodule=None,
) -> dict:
    """Compute the metrics of a finished run, write them to ``<run_dir>/metrics.json`` and to TensorBoard.

    The edit is re-rendered from the run's checkpoint (``final.ckpt``, else ``last.ckpt``) rather than read
    back from its 8-bit PNG outputs, so the metrics see the exact float edit:

    - image runs: the input loaded as training did (``load_image(cfg.image_path, cfg.data.resize_input)``),
      the generator's composite and alpha (:func:`text2live.render.render_image`), scored with
      :func:`text2live.metrics.image_metrics` and the run's ``comp_text``/``src_text``;
    - video runs: the frames and NLA layers of the run's data config, every edited layer rendered and composed
      as :func:`text2live.render.render_video_run` does, scored with :func:`text2live.metrics.video_metrics`
      and each layer's prompts (keys ``<layer>/clip_score`` ...).

    ``guide`` is the CLIP to score with (default: :func:`build_eval_guide` of the run's config); the tensors go
    to its device, the generators to ``device`` (default: CUDA if available). A video run's ``datamodule``,
    already set up (at the end of training), spares evaluating the NLA maps again.

    Returns the record written to ``metrics.json``: ``run_dir`` (absolute), ``name``, ``seed``, ``steps``,
    ``kind`` (``image`` or ``video``), ``checkpoint`` (the file name), ``clip`` (the CLIP's name), ``metrics``
    (``{metric: float or null}``: NaN is written as ``null``) and ``hparams`` (:func:`flatten_hparams` of
    the config). The metrics are also added to ``<run_dir>/tb`` with ``SummaryWriter.add_hparams`` (as
    ``eval/<metric>``), so TensorBoard's HParams view compares runs.
    """
    run_dir = Path(run_dir).resolve()
    cfg = load_config(run_dir)
    ckpt = runs.checkpoint_path(run_dir)
    if ckpt is None:
        raise InputError(f"{run_dir} has no checkpoint ({runs.CHECKPOINT_DIR}/ is empty or missing)")
    device = torch.device(device) if device is not None else default_device()
    if guide is None:
        guide = build_eval_guide(cfg, device)
    video = is_video(cfg)
    if video:
        metrics = _video_run_metrics(run_dir, guide, device, datamodule)
    else:
        metrics = _image_run_metrics(run_dir, guide, device)
    hparams = flatten_hparams(cfg)
    record = {
        "run_dir": str(run_dir),
        "name": _plain(cfg.get("name")),
        "seed": _plain(cfg.get("seed")),
        "steps": _plain(cfg.get("steps")),
        "kind": "video" if video else "image",
        "checkpoint": ckpt.name,
        "clip": _plain(cfg.clip.get("name")),
        "metrics": {k: _json_value(v) for k, v in metrics.items()},
        "hparams": hparams,
    }
    write_json(run_dir / METRICS_FILE, record)
    steps = record["steps"]
    log_hparams(run_dir, hparams, metrics, steps if isinstance(steps, int) else None)
    return record


# many runs --------------------------------------------------------------------------------------------------


def summary(run_dir: Path, metrics: dict[str, float | None], note: str = "") -> str:
    """``<run_dir>  clip_score=.. clip_dir=.. psnr=..`` (video runs: the first layer's CLIP metrics)."""
    parts = [str(run_dir)]
    for key, label in SUMMARY:
        name = key if key in metrics else next((k for k in metrics if k.endswith(f"/{key}")), None)
        if name is None:
            continue
        value = metrics[name]
        shown = "nan" if value is None else f"{value:.4g}"
        parts.append(f"{name.replace(key, label)}={shown}")
    return "  ".join(parts) + note
