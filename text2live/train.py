"""``t2l-train``: edit an image or a video with Text2LIVE. Every config value can be overridden on the command line."""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, open_dict
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from pytorch_lightning.callbacks import ModelCheckpoint

from text2live import files, runs, speed
from text2live.callbacks import EditSnapshots, StopOnSignal
from text2live.checkpoints import CheckpointError, SafeCheckpointIO, check_fits, read_training_checkpoint
from text2live.cli.common import check_overrides, one_line_errors
from text2live.config import CONF_DIR
from text2live.errors import ConfigError, NonFiniteLossError, RunInterrupted, Text2LiveError
from text2live.system import EditSystem, ImageEditSystem
from text2live.video_data import AtlasDataModule, check_edit_layers
from text2live.video_system import VideoEditSystem

log = logging.getLogger("text2live")

PROMPT_KEYS = ("comp_text", "src_text", "screen_text")

# Lightning warnings that describe intended behaviour here: CLIP is frozen in eval mode on purpose, and the
# step-indexed IterableDataset defines __len__ only to give the progress bar its total.
for _message in (r"Found \d+ module\(s\) in eval mode", r"Your `IterableDataset` has `__len__` defined"):
    warnings.filterwarnings("ignore", message=_message)


def is_video(cfg: dict | DictConfig) -> bool:
    return str(cfg["data"].get("_target_", "")).endswith("AtlasDataModule")


def _check_prompts(cfg: dict) -> None:
    if not is_video(cfg):
        blocks = [("", cfg)]
    else:
        layers = check_edit_layers(cfg.get("edit_layers"))
        blocks = [(f"{layer}.", cfg[layer]) for layer in layers]
    for prefix, block in blocks:
        for key in PROMPT_KEYS:
            value = block.get(key)
            prompts = [value] if isinstance(value, str) else value
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                hint = f' (or {prefix}{key}="<text>" for this layer only)' if prefix else ""
                raise ConfigError(f'{prefix}{key} is empty: pass {key}="<text>" (a string or a list of strings){hint}')


def resolve_config(cfg: DictConfig) -> dict:
    """The fully resolved config as plain containers; a missing mandatory value becomes a ConfigError."""
    try:
        return runs.resolved(cfg)
    except MissingMandatoryValue as exc:
        key = exc.full_key or "a value"
        raise ConfigError(
            f"{key} is not set: pass {key}=... on the command line (or choose an experiment= that sets it)"
        ) from None
    except OmegaConfBaseException as exc:
        missing = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
        if missing:
            key = missing.group(1)
            hint = "on the command line (or choose an experiment= that sets it)"
            raise ConfigError(f"{key} is not set: pass {key}=... {hint}") from None
        key = getattr(exc, "full_key", None) or "the config"
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{key} has a value that cannot be used ({reason}): check the value given for {key}"
        ) from None


def _check_run_settings(cfg: dict) -> None:
    for key, minimum in (("seed", 0), ("steps", 1), ("checkpoint_every", 1), ("log_images_freq", 0)):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key}={value!r} is not valid: use an integer >= {minimum}")
    if cfg.setdefault("resume_from", "last") not in ("last", "previous"):
        raise ConfigError(f"resume_from={cfg.get('resume_from')!r} is not valid: use last or previous")


def instantiate(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate`` whose failures read as one sentence about the config group at fault."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, Text2LiveError):
            raise exc.__cause__ from None
        key = node._get_full_key(None) or "config"
        reason = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise ConfigError(
            f"{key} cannot be built from its config ({reason}): check the values given for {key}.*"
        ) from None


def _optimizer(cfg: DictConfig, generator: torch.nn.Module):
    optimizer = instantiate(cfg.optim.optimizer)
    try:
        optimizer(generator.parameters())  # fail now, not after CLIP is loaded and training has started
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optim.optimizer cannot be built ({exc}): check optim.optimizer.*") from None
    return optimizer


def build_system(cfg: DictConfig) -> tuple[EditSystem, pl.LightningDataModule]:
    """Instantiate the DataModule (the image or video is loaded and checked here) and the LightningModule."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    if isinstance(datamodule, AtlasDataModule):
        system = _build_video_system(cfg, datamodule)
        speed.apply_options(cfg, system)
        return system, datamodule
    generator = instantiate(cfg.generator)
    datamodule.setup("fit")
    guide = instantiate(cfg.clip)
    losses = instantiate(cfg.loss, guide=guide)
    optimizer = _optimizer(cfg, generator)
    system = ImageEditSystem(generator, losses, optimizer, lr_decay=cfg.optim.lr_decay, min_lr=cfg.optim.min_lr)
    speed.apply_options(cfg, system)
    return system, datamodule


def _build_video_system(cfg: DictConfig, datamodule: AtlasDataModule) -> VideoEditSystem:
    """One generator and one loss stack per edited layer; the stacks share one CLIP.

    Bootstrapping applies to the layers that name a ``bootstrap_text``.
    """
    layers = list(cfg.edit_layers)
    generators = {layer: instantiate(cfg.generator) for layer in layers}
    bootstrapping = cfg.loss.bootstrap_steps > 0 and cfg.loss.lambda_bootstrap > 0
    if bootstrapping and not any(cfg[layer].bootstrap_text for layer in layers):
        raise ConfigError(
            "bootstrapping is on (loss.bootstrap_steps > 0) but no edited layer has a bootstrap_text: set "
            "bootstrap_text=<the object to edit> (or <layer>.bootstrap_text) or loss.bootstrap_steps=0"
        )
    guide = instantiate(cfg.clip)
    losses = {}
    for layer in layers:
        prompts = {key: cfg[layer][key] for key in (*PROMPT_KEYS, "bootstrap_text")}
        if not prompts["bootstrap_text"]:
            prompts["bootstrap_steps"] = 0
        losses[layer] = instantiate(cfg.loss, guide=guide, **prompts)
    optimizer = _optimizer(cfg, torch.nn.ModuleList(generators.values()))
    datamodule.setup("fit")  # last: evaluating the NLA maps is the slow part
    video = cfg.video
    return VideoEditSystem(
        generators,
        losses,
        optimizer,
        lr_decay=cfg.optim.lr_decay,
        min_lr=cfg.optim.min_lr,
        multiply_foreground_alpha=video.multiply_foreground_alpha,
        mask_structure_input=video.mask_structure_input,
        alpha_once=video.alpha_once,
        align_corners=video.align_corners,
        fps=video.fps,
    )


def check_run_dir(run_dir: Path) -> None:
    """The run folder exists as a writable folder, or can be created; raises a one-sentence error otherwise."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} is a file, not a folder: pass run_dir=<a folder> (new or a run's)")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"cannot create the run folder {run_dir}: {existing} is a file; pass run_dir=<a folder>")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
        what = f"the run folder {run_dir} is" if existing == run_dir else f"cannot create {run_dir}: {existing} is"
        raise ConfigError(f"{what} not writable ({reason}): pass run_dir=<a folder you can write to>")


def train(cfg: DictConfig, callbacks: Sequence[pl.Callback] = (), overrides: Sequence[str] = ()) -> Path:
    """Run (or resume, or skip if finished) the edit described by ``cfg``; returns the run folder.

    The folder ends with ``DONE`` only after every output is written; until then re-running the same
    config resumes from ``checkpoints/last.ckpt``. While it trains, the folder is locked against other processes.
    """
    plain = resolve_config(cfg)
    _check_prompts(plain)
    _check_run_settings(plain)
    run_dir = Path(plain["run_dir"])
    check_run_dir(run_dir)
    restart = bool(plain.get("restart"))
    if not restart:  # a different run, a finished one or an unreadable checkpoint: said before the slow set-up
        if runs.check_same_run(run_dir, plain) and (run_dir / runs.DONE_FILE).exists():
            log.info("%s is finished (DONE): nothing to do", run_dir)
            return run_dir
        runs.resume_checkpoint(run_dir, plain["resume_from"])
    system, datamodule = build_system(cfg)
    with runs.locked(run_dir):
        if restart:
            log.info("restart=true: removing the checkpoints and outputs of %s", run_dir)
            runs.restart(run_dir)
        resuming = runs.check_same_run(run_dir, plain)  # again: the folder may have changed during the set-up
        if (run_dir / runs.DONE_FILE).exists():
            log.info("%s is finished (DONE): nothing to do", run_dir)
            return run_dir
        ckpt_path = runs.resume_checkpoint(run_dir, plain["resume_from"]) if resuming else None
        if ckpt_path is not None:
            try:
                check_fits(read_training_checkpoint(ckpt_path), system, ckpt_path)
            except CheckpointError as exc:
                raise CheckpointError(f"{exc}: run the same command with restart=true to start over") from None
        runs.write_run_info(run_dir, plain, overrides)
        if _fit(cfg, system, datamodule, run_dir, ckpt_path, callbacks):
            log.info("finished %s", run_dir)
    return run_dir


def _fit(cfg: DictConfig, system, datamodule, run_dir: Path, ckpt_path: Path | None, callbacks) -> bool:
    """Train, then write the results and ``DONE``; False if training stopped early (the run can be resumed)."""
    ckpt_dir = run_dir / runs.CHECKPOINT_DIR
    last = ckpt_dir / runs.LAST_CHECKPOINT
    checkpointing = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=Path(runs.LAST_CHECKPOINT).stem,
        every_n_train_steps=cfg.checkpoint_every,
        save_top_k=1,
        enable_version_counter=False,
    )
    snapshots = EditSnapshots(run_dir / "steps", cfg.log_images_freq)
    stop = StopOnSignal(last)
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=[checkpointing, snapshots, stop, *callbacks],
        plugins=[SafeCheckpointIO()],
    )
    if ckpt_path:
        log.info("resuming %s from %s", run_dir, ckpt_path)
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteLossError as exc:
        exc.checkpoint = last if last.is_file() else None
        raise
    if stop.received is not None:
        raise RunInterrupted(stop.received, trainer.global_step, cfg.steps, last)
    if trainer.interrupted or trainer.global_step < cfg.steps:
        log.warning("stopped at step %d of %d: run the same command again to resume", trainer.global_step, cfg.steps)
        return False

    system.to(trainer.strategy.root_device)  # Lightning hands the module back on the CPU
    system.save_results(datamodule, run_dir)
    trainer.save_checkpoint(ckpt_dir / runs.FINAL_CHECKPOINT, weights_only=False)
    if cfg.get("evaluate", True):
        from text2live.evaluate import evaluate_run  # imports the renderers, which import this module

        log.info("evaluating %s", run_dir)
        evaluate_run(run_dir, datamodule=datamodule if isinstance(datamodule, AtlasDataModule) else None)
    files.write_text(run_dir / runs.DONE_FILE, f"{trainer.global_step} steps\n")
    return True


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # a job run in-process by a launcher (basic, submitit, ray): its run folder is its sweep folder
        with open_dict(cfg):
            cfg.run_dir = hydra_cfg.runtime.output_dir
    with one_line_errors("training"):
        train(cfg, overrides=list(hydra_cfg.overrides.task))


def main() -> None:
    cfg = check_overrides("train", sys.argv[1:], "t2l-train")
    if cfg is not None:
        try:
            run_dir = Path(cfg.run_dir)
        except OmegaConfBaseException:
            run_dir = None  # a missing value in the folder's name is reported once the run starts
        if run_dir is not None:
            with one_line_errors("training"):
                check_run_dir(run_dir)  # before Hydra creates the folder for its log
    _hydra_main()


if __name__ == "__main__":
    main()
