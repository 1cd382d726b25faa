"""The console of a training run: one progress bar in steps, and nothing Lightning says about itself."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm

# Lightning's own loggers: device summaries ("GPU available: ..."), "`Trainer.fit` stopped: ...", tips.
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


class StepProgressBar(TQDMProgressBar):
    """``training 120/1000 steps |███ | 01:40<12:15, 0.84s/step, loss=3.21``: no epochs, no version number.

    A resumed run's bar starts at the step it resumes from; the time left counts only the steps of this process.
    """

    BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} steps |{bar}| {elapsed}<{remaining}, {rate_inv_fmt}{postfix}"

    def __init__(self, refresh_rate: int = 1, description: str = "training") -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.description = description

    def init_train_tqdm(self) -> Tqdm:
        trainer = self.trainer
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.num_training_batches
        step = trainer.global_step
        return Tqdm(
            desc=self.description,
            total=None if total == float("inf") else int(total),
            initial=step,
            unit="step",
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, *_) -> None:
        pass  # one bar for the whole run, made in on_train_start

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and self._should_update(step, bar.total):
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational messages and its deprecation warnings for the duration of a fit."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*is deprecated", module=r"(pytorch_)?lightning")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        # intended here: CLIP is frozen in eval mode, and the step-indexed IterableDataset has a length only to give
        # the progress bar its total
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        # a sweep job on a SLURM node is one task on one device: Lightning's multi-node hint does not apply
        warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system")
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
