"""The image-editing LightningModule: wires the generator and the loss stack, nothing more."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from text2live.errors import NonFiniteLossError
from text2live.generator import SkipGenerator, render_layers
from text2live.losses import LossStack


class ImageEditSystem(pl.LightningModule):
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
        optimizer: Callable[[Iterable[torch.nn.Parameter]], Optimizer],
        lr_decay: float = 0.99,
        min_lr: float = 1e-5,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.losses = losses
        self.optimizer_factory = optimizer
        self.lr_decay = lr_decay
        self.min_lr = min_lr

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Edit layer and renderings (``edit``, ``alpha``, ``edit_on_greenscreen``, ``composite``) of [N, 3, H, W]."""
        return render_layers(self.generator(image), image)

    @torch.no_grad()
    def render(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layers of a whole image, without touching training state."""
        was_training = self.generator.training
        self.generator.eval()
        try:
            return self(image.to(self.device))
        finally:
            self.generator.train(was_training)

    # training -------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self.losses.guide.place(self.device)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = int(batch["step"])
        g = torch.Generator().manual_seed(int(batch["seed"]))
        inputs = [batch["crop"]] + ([batch["image"]] if "image" in batch else [])
        outputs = [self(x) for x in inputs]
        terms = self.losses(inputs, outputs, step, g)
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
        if bad:
            raise NonFiniteLossError(step, [b for b in bad if b != "total"] or ["total"])
        self.log("loss", terms["total"].detach(), prog_bar=True, logger=False, on_step=True)
        self._log_step(step, terms)
        return terms["total"]

    def _log_step(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        """Write this step's values straight to the loggers.

        ``self.log`` would repeat the last value of a term on the steps that do not compute it (the bootstrap
        term after bootstrapping ends) until the epoch ends, and a run is a single epoch.
        """
        values = torch.stack([value.detach().float() for value in terms.values()]).tolist()  # one device sync
        metrics = {f"train/loss/{name}": value for name, value in zip(terms, values)}
        metrics["train/bootstrap_weight"] = self.losses.weights(step).get("bootstrap", 0.0)
        metrics["train/lr"] = self.optimizers().param_groups[0]["lr"]
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.generator.parameters())
        base_lr = optimizer.param_groups[0]["lr"]
        floor = self.min_lr / base_lr if base_lr > 0 else 0.0
        decay = self.lr_decay
        scheduler = LambdaLR(optimizer, lambda step: max(floor, decay**step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # checkpoints hold the generator only: CLIP and the text embeddings are rebuilt from the config --------

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {k: v for k, v in super().state_dict(*args, **kwargs).items() if k.startswith("generator.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        generator_state = {k.removeprefix("generator."): v for k, v in state_dict.items() if k.startswith("generator.")}
        return self.generator.load_state_dict(generator_state, strict=strict, assign=assign)
