"""The LightningModules: they wire the generator(s) and the loss stack(s) together, nothing more.

:class:`EditSystem` holds what image and video editing share (the training step's frame, optimiser,
learning-rate decay, logging, the non-finite check, generator-only checkpoints); :class:`ImageEditSystem` edits
one image. The video system is in :mod:`text2live.video_system`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from text2live.callbacks import layer_grid
from text2live.errors import NonFiniteLossError
from text2live.generator import SkipGenerator, render_layers
from text2live.io import save_layers
from text2live.losses import LossStack

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], Optimizer]


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode for the block (BatchNorm keeps batch statistics: see SkipGenerator), then back
    in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class EditSystem(pl.LightningModule):
    """Shared training machinery; subclasses define the generators (under ``SAVED_PREFIX``), the loss terms of
    a step (:meth:`step_terms`) and the results (:meth:`snapshot`, :meth:`save_results`).

    Args:
        optimizer: a factory ``params -> Optimizer`` (the ``optim.optimizer`` config, partially instantiated).
        lr_decay: after every step ``lr = max(min_lr, lr_decay * lr)``.
        min_lr: the floor of the learning rate.
    """

    SAVED_PREFIX = "generator."

    def __init__(self, optimizer: OptimizerFactory, lr_decay: float, min_lr: float) -> None:
        super().__init__()
        self.optimizer_factory = optimizer
        self.lr_decay = lr_decay
        self.min_lr = min_lr

    def guides(self) -> list:
        """The frozen CLIP guides to place on the training device."""
        raise NotImplementedError

    def on_fit_start(self) -> None:
        for guide in self.guides():
            guide.place(self.device)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = self.step_of(batch)
        g = torch.Generator().manual_seed(int(batch["seed"]))  # the step's CLIP views and text-row picks
        terms, extra = self.step_terms(batch, step, g)
        self.report_step(step, terms, extra)
        return terms["total"]

    def step_terms(
        self, batch: dict, step: int, g: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The loss terms of a step (``total`` among them) and other scalars to log with them."""
        raise NotImplementedError

    def step_of(self, batch: dict) -> int:
        """The step a sample was drawn for, which must be the step the trainer is at (or resuming went wrong)."""
        step = int(batch["step"])
        if step != self.global_step:
            raise RuntimeError(f"the sample of step {step} reached training step {self.global_step}")
        return step

    def report_step(self, step: int, terms: dict[str, torch.Tensor], extra: dict[str, float]) -> None:
        """Check that every term is finite and log them, with one read of the values from the device.

        The values go straight to the loggers as ``train/loss/<name>`` plus ``extra``: ``self.log`` would repeat
        the last value of a term on the steps that do not compute it (the bootstrap term after bootstrapping
        ends) until the epoch ends, and a run is a single epoch. They are logged at ``step + 1``, the number of
        optimisation steps done once this one is, which is the step of the snapshots (``steps/<n>/``), of the
        checkpoints and of the metrics.
        """
        values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))  # one sync
        bad = [name for name, value in values.items() if not math.isfinite(value)]
        if bad:
            raise NonFiniteLossError(step + 1, [b for b in bad if not b.endswith("total")] or bad)  # 1-based
        self.log("loss", values["total"], prog_bar=True, logger=False, on_step=True)
        metrics = {f"train/loss/{name}": value for name, value in values.items()}
        metrics.update(extra)
        metrics["train/lr"] = self.optimizers().param_groups[0]["lr"]
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step + 1)

    def configure_optimizers(self) -> dict:
        params = [p for name, p in self.named_parameters() if f"{name}.".startswith(self.SAVED_PREFIX)]
        optimizer = self.optimizer_factory(params)
        base_lr = optimizer.param_groups[0]["lr"]
        floor = self.min_lr / base_lr if base_lr > 0 else 0.0
        decay = self.lr_decay
        scheduler = LambdaLR(optimizer, lambda step: max(floor, decay**step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # results ----------------------------------------------------------------------------------------------

    def snapshot(self, datamodule: pl.LightningDataModule, folder: Path | None = None) -> dict[str, torch.Tensor]:
        """Render the edit as it stands, write it to ``folder`` (if given); returns its images by TensorBoard tag."""
        raise NotImplementedError

    def save_results(self, datamodule: pl.LightningDataModule, folder: Path) -> None:
        """Write the final outputs of the run into ``folder``."""
        raise NotImplementedError

    # checkpoints hold the generators only: CLIP and the text embeddings are rebuilt from the config --------

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k.startswith(self.SAVED_PREFIX)}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        own = {k: v for k, v in state_dict.items() if k.startswith(self.SAVED_PREFIX)}
        result = super().load_state_dict(own, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if k.startswith(self.SAVED_PREFIX)]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"checkpoint does not fit: missing {missing}, unexpected {result.unexpected_keys}")
        return result


class ImageEditSystem(EditSystem):
    """Trains a generator on one image so that its edit layer, composited over the image, matches the text.

    Args:
        generator: the RGB -> RGBA network being trained.
        losses: the loss stack (owns the frozen CLIP; never saved in checkpoints).
        optimizer: a factory ``params -> Optimizer`` (the ``optim.optimizer`` config, partially instantiated).
        lr_decay: after every step ``lr = max(min_lr, lr_decay * lr)``.
        min_lr: the floor of the learning rate.
    """

    def __init__(
        self,
        generator: SkipGenerator,
        losses: LossStack,
        optimizer: OptimizerFactory,
        lr_decay: float = 0.99,
        min_lr: float = 1e-5,
    ) -> None:
        super().__init__(optimizer, lr_decay, min_lr)
        self.generator = generator
        self.losses = losses

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Edit layer and renderings (``edit``, ``alpha``, ``edit_on_greenscreen``, ``composite``) of [N, 3, H, W]."""
        return render_layers(self.generator(image), image)

    @torch.no_grad()
    def render(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layers of a whole image, without touching training state."""
        with eval_mode(self.generator):
            return self(image.to(self.device))

    # training -------------------------------------------------------------------------------------------

    def guides(self) -> list:
        return [self.losses.guide]

    def step_terms(
        self, batch: dict, step: int, g: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        inputs = [batch["crop"]] + ([batch["image"]] if "image" in batch else [])
        outputs = [self(x) for x in inputs]
        terms = self.losses(inputs, outputs, step, g)
        return terms, {"train/bootstrap_weight": self.losses.weights(step).get("bootstrap", 0.0)}

    # results ----------------------------------------------------------------------------------------------

    def snapshot(self, datamodule, folder: Path | None = None) -> dict[str, torch.Tensor]:
        """The layers of the full image (written to ``folder``) and their row of tiles."""
        image = datamodule.image.to(self.device)
        layers = self.render(image)
        if folder is not None:
            save_layers(layers, folder)
        return {"edit/input|edit|alpha|greenscreen|composite": layer_grid(image, layers)}

    def save_results(self, datamodule, folder: Path) -> None:
        save_layers(self.render(datamodule.image), folder)
