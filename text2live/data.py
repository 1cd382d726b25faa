"""The image DataModule: each step's generator input crop and the seed of the step's other random draws."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from text2live.errors import ConfigError, InputError
from text2live.io import load_image
from text2live.views import color_jitter, rand_chance, rand_int, rand_uniform

DATA_STREAM, LOSS_STREAM = 0, 1


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for one random stream of one step: steps are independent of the order they run in."""
    state = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class ImageCrops:
    """The generator's training input of a step (SPEC section 4).

    Colour jitter (p = ``jitter_p``), horizontal flip (p = ``flip_p``), a rescale by ``U(scale_min,
    scale_max)`` and a crop with both sides ``s * (H, W)``, ``s ~ U(crop_min_cover, 1)``.
    """

    def __init__(
        self,
        jitter_p: float = 0.1,
        flip_p: float = 0.5,
        scale_min: float = 0.8,
        scale_max: float = 1.2,
        crop_min_cover: float = 0.85,
    ) -> None:
        if not 0 < crop_min_cover <= 1:
            raise ConfigError(f"data.crop_min_cover must be in (0, 1], got {crop_min_cover}")
        if not 0 < scale_min <= scale_max:
            raise ConfigError(f"data.scale_min ({scale_min}) must be positive and at most data.scale_max ({scale_max})")
        self.jitter_p = jitter_p
        self.flip_p = flip_p
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.crop_min_cover = crop_min_cover

    def smallest_side(self, image_side: int) -> int:
        """The smallest side a crop of an image side of ``image_side`` pixels can have."""
        return int(int(image_side * self.scale_min) * self.crop_min_cover)

    def __call__(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = image
        if rand_chance(g, self.jitter_p):
            x = color_jitter(x, g)
        if rand_chance(g, self.flip_p):
            x = x.flip(-1)
        h, w = x.shape[-2:]
        s = rand_uniform(g, self.scale_min, self.scale_max)
        size = (int(h * s), int(w * s))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        if self.crop_min_cover < 1:
            c = rand_uniform(g, self.crop_min_cover, 1.0)
            ch, cw = int(size[0] * c), int(size[1] * c)
            top, left = rand_int(g, 0, size[0] - ch + 1), rand_int(g, 0, size[1] - cw + 1)
            x = x[..., top : top + ch, left : left + cw]
        return x.contiguous()


class ImageSteps(IterableDataset):
    """Yields one sample per optimisation step from ``start`` up to ``stop`` (exclusive).

    A sample holds ``step``, ``crop`` ([1, 3, h, w]), ``image`` (the full image, every ``source_image_every``
    steps) and ``seed`` for the step's CLIP views and text-row picks. Every draw depends only on (seed, step),
    so a resumed run continues exactly where it stopped.
    """

    def __init__(
        self, image: torch.Tensor, crops: ImageCrops | None, seed: int, start: int, stop: int, source_image_every: int
    ) -> None:
        self.image, self.crops, self.seed = image, crops, seed
        self.start, self.stop, self.source_image_every = start, stop, source_image_every

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def sample(self, step: int) -> dict:
        g = torch.Generator().manual_seed(step_seed(self.seed, step, DATA_STREAM))
        crop = self.image if self.crops is None else self.crops(self.image, g)
        sample = {"step": step, "seed": step_seed(self.seed, step, LOSS_STREAM), "crop": crop}
        if self.source_image_every > 0 and step % self.source_image_every == 0:
            sample["image"] = self.image
        return sample

    def __iter__(self) -> Iterator[dict]:
        for step in range(self.start, self.stop):
            yield self.sample(step)


class ImageDataModule(pl.LightningDataModule):
    """Loads one image and serves the per-step samples of :class:`ImageSteps`.

    Args:
        image_path: the input image (any PIL-readable format; EXIF orientation applied).
        resize_input: resize so the shorter side has this many pixels; -1 keeps the image as it is.
        steps: number of optimisation steps.
        seed: the run's seed.
        source_image_every: add the full image as a second output every this many steps (0: never).
        full_input: train on the full image only, without crops (the "no internal crops" ablation).
        min_side: smallest side the generator accepts; crops are checked against it.
        crops: the input crop distribution.
    """

    def __init__(
        self,
        image_path: str,
        crops: ImageCrops,
        resize_input: int = 512,
        steps: int = 1000,
        seed: int = 0,
        source_image_every: int = 75,
        min_side: int = 129,
        full_input: bool = False,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ConfigError(f"steps must be at least 1, got {steps}")
        self.image_path = image_path
        self.crops = crops
        self.resize_input = resize_input
        self.steps = steps
        self.seed = seed
        self.source_image_every = 0 if full_input else source_image_every
        self.full_input = full_input
        self.min_side = min_side
        self.image: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.image is not None:
            return
        if not self.image_path:
            raise ConfigError("image_path is not set: pass image_path=<image file> or an experiment=<name>")
        image = load_image(self.image_path, self.resize_input)[None]
        h, w = image.shape[-2:]
        smallest = min(h, w) if self.full_input else self.crops.smallest_side(min(h, w))
        if min(h, w) < self.min_side or smallest < self.min_side:
            raise InputError(
                f"{self.image_path} is {w}x{h} pixels but its training crops can be as small as "
                f"{smallest} px and the generator needs at least {self.min_side}: use a "
                "larger image or set resize_input (e.g. 512)"
            )
        self.image = image

    def train_dataloader(self) -> DataLoader:
        start = self.trainer.global_step if self.trainer is not None else 0
        crops = None if self.full_input else self.crops
        steps = ImageSteps(self.image, crops, self.seed, start, self.steps, self.source_image_every)
        return DataLoader(steps, batch_size=None, num_workers=0)
