"""Lightning callbacks: intermediate results on disk and in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid


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
