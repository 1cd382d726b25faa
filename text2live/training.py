"""Train (or resume) the edit a config describes, in its run folder; used by ``t2l-train`` and the Python API."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from text2live import files, runs
from text2live.build import build_system, check_config, instantiate, resolve_config
from text2live.callbacks import EditSnapshots, StopOnSignal
from text2live.checkpoints import SafeCheckpointIO, check_fits, read_training_checkpoint
from text2live.errors import CheckpointError, ConfigError, NonFiniteLossError, RunInterrupted
from text2live.progress import StepProgressBar, quiet_lightning
from text2live.video_data import AtlasDataModule

log = logging.getLogger("text2live")


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
    check_config(plain)
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
        results = _fit(cfg, system, datamodule, run_dir, ckpt_path, callbacks)
        if results is not None:
            log.info("finished %s", results)
    return run_dir


def fit_steps(cfg: DictConfig, system, datamodule, run_dir: Path, ckpt_path: Path | None, callbacks=()):
    """Train ``cfg.steps`` steps in ``run_dir`` (checkpoints, snapshots, signals, progress bar); the trainer once
    every step is done, None if training stopped early (the run can be resumed).

    The run folder's machinery shared by edits and t2l-atlas: what a run writes at the end is the caller's.
    """
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
    progress = [StepProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else []
    if ckpt_path:
        log.info("resuming %s from %s", run_dir, ckpt_path)
    with quiet_lightning():
        trainer = instantiate(
            cfg.trainer,
            logger=logger,
            callbacks=[checkpointing, snapshots, stop, *progress, *callbacks],
            plugins=[SafeCheckpointIO(keep={runs.LAST_CHECKPOINT: runs.PREVIOUS_CHECKPOINT})],
        )
        try:
            trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except NonFiniteLossError as exc:
            exc.checkpoint = last if last.is_file() else None
            raise
    if stop.received is not None:
        raise RunInterrupted(stop.received, trainer.global_step, cfg.steps, last)
    if trainer.interrupted or trainer.global_step < cfg.steps:
        log.warning("stopped at step %d of %d: run the same command again to resume", trainer.global_step, cfg.steps)
        return None
    system.to(trainer.strategy.root_device)  # Lightning hands the module back on the CPU
    return trainer


def _fit(cfg: DictConfig, system, datamodule, run_dir: Path, ckpt_path: Path | None, callbacks) -> str | None:
    """Train, then write the results and ``DONE``; None if training stopped early (the run can be resumed).

    Returns the run folder and its key metrics, as one line.
    """
    trainer = fit_steps(cfg, system, datamodule, run_dir, ckpt_path, callbacks)
    if trainer is None:
        return None
    ckpt_dir = run_dir / runs.CHECKPOINT_DIR
    system.save_results(datamodule, run_dir)
    trainer.save_checkpoint(ckpt_dir / runs.FINAL_CHECKPOINT, weights_only=False)
    results = str(run_dir)
    if cfg.get("evaluate", True):
        from text2live.evaluate import evaluate_run, summary  # CLIP metrics: imported only when a run ends

        log.info("evaluating %s", run_dir)
        record = evaluate_run(run_dir, datamodule=datamodule if isinstance(datamodule, AtlasDataModule) else None)
        results = summary(run_dir, record["metrics"])
    files.write_text(run_dir / runs.DONE_FILE, f"{trainer.global_step} steps\n")
    return results
