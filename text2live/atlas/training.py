"""Train (or resume, or skip if finished) a Neural Layered Atlas in its run folder; used by ``t2l-atlas``.

The run folder works as an edit's (README, "What a run survives"): a lock while it trains, ``checkpoints/last.ckpt``
to resume from, atomic writes, ``DONE`` last. Its results are NLA's own files, ``checkpoint`` (the four networks'
state dicts, the optimiser state and the iteration, as NLA's ``train.py`` saves them) and ``config.json`` (NLA's
training config, with the frame count and resolution), plus ``frames/`` (the frames at the working resolution),
``reconstruction.mp4``, ``alpha.mp4``, ``foreground_atlas.png``, ``background_atlas.png`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from text2live import files, runs, speed
from text2live.atlas.system import AtlasSystem, Pretraining, VideoPixels, build_atlases
from text2live.build import check_run_settings, instantiate, resolve_config
from text2live.checkpoints import check_fits, read_training_checkpoint, save_checkpoint
from text2live.errors import CheckpointError, ConfigError
from text2live.io import save_png_sequence
from text2live.training import check_run_dir, fit_steps

log = logging.getLogger("text2live")

NLA_CHECKPOINT = "checkpoint"
NLA_CONFIG = "config.json"
FRAMES_DIR = "frames"
INPUTS_DIR = "inputs"  # the masks and flows computed for the run (kept by restart=true: they do not change)
# What an atlas run writes besides what every run writes (runs.RUN_OUTPUTS); restart=true removes them.
ATLAS_OUTPUTS = (
    *(NLA_CHECKPOINT, NLA_CONFIG, FRAMES_DIR, "reconstruction.mp4", "alpha.mp4"),
    *("foreground_atlas.png", "background_atlas.png"),
)
NETWORK_PRECISIONS = ("fp32", "bf16")


def check_atlas_config(plain: dict, has_inputs: bool = False) -> None:
    """The run settings and the video source of a resolved config; raises a one-sentence ConfigError if wrong."""
    check_run_settings(plain)
    if not has_inputs and not plain.get("video") and not plain.get("frames_dir"):
        raise ConfigError("no video given: pass video=<a video file> or frames_dir=<a folder of frames>")
    if plain.get("network_precision") not in NETWORK_PRECISIONS:
        raise ConfigError(
            f"network_precision={plain.get('network_precision')!r} is not valid: use {' or '.join(NETWORK_PRECISIONS)}"
        )
    if not isinstance(plain.get("compile"), bool):
        raise ConfigError(f"compile={plain.get('compile')!r} is not valid: use true or false")


def train_atlas(
    cfg: DictConfig, inputs=None, callbacks: Sequence[pl.Callback] = (), overrides: Sequence[str] = ()
) -> Path:
    """Train the NLA ``cfg`` describes; returns the run folder.

    ``inputs``: the video's prepared inputs (a :class:`text2live.atlas.inputs.VideoInputs`) when the caller has
    them; otherwise they are prepared from ``cfg`` (and cached in the run folder's ``inputs/``).
    """
    plain = resolve_config(cfg)
    check_atlas_config(plain, has_inputs=inputs is not None)
    run_dir = Path(plain["run_dir"])
    check_run_dir(run_dir)
    restart = bool(plain.get("restart"))
    if not restart:  # a different run, a finished one or an unreadable checkpoint: said before the slow set-up
        if runs.check_same_run(run_dir, plain) and (run_dir / runs.DONE_FILE).exists():
            log.info("%s is finished (DONE): nothing to do", run_dir)
            return run_dir
        runs.resume_checkpoint(run_dir, plain["resume_from"])
    with runs.locked(run_dir):
        if restart:
            log.info("restart=true: removing the checkpoints and outputs of %s", run_dir)
            remove_outputs(run_dir)
        resuming = runs.check_same_run(run_dir, plain)
        if (run_dir / runs.DONE_FILE).exists():
            log.info("%s is finished (DONE): nothing to do", run_dir)
            return run_dir
        ckpt_path = runs.resume_checkpoint(run_dir, plain["resume_from"]) if resuming else None
        system, datamodule = build(cfg, run_dir / INPUTS_DIR, inputs)
        if ckpt_path is not None:
            try:
                check_fits(read_training_checkpoint(ckpt_path), system, ckpt_path)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc}: run the same command with restart=true to start over") from None
        runs.write_run_info(run_dir, plain, overrides)
        metrics = _fit(cfg, system, datamodule, run_dir, ckpt_path, callbacks)
    if metrics is not None:
        log.info("finished %s: PSNR %.2f dB over %d frames", run_dir, metrics["psnr"], metrics["num_frames"])
    return run_dir


def remove_outputs(run_dir: Path) -> None:
    runs.restart(run_dir)
    for name in ATLAS_OUTPUTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def build(cfg: DictConfig, cache_dir: Path, inputs=None) -> tuple[AtlasSystem, VideoPixels]:
    """The DataModule (its inputs prepared, or read from ``cache_dir``: the slow part) and the system, with the
    run's speed options."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, cache_dir=str(cache_dir), inputs=inputs)
    datamodule.setup("fit")
    num_frames, height, width = datamodule.size
    torch.manual_seed(cfg.seed)  # the initial weights do not depend on what the input preparation drew
    networks = {
        name: instantiate(cfg.nla[name]) for name in ("foreground_mapping", "background_mapping", "atlas", "alpha")
    }
    nla = build_atlases(**networks, num_frames=num_frames, height=height, width=width)
    optimizer = instantiate(cfg.optim.optimizer)
    system = AtlasSystem(
        nla,
        instantiate(cfg.loss),
        optimizer,
        Pretraining(**cfg.pretrain),
        seed=cfg.seed,
        chunk_size=cfg.evaluation.chunk_size,
        atlas_resolution=cfg.evaluation.atlas_resolution,
        fps=cfg.evaluation.fps,
    )
    apply_speed_options(cfg, nla)
    return system, datamodule


def apply_speed_options(cfg: DictConfig, nla) -> None:
    """``network_precision=bf16``: the atlas and alpha networks run under bfloat16 autocast (the mappings stay in
    float32: the rigidity and gradient terms take differences over one pixel, below bfloat16's resolution of
    the mapped points). ``compile=true``: every network is compiled in place (state-dict keys unchanged)."""
    if cfg.network_precision == "bf16":
        for net in (nla.atlas, nla.alpha):
            speed.autocast_forward(net, torch.bfloat16)
    if cfg.compile:
        speed.check_compiler(speed.uses_cuda(cfg))
        for net in (nla.foreground_mapping, nla.background_mapping, nla.atlas, nla.alpha):
            net.compile()


def _fit(cfg: DictConfig, system: AtlasSystem, datamodule: VideoPixels, run_dir: Path, ckpt_path, callbacks):
    """Train, then write the results and ``DONE``; returns the metrics, or None if training stopped early."""
    trainer = fit_steps(cfg, system, datamodule, run_dir, ckpt_path, callbacks)
    if trainer is None:
        return None
    metrics = system.save_results(datamodule, run_dir)
    save_png_sequence(datamodule.inputs.frames, run_dir / FRAMES_DIR)
    save_nla_checkpoint(system, trainer.optimizers[0], trainer.global_step, run_dir / NLA_CHECKPOINT)
    files.write_text(run_dir / NLA_CONFIG, json.dumps(nla_config(cfg, metrics, run_dir), indent=4) + "\n")
    files.write_text(run_dir / runs.METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    files.write_text(run_dir / runs.DONE_FILE, f"{trainer.global_step} steps\n")
    return metrics


def _cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value


def save_nla_checkpoint(system: AtlasSystem, optimizer: torch.optim.Optimizer, iteration: int, path: Path) -> None:
    """NLA's checkpoint file: its keys in its order (``text2live.nla.load_nla`` reads the four state dicts; NLA's
    ``train.py`` with ``load_checkpoint`` resumes from the optimiser state and the iteration)."""
    states = system.nla.checkpoint()
    checkpoint = {
        "F_atlas_state_dict": states["F_atlas_state_dict"],
        "iteration": iteration,
        "model_F_mapping1_state_dict": states["model_F_mapping1_state_dict"],
        "model_F_mapping2_state_dict": states["model_F_mapping2_state_dict"],
        "model_F_alpha_state_dict": states["model_F_alpha_state_dict"],
        "optimizer_all_state_dict": optimizer.state_dict(),
    }
    save_checkpoint(_cpu(checkpoint), path)


def _sizes(net_cfg: DictConfig) -> tuple[int, int, int]:
    return int(net_cfg.hidden_dim), int(net_cfg.num_layers), int(net_cfg.get("positional_dim", 0) or 0)


def nla_config(cfg: DictConfig, metrics: dict, run_dir: Path) -> dict:
    """NLA's ``config/config.json`` for this run, with every key NLA's scripts read (its defaults where a setting
    has no counterpart here)."""
    loss, nla = cfg.loss, cfg.nla
    fg_width, fg_layers, fg_pe = _sizes(nla.foreground_mapping)
    bg_width, bg_layers, bg_pe = _sizes(nla.background_mapping)
    atlas_width, atlas_layers, atlas_pe = _sizes(nla.atlas)
    alpha_width, alpha_layers, alpha_pe = _sizes(nla.alpha)
    return {
        "results_folder_name": str(run_dir.parent),
        "maximum_number_of_frames": metrics["num_frames"],
        "resx": metrics["width"],
        "resy": metrics["height"],
        "iters_num": int(cfg.steps),
        "samples_batch": int(cfg.data.samples),
        "optical_flow_coeff": float(loss.lambda_flow_foreground),
        "evaluate_every": int(cfg.log_images_freq),
        "derivative_amount": loss.derivative_amount,
        "rgb_coeff": loss.lambda_rgb,
        "data_folder": str(run_dir / FRAMES_DIR),
        "rigidity_coeff": float(loss.lambda_rigidity_foreground),
        "uv_mapping_scale": float(loss.uv_mapping_scale),
        "pretrain_mapping1": cfg.pretrain.iterations > 0,
        "pretrain_mapping2": cfg.pretrain.iterations > 0,
        "alpha_bootstrapping_factor": float(loss.lambda_alpha_bootstrap),
        "alpha_flow_factor": float(loss.lambda_alpha_flow),
        "positional_encoding_num_alpha": alpha_pe,
        "number_of_channels_atlas": atlas_width,
        "number_of_layers_atlas": atlas_layers,
        "number_of_channels_alpha": alpha_width,
        "number_of_layers_alpha": alpha_layers,
        "stop_bootstrapping_iteration": int(loss.stop_bootstrapping),
        "number_of_channels_mapping1": fg_width,
        "number_of_layers_mapping1": fg_layers,
        "number_of_channels_mapping2": bg_width,
        "number_of_layers_mapping2": bg_layers,
        "gradient_loss_coeff": loss.lambda_gradient,
        "use_gradient_loss": loss.lambda_gradient > 0,
        "sparsity_coeff": float(loss.lambda_sparsity),
        "positional_encoding_num_atlas": atlas_pe,
        "use_positional_encoding_mapping1": fg_pe > 0,
        "number_of_positional_encoding_mapping1": fg_pe or 4,
        "use_positional_encoding_mapping2": bg_pe > 0,
        "number_of_positional_encoding_mapping2": bg_pe or 2,
        "pretrain_iter_number": int(cfg.pretrain.iterations),
        "load_checkpoint": False,
        "checkpoint_path": str(run_dir / NLA_CHECKPOINT),
        "include_global_rigidity_loss": loss.lambda_global_rigidity_foreground > 0
        or loss.lambda_global_rigidity_background > 0,
        "global_rigidity_derivative_amount_fg": loss.global_derivative_amount_foreground,
        "global_rigidity_derivative_amount_bg": loss.global_derivative_amount_background,
        "global_rigidity_coeff_fg": float(loss.lambda_global_rigidity_foreground),
        "global_rigidity_coeff_bg": float(loss.lambda_global_rigidity_background),
        "stop_global_rigidity": int(loss.stop_global_rigidity),
        "add_to_experiment_folder_name": "_",
    }


def edit_command(run_dir: Path, name: str | None = None) -> str:
    """The ``t2l-train`` command that edits the video of a finished run through its NLA, with ``...`` for the
    three prompts."""
    metrics = json.loads((run_dir / runs.METRICS_FILE).read_text())
    args = [
        "experiment=video",
        f"nla_checkpoint={run_dir / NLA_CHECKPOINT}",
        f"frames_dir={run_dir / FRAMES_DIR}",
        f"num_frames={metrics['num_frames']}",
        f"data.width={metrics['width']}",
        f"data.height={metrics['height']}",
        *([f"name={name}"] if name else []),
    ]
    return " ".join(["t2l-train", *(shlex.quote(a) for a in args), 'comp_text="..." src_text="..." screen_text="..."'])
