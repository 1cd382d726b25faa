"""Resizing and the random views (augmented crops) that CLIP sees of every output.

All randomness is drawn from an explicit ``torch.Generator`` so that a step is a pure function of its seed.
The distributions are those of the reference's torchvision pipeline (SPEC section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode


def resized_shape(h: int, w: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Shape after resizing the shorter side to ``size`` with the longer side capped at ``max_size``."""
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_long, new_short) if w <= h else (new_short, new_long)


def resize(x: torch.Tensor, shape: tuple[int, int], legacy: bool = True) -> torch.Tensor:
    """Bilinear resize of a [N, C, H, W] tensor.

    ``legacy`` reproduces torchvision 0.11, which the reference ran on: tensors were resized without
    antialiasing. Otherwise downscaling is antialiased, as current torchvision does by default.
    """
    if tuple(x.shape[-2:]) == tuple(shape):
        return x
    return F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=not legacy)


def resize_shorter(x: torch.Tensor, size: int, max_size: int | None = None, legacy: bool = True) -> torch.Tensor:
    """Resize so the shorter side is ``size`` (longer side capped at ``max_size``).

    In ``legacy`` mode an input whose shorter side already equals ``size`` is returned unchanged, even
    when its longer side exceeds the cap, exactly as torchvision 0.11 did.
    """
    h, w = x.shape[-2:]
    if legacy and min(h, w) == size:
        return x
    return resize(x, resized_shape(h, w, size, max_size), legacy)


def rand_uniform(g: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=g).item())


def rand_int(g: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=g).item())


def rand_chance(g: torch.Generator, p: float) -> bool:
    return bool(torch.rand(1, generator=g).item() < p)


@dataclass
class ViewAugment:
    """The random photometric and geometric changes applied to every CLIP view (SPEC section 2)."""

    flip_p: float = 0.5
    affine_p: float = 0.8
    degrees: float = 15.0
    translate: float = 0.1
    perspective_p: float = 0.5
    distortion: float = 0.4
    jitter_p: float = 0.7
    jitter: float = 0.1
    grayscale_p: float = 0.15
    fill: float = 1.0

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        fill = [float(self.fill)] * x.shape[1]
        if rand_chance(g, self.flip_p):
            x = x.flip(-1)
        if rand_chance(g, self.affine_p):
            angle = rand_uniform(g, -self.degrees, self.degrees)
            max_dx, max_dy = self.translate * w, self.translate * h
            shift = [round(rand_uniform(g, -max_dx, max_dx)), round(rand_uniform(g, -max_dy, max_dy))]
            x = TF.affine(x, angle, shift, 1.0, [0.0, 0.0], InterpolationMode.BILINEAR, fill)
        if rand_chance(g, self.perspective_p):
            start, end = _perspective_points(g, w, h, self.distortion)
            x = TF.perspective(x, start, end, InterpolationMode.BILINEAR, fill)
        if rand_chance(g, self.jitter_p):
            x = color_jitter(x, g, self.jitter)
        if rand_chance(g, self.grayscale_p):
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        return x


def _perspective_points(g: torch.Generator, w: int, h: int, d: float) -> tuple[list, list]:
    half_h, half_w = h // 2, w // 2
    dx, dy = int(d * half_w), int(d * half_h)
    top_left = [rand_int(g, 0, dx + 1), rand_int(g, 0, dy + 1)]
    top_right = [rand_int(g, w - dx - 1, w), rand_int(g, 0, dy + 1)]
    bot_right = [rand_int(g, w - dx - 1, w), rand_int(g, h - dy - 1, h)]
    bot_left = [rand_int(g, 0, dx + 1), rand_int(g, h - dy - 1, h)]
    start = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
    return start, [top_left, top_right, bot_right, bot_left]


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.1) -> torch.Tensor:
    """torchvision's ColorJitter(strength x 4): the four changes in a random order."""
    order = torch.randperm(4, generator=g).tolist()
    brightness = rand_uniform(g, 1 - strength, 1 + strength)
    contrast = rand_uniform(g, 1 - strength, 1 + strength)
    saturation = rand_uniform(g, 1 - strength, 1 + strength)
    hue = rand_uniform(g, -strength, strength)
    for op in order:
        if op == 0:
            x = TF.adjust_brightness(x, brightness)
        elif op == 1:
            x = TF.adjust_contrast(x, contrast)
        elif op == 2:
            x = TF.adjust_saturation(x, saturation)
        else:
            x = TF.adjust_hue(x, hue)
    return x


def clip_views(
    x: torch.Tensor,
    n_views: int,
    g: torch.Generator,
    augment: ViewAugment,
    size: int = 224,
    max_size: int = 320,
    legacy: bool = True,
) -> torch.Tensor:
    """The ``n_views`` augmented views of one image [1, 3, H, W] that CLIP embeds.

    View 1 is the whole image resized (shorter side ``size``, longer side at most ``max_size``); the others
    are random crops of ``s * (H, W)``, ``s ~ U(0.6, 1)``, resized to view 1's shape. Every view then gets
    its own random augmentation.
    """
    first = resize_shorter(x, size, max_size, legacy)
    shape = tuple(first.shape[-2:])
    views = [augment(first, g)]
    h, w = x.shape[-2:]
    for _ in range(n_views - 1):
        s = rand_uniform(g, 0.6, 1.0)
        ch, cw = int(h * s), int(w * s)
        top, left = rand_int(g, 0, h - ch + 1), rand_int(g, 0, w - cw + 1)
        crop = x[..., top : top + ch, left : left + cw]
        views.append(augment(resize(crop, shape, legacy), g))
    return torch.cat(views)
