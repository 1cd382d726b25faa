"""Lightning callbacks: intermediate results on disk and in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from text2live.io import save_layers


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
    """Every ``every`` steps, render the full image and write it to ``folder/<step>/`` and TensorBoard."""

    def __init__(self, folder: str | Path, every: int) -> None:
        self.folder = Path(folder)
        self.every = every

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every <= 0 or step % self.every != 0:
            return
        image = trainer.datamodule.image.to(pl_module.device)
        layers = pl_module.render(image)
        save_layers(layers, self.folder / str(step))
        for logger in trainer.loggers:
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_image"):
                writer.add_image("edit/input|edit|alpha|greenscreen|composite", layer_grid(image, layers), step)
