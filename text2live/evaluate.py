"""``t2l-eval <run or sweep folder>``: the metrics of finished runs, in ``metrics.json`` and TensorBoard.

Each run's edit is re-rendered from its checkpoint (not read back from its 8-bit PNG/MP4 outputs) and scored
with :mod:`text2live.metrics` by the CLIP of the run's own config (run in float32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import NoReturn

import torch
from omegaconf import DictConfig, OmegaConf

from text2live import files, runs
from text2live.clip_guide import ClipGuide
from text2live.errors import InputError, Text2LiveError
from text2live.io import load_image
from text2live.metrics import image_metrics, video_metrics
from text2live.render import generator_from_state, load_generator, load_run, render_image
from text2live.runs import METRICS_FILE, find_runs, load_config
from text2live.train import instantiate, is_video
from text2live.video_system import render_video

TB_DIR = "tb"
TB_PREFIX = "eval/"

# Config keys that say where or how often things are written, not what is computed: left out of the hparams.
NOT_HPARAMS = ("run_dir", "data_dir", "log_images_freq", "checkpoint_every", "trainer", "logger", "hydra")
# The CLIP settings of evaluation, whatever the run trained with: float32, and no second (relevancy) model.
EVAL_CLIP = {"precision": "fp32", "relevancy_name": None, "relevancy_num_layers": 0}
# The three metrics of the one-line summary (video runs: the first layer's CLIP metrics).
SUMMARY = (("clip_score", "clip_score"), ("clip_directional_similarity", "clip_dir"), ("preservation_psnr", "psnr"))


# configs ----------------------------------------------------------------------------------------------------


def flatten_hparams(cfg: dict | DictConfig, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The scalar leaves of a run config with dotted keys, for TensorBoard's HParams view.

    Lists of scalars (prompts, ``edit_layers``) are joined with `` | ``, ``null`` becomes the string ``"null"``
    (so that runs with and without a value stay comparable); other values, ``_partial_`` and the keys of
    :data:`NOT_HPARAMS` (output locations, logging frequencies, trainer and logger) are left out.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    flat: dict[str, str | int | float | bool] = {}
    for key, value in cfg.items():
        if (not prefix and key in NOT_HPARAMS) or key == "_partial_":
            continue
        name = f"{prefix}{key}"
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


def _reason(exc: Exception) -> str:
    if isinstance(exc, Text2LiveError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2l-eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Compute the metrics of finished text2live runs (CLIP score, CLIP directional similarity, structure\n"
            "distance, preservation L1/PSNR/SSIM outside the edit, alpha coverage; for videos also frame\n"
            "consistency). Each run's edit is re-rendered from its checkpoint and scored with the CLIP of its own\n"
            "config; the metrics go to <run>/metrics.json and to <run>/tb (TensorBoard's HParams view)."
        ),
        epilog=(
            "examples:\n"
            "  t2l-eval outputs/golden_cat/seed0     one run\n"
            "  t2l-eval outputs                      every finished run below outputs/\n"
            "  t2l-eval outputs --force              also the runs whose metrics.json is up to date\n"
            "  tensorboard --logdir outputs          then open the HPARAMS tab to compare runs\n"
            "\n"
            "One line per run: its folder and three key metrics. Exit status 2 (with one 'error:' line) when the\n"
            "folder does not exist, holds no finished run, or some runs could not be evaluated; the other runs'\n"
            "metrics are still written."
        ),
    )
    parser.add_argument("folder", help="a run folder, or a folder holding runs at any depth (a sweep, outputs/)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="also re-evaluate the runs whose metrics.json is up to date (newer than their checkpoint)",
    )
    parser.add_argument("--device", default=None, help="where to render and score: cpu, cuda, cuda:1 (default: auto)")
    return parser


def main(argv: list[str] | None = None) -> None:
    from tqdm import tqdm

    args = _parser().parse_args(argv)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        _fail(f"{folder} is not a folder: pass a run folder or a folder of runs (e.g. outputs/)")
    found = find_runs(folder)
    if not found:
        _fail(f"no finished run (a folder with {runs.CONFIG_FILE} and {runs.DONE_FILE}) at or below {folder}")
    try:
        device = torch.device(args.device) if args.device else default_device()
    except RuntimeError:
        _fail(f"--device={args.device} is not a torch device: use cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device={args.device} asks for CUDA but torch sees no GPU here: use --device=cpu")
    guides: dict[str, ClipGuide] = {}
    failed: list[tuple[Path, str]] = []
    for run_dir in tqdm(found, desc="t2l-eval", unit="run", disable=None):
        try:
            if not args.force and is_up_to_date(run_dir):
                record = json.loads((run_dir / METRICS_FILE).read_text())
                tqdm.write(summary(run_dir, record["metrics"], "  (up to date)"))
                continue
            cfg = load_config(run_dir)
            key = clip_key(cfg)
            if key not in guides:
                guides[key] = build_eval_guide(cfg, device)
            record = evaluate_run(run_dir, guides[key], device)
            tqdm.write(summary(run_dir, record["metrics"]))
        except Exception as exc:  # one broken run must not stop the others
            failed.append((run_dir, _reason(exc)))
    if failed:
        listed = "; ".join(f"{path}: {reason}" for path, reason in failed)
        _fail(f"{len(failed)} of {len(found)} runs could not be evaluated: {listed}")


if __name__ == "__main__":
    main()
