"""The image DataModule: each step's generator input crop and the seed of the step's other random draws."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from text2live.errors import ConfigError, InputError
from text2live.io import image_shape, load_image
from text2live.loader import StepLoader
from text2live.views import color_jitter, rand_chance, rand_int, rand_uniform, resized_shape

DATA_STREAM, LOSS_STREAM = 0, 1

# The memory of a training step of the default method (SPEC: the 7-level, 128-channel skip generator; CLIP
# ViT-B/32 with 16 views per output; float32), measured as the peak RSS (resource.getrusage ru_maxrss) of
# one forward + backward in a fresh CPU process, above the process's RSS once torch is imported:
# - the generator alone (SkipGenerator(), both graphs of a step alive, crop at 1.2x and the full image):
#   256x384 -> 2.03 GB for 239,524 input pixels, 384x576 -> 4.57 GB for 539,044: 8.5 KB per pixel (one
#   graph, 256x384 / 384x576 / 512x768: 9.5 / 9.4 / 9.1 KB per pixel);
# - a whole step of ImageEditSystem (build_system, step 0: crop + full image, losses, backward) with
#   clip=random_vit_b32 (ViT-B/32 size, no download): cat.png at data.resize_input=256 -> 7.51 GB for
#   206,980 generator input pixels, at 384 -> 9.44 GB for 467,200. The fit: 7.4 KB per pixel (the
#   generator's activations; a whole step frees and reuses some of the loss's memory for them) plus 5.98 GB
#   that do not depend on the size: CLIP's weights (0.62 GB), its activations on the views, and the view
#   augmentations (with clip=tiny the same steps give 7.5 KB per pixel plus 2.1 GB).
# Rounded up: 7.5 KB per generator input pixel plus 6 GB. On CUDA the default casts CLIP to fp16, so the
# estimate is an upper bound there; a wider generator or a larger CLIP needs more.
STEP_BYTES_PER_PIXEL = 7_500
STEP_FIXED_BYTES = 6_000_000_000
GIB = 2**30


def estimate_step_memory(height: int, width: int, crops: ImageCrops | None, source_image_every: int) -> int:
    """Bytes the largest training step of an image of ``height`` x ``width`` (the working size) needs.

    A step runs the generator on a crop (at most ``crops.scale_max`` times each side; the image itself when
    ``crops`` is None) and, every ``source_image_every`` steps, on the full image too; both graphs are alive
    for the backward pass.
    """
    if crops is None:
        pixels = height * width
    else:
        pixels = int(height * crops.scale_max) * int(width * crops.scale_max)
        if source_image_every > 0:
            pixels += height * width
    return STEP_FIXED_BYTES + STEP_BYTES_PER_PIXEL * pixels


def ram_available(meminfo: str | os.PathLike = "/proc/meminfo") -> int | None:
    """Bytes of RAM available to a new allocation: ``MemAvailable``, else free pages (``os.sysconf``)."""
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def available_memory() -> tuple[int | None, str]:
    """(bytes, where) of the memory training will use: free memory of cuda:0 if CUDA is there, else RAM.

    ``where`` completes "only <n> GiB ...": ``is free on cuda:0`` or ``of RAM is available``.

    The trainer's accelerator is not known yet when the data is set up: with CUDA available, training is
    taken to run on cuda:0 (one process per GPU; ``trainer=cpu`` on such a machine is checked against the GPU).
    Tests replace this function.
    """
    if torch.cuda.is_available():
        try:
            free, _total = torch.cuda.mem_get_info(0)
        except RuntimeError:  # a CUDA that cannot report its memory: leave the failure to training itself
            return None, "is free on cuda:0"
        return free, "is free on cuda:0"
    return ram_available(), "of RAM is available"


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
            raise ConfigError(f"data.crops.crop_min_cover must be in (0, 1], got {crop_min_cover}")
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
        min_input_side: refuse an image whose shorter side (before resizing) has fewer pixels.
        max_aspect_ratio: refuse an image whose longer side is more than this many times its shorter side.
        check_memory: refuse a working size whose training step would not fit the memory of the device
            (see :func:`estimate_step_memory` and :func:`available_memory`).

    The image is checked (size, shape, memory) before its pixels are decoded and before CLIP is loaded.
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
        min_input_side: int = 32,
        max_aspect_ratio: float = 4.0,
        check_memory: bool = True,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ConfigError(f"steps must be at least 1, got {steps}")
        if min_input_side < 1:
            raise ConfigError(f"data.min_input_side must be at least 1 (pixels), got {min_input_side}")
        if not max_aspect_ratio >= 1:
            raise ConfigError(
                f"data.max_aspect_ratio must be at least 1 (longer / shorter side), got {max_aspect_ratio}"
            )
        self.image_path = image_path
        self.crops = crops
        self.resize_input = resize_input
        self.steps = steps
        self.seed = seed
        self.source_image_every = 0 if full_input else source_image_every
        self.full_input = full_input
        self.min_side = min_side
        self.min_input_side = min_input_side
        self.max_aspect_ratio = max_aspect_ratio
        self.check_memory = check_memory
        self.image: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.image is not None:
            return
        if not self.image_path:
            raise ConfigError("image_path is not set: pass image_path=<image file> or an experiment=<name>")
        height, width = image_shape(self.image_path)
        h, w = self.working_size(height, width)
        smallest = self.smallest_input(min(h, w))
        if min(h, w) < self.min_side or smallest < self.min_side:
            raise InputError(
                f"{self.image_path} is {w}x{h} pixels but its training crops can be as small as "
                f"{smallest} px and the generator needs at least {self.min_side}: use a "
                "larger image or set resize_input (e.g. 512)"
            )
        self._check_input_shape(height, width)
        if self.check_memory:
            self._check_memory(height, width)
        self.image = load_image(self.image_path, self.resize_input)[None]

    def working_size(self, height: int, width: int, resize_input: int | None = None) -> tuple[int, int]:
        """(height, width) the generator trains on for an image of ``height`` x ``width`` (as load_image resizes)."""
        size = self.resize_input if resize_input is None else resize_input
        if size and size > 0 and min(height, width) != size:
            return resized_shape(height, width, size)
        return height, width

    def smallest_input(self, shorter_side: int) -> int:
        """The smallest side of a generator input when the working size's shorter side is ``shorter_side``."""
        return shorter_side if self.full_input else self.crops.smallest_side(shorter_side)

    def _check_input_shape(self, height: int, width: int) -> None:
        """Refuse an image too small to mean anything or too elongated for the method (before resizing)."""
        shorter, longer = min(height, width), max(height, width)
        if shorter < self.min_input_side:
            raise InputError(
                f"{self.image_path} is {width}x{height} px, too small to edit (its shorter side, {shorter} px, is "
                f"below data.min_input_side={self.min_input_side}): use a larger image, or set "
                f"data.min_input_side={shorter} to allow it"
            )
        ratio = longer / shorter
        if ratio > self.max_aspect_ratio:
            allow = math.ceil(ratio * 10) / 10
            raise InputError(
                f"{self.image_path} is {width}x{height} px, an aspect ratio of {ratio:.1f} (longer / shorter side) "
                f"above data.max_aspect_ratio={self.max_aspect_ratio:g} (the method's examples are 1.5 to 1.8): "
                f"crop the image, or set data.max_aspect_ratio={allow:g} to allow it"
            )

    def _check_memory(self, height: int, width: int) -> None:
        """Refuse a working size whose training step would not fit the memory training will use."""
        h, w = self.working_size(height, width)
        crops = None if self.full_input else self.crops
        needed = estimate_step_memory(h, w, crops, self.source_image_every)
        available, where = available_memory()
        if available is None or needed <= available:
            return
        fix = "crop the image or train on a device with more memory (no data.resize_input the generator accepts fits)"
        size = self._resize_that_fits(height, width, available)
        if size is not None:
            fix = f"set data.resize_input={size} (or lower) to shrink it"
        raise InputError(
            f"training on {self.image_path} at its working size {w}x{h} px needs an estimated "
            f"{needed / GIB:.1f} GiB but only {available / GIB:.1f} GiB {where}: {fix}, or set "
            "data.check_memory=false to skip this check"
        )

    def _resize_that_fits(self, height: int, width: int, available: int) -> int | None:
        """The largest ``resize_input`` (a multiple of 16) whose step fits ``available`` bytes, if the generator
        accepts it."""
        crops = None if self.full_input else self.crops
        shorter = min(self.working_size(height, width))
        for size in range(shorter - shorter % 16, 0, -16):
            h, w = self.working_size(height, width, size)
            if self.smallest_input(min(h, w)) < self.min_side:
                return None
            if estimate_step_memory(h, w, crops, self.source_image_every) <= available:
                return size
        return None

    def train_dataloader(self) -> DataLoader:
        crops = None if self.full_input else self.crops
        steps = ImageSteps(self.image, crops, self.seed, 0, self.steps, self.source_image_every)
        return StepLoader(steps, lambda: self.trainer.global_step if self.trainer is not None else 0)
