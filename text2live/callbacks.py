"""Lightning callbacks: intermediate results on disk and in TensorBoard; a clean stop on SIGINT and SIGTERM."""

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


class EditSnapshots(pl.Callback):
    """Every ``every`` steps, the system writes its intermediate result to ``folder/<step>/`` and TensorBoard."""

    def __init__(self, folder: str | Path, every: int) -> None:
        self.folder = Path(folder)
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every <= 0 or step % self.every != 0:
            return
        pl_module.snapshot(trainer.datamodule, self.folder / str(step), step, trainer.loggers)


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
