"""Lightning callbacks: the edit on disk and in TensorBoard as it trains; a clean stop on SIGINT and SIGTERM."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

log = logging.getLogger("text2live")


def layer_grid(image: torch.Tensor, layers: dict[str, torch.Tensor]) -> torch.Tensor:
    """One row: input, edit, alpha, edit on green screen, composite ([3, H, 5 W + padding])."""
    tiles = [
        image,
        layers["edit"],
        layers["alpha"].expand_as(image),
        layers["edit_on_greenscreen"],
        layers["composite"],
    ]
    return make_grid(torch.cat([t.to(image.device) for t in tiles]).clamp(0, 1), nrow=5, padding=4, pad_value=1.0)


def log_images(loggers: list, images: dict[str, torch.Tensor], step: int) -> None:
    """Add ``images`` ([3, H, W] by tag) at ``step`` to every logger that takes images (TensorBoard's)."""
    for logger in loggers:
        writer = getattr(logger, "experiment", None)
        if hasattr(writer, "add_image"):
            for tag, image in images.items():
                writer.add_image(tag, image, step)


class EditSnapshots(pl.Callback):
    """The edit as it stands: every ``every`` steps written to ``folder/<step>/`` and logged as TensorBoard
    images; at the end of training the final result is logged as images too (``every`` = 0: only then).

    A step is the number of optimisation steps done (1 .. steps), as for the losses, checkpoints and metrics.
    """

    def __init__(self, folder: str | Path, every: int) -> None:
        self.folder = Path(folder)
        self.every = every
        self.logged_step: int | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every <= 0 or step % self.every != 0:
            return
        log_images(trainer.loggers, pl_module.snapshot(trainer.datamodule, self.folder / str(step)), step)
        self.logged_step = step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        if step < trainer.max_steps or step == self.logged_step or not trainer.loggers:
            return  # stopped early (the run resumes later), already logged, or nowhere to log
        log_images(trainer.loggers, pl_module.snapshot(trainer.datamodule), step)
        self.logged_step = step


class StopOnSignal(pl.Callback):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's) ends training after the current step, with ``checkpoint`` saved.

    The run then resumes exactly from that step. A second signal stops at once (without a new checkpoint).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint: str | Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s received: stopping after the current step", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = {signum: signal.getsignal(signum) for signum in self.SIGNALS}
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if self.received is not None and not trainer.should_stop:
            trainer.save_checkpoint(self.checkpoint, weights_only=False)
            trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
