"""Resizing and the random views (augmented crops) that CLIP sees of every output.

All randomness is drawn from an explicit ``torch.Generator`` so that a step is a pure function of its seed.
The distributions are those of the reference's torchvision pipeline (SPEC section 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms._functional_tensor as F_t
import torchvision.transforms.functional as TF


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
class ViewParams:
    """The random draws of one CLIP view: where it is cropped and how it is augmented (SPEC section 2)."""

    box: tuple[int, int, int, int] | None  # top, left, height, width of the crop; None: the whole image
    flip: bool
    affine: tuple[float, int, int] | None  # angle in degrees, horizontal and vertical shift in pixels
    perspective: list[list[int]] | None  # where the four corners go (top-left, top-right, bottom-right, bottom-left)
    jitter: tuple[list[int], float, float, float, float] | None  # order of the 4 changes, their 4 factors
    gray: bool


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

    def draw(self, g: torch.Generator, h: int, w: int, box: tuple[int, int, int, int] | None = None) -> ViewParams:
        """The augmentation of one ``h`` x ``w`` view, drawn in the order of torchvision's pipeline."""
        flip = rand_chance(g, self.flip_p)
        affine = perspective = jitter = None
        if rand_chance(g, self.affine_p):
            angle = rand_uniform(g, -self.degrees, self.degrees)
            max_dx, max_dy = self.translate * w, self.translate * h
            affine = (angle, round(rand_uniform(g, -max_dx, max_dx)), round(rand_uniform(g, -max_dy, max_dy)))
        if rand_chance(g, self.perspective_p):
            perspective = _perspective_points(g, w, h, self.distortion)
        if rand_chance(g, self.jitter_p):
            jitter = _jitter_draws(g, self.jitter)
        return ViewParams(box, flip, affine, perspective, jitter, rand_chance(g, self.grayscale_p))


def _perspective_points(g: torch.Generator, w: int, h: int, d: float) -> list[list[int]]:
    half_h, half_w = h // 2, w // 2
    dx, dy = int(d * half_w), int(d * half_h)
    top_left = [rand_int(g, 0, dx + 1), rand_int(g, 0, dy + 1)]
    top_right = [rand_int(g, w - dx - 1, w), rand_int(g, 0, dy + 1)]
    bot_right = [rand_int(g, w - dx - 1, w), rand_int(g, h - dy - 1, h)]
    bot_left = [rand_int(g, 0, dx + 1), rand_int(g, h - dy - 1, h)]
    return [top_left, top_right, bot_right, bot_left]


def _jitter_draws(g: torch.Generator, strength: float) -> tuple[list[int], float, float, float, float]:
    order = torch.randperm(4, generator=g).tolist()
    brightness = rand_uniform(g, 1 - strength, 1 + strength)
    contrast = rand_uniform(g, 1 - strength, 1 + strength)
    saturation = rand_uniform(g, 1 - strength, 1 + strength)
    hue = rand_uniform(g, -strength, strength)
    return order, brightness, contrast, saturation, hue


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.1) -> torch.Tensor:
    """torchvision's ColorJitter(strength x 4): the four changes in a random order."""
    order, *factors = _jitter_draws(g, strength)
    changes = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for op in order:
        x = changes[op](x, factors[op])
    return x


def draw_views(
    g: torch.Generator,
    hw: tuple[int, int],
    n_views: int,
    augment: ViewAugment,
    size: int = 224,
    max_size: int = 320,
    legacy: bool = True,
) -> tuple[tuple[int, int], list[ViewParams]]:
    """The shape and the random draws of the ``n_views`` CLIP views of an ``hw`` image.

    View 1 is the whole image resized (shorter side ``size``, longer side at most ``max_size``); the others
    are random crops of ``s * (H, W)``, ``s ~ U(0.6, 1)``, resized to view 1's shape. Every view then gets
    its own random augmentation. The draws come in the reference's order: view 1's augmentation, then for each
    further view its crop and its augmentation.
    """
    h, w = hw
    shape = (h, w) if legacy and min(h, w) == size else resized_shape(h, w, size, max_size)  # see resize_shorter
    params = [augment.draw(g, *shape)]
    for _ in range(n_views - 1):
        s = rand_uniform(g, 0.6, 1.0)
        ch, cw = int(h * s), int(w * s)
        top, left = rand_int(g, 0, h - ch + 1), rand_int(g, 0, w - cw + 1)
        params.append(augment.draw(g, *shape, box=(top, left, ch, cw)))
    return shape, params


def render_views(
    x: torch.Tensor, shape: tuple[int, int], params: list[ViewParams], fill: float = 1.0, legacy: bool = True
) -> torch.Tensor:
    """The views [len(params), 3, *shape] of one image [1, 3, H, W], computed for all views at once."""
    views = _crops(x, shape, [p.box for p in params], legacy)
    views = _apply(views, [i for i, p in enumerate(params) if p.flip], lambda v: v.flip(-1))
    rows = [i for i, p in enumerate(params) if p.affine is not None]
    grids = [_affine_grid(params[i].affine, shape, views) for i in rows]
    views = _apply(views, rows, lambda v: _warp(v, torch.cat(grids), fill))
    rows = [i for i, p in enumerate(params) if p.perspective is not None]
    grids = [_perspective_grid(params[i].perspective, shape, views) for i in rows]
    views = _apply(views, rows, lambda v: _warp(v, torch.cat(grids), fill))
    rows = [i for i, p in enumerate(params) if p.jitter is not None]
    views = _apply(views, rows, lambda v: _jitter(v, [params[i].jitter for i in rows]))
    rows = [i for i, p in enumerate(params) if p.gray]
    return _apply(views, rows, lambda v: TF.rgb_to_grayscale(v, num_output_channels=3))


def clip_views(
    x: torch.Tensor,
    n_views: int,
    g: torch.Generator,
    augment: ViewAugment,
    size: int = 224,
    max_size: int = 320,
    legacy: bool = True,
) -> torch.Tensor:
    """The ``n_views`` augmented views of one image [1, 3, H, W] that CLIP embeds (see :func:`draw_views`)."""
    shape, params = draw_views(g, tuple(x.shape[-2:]), n_views, augment, size, max_size, legacy)
    return render_views(x, shape, params, augment.fill, legacy)


class ViewPlan:
    """The CLIP views of a step: their random draws are made image by image, in the order of :meth:`draw` calls;
    the views themselves are built afterwards, all views of one image at once (:meth:`render`).

    Args:
        g: the step's generator.
        n_views: views per image.
        augment: their augmentation.
        legacy: resize without antialiasing, as the reference (see :func:`resize`).
    """

    def __init__(self, g: torch.Generator, n_views: int, augment: ViewAugment, legacy: bool = True) -> None:
        self.g, self.n_views, self.augment, self.legacy = g, n_views, augment, legacy
        self.requests: list[tuple[torch.Tensor, tuple[int, int], list[ViewParams]]] = []

    def draw(self, image: torch.Tensor) -> int:
        """Draw the views of ``image`` [1, 3, H, W]; returns the index of its views in :meth:`render`."""
        shape, params = draw_views(self.g, tuple(image.shape[-2:]), self.n_views, self.augment, legacy=self.legacy)
        self.requests.append((image, shape, params))
        return len(self.requests) - 1

    def render(self) -> list[torch.Tensor]:
        """The views [n_views, 3, h, w] of every :meth:`draw`, in that order."""
        by_image: dict[int, list[int]] = {}
        for i, (image, _, _) in enumerate(self.requests):
            by_image.setdefault(id(image), []).append(i)
        views: list[torch.Tensor | None] = [None] * len(self.requests)
        for members in by_image.values():
            image, shape, _ = self.requests[members[0]]
            params = [p for i in members for p in self.requests[i][2]]
            rendered = render_views(image, shape, params, self.augment.fill, self.legacy)
            for i, chunk in zip(members, rendered.split(self.n_views), strict=True):
                views[i] = chunk
        return views


# batched building blocks -------------------------------------------------------------------------------------


def _index(rows: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, device=like.device)


def _apply(views: torch.Tensor, rows: list[int], change) -> torch.Tensor:
    """``change`` applied to the views at ``rows``; the others are left as they are."""
    if not rows:
        return views
    if len(rows) == len(views):
        return change(views)
    return views.index_copy(0, _index(rows, views), change(views[rows]))


def _crops(x: torch.Tensor, shape: tuple[int, int], boxes: list, legacy: bool) -> torch.Tensor:
    """Each box of ``x`` (None: all of it) resized to ``shape``.

    One resize per view: the crops differ in size, and a gathered (batched) bilinear resize would have a
    backward pass that accumulates in a thread-dependent order on the CPU, which breaks run-to-run determinism.
    """
    h, w = x.shape[-2:]
    boxes = [(0, 0, h, w) if box is None else box for box in boxes]
    return torch.cat([resize(x[..., t : t + bh, s : s + bw], shape, legacy) for t, s, bh, bw in boxes])


def _base_grid(shape: tuple[int, int], centred: bool, like: torch.Tensor) -> torch.Tensor:
    """[1, H * W, 3] pixel centres (x, y, 1) as torchvision's grid generators lay them out: from the image centre
    (``centred``, affine) or from its corner (perspective)."""
    oh, ow = shape
    x0, y0 = (-ow * 0.5 + 0.5, -oh * 0.5 + 0.5) if centred else (0.5, 0.5)
    grid = torch.empty(1, oh, ow, 3, dtype=like.dtype, device=like.device)
    grid[..., 0].copy_(torch.linspace(x0, x0 + ow - 1, steps=ow, device=like.device))
    grid[..., 1].copy_(torch.linspace(y0, y0 + oh - 1, steps=oh, device=like.device).unsqueeze_(-1))
    grid[..., 2].fill_(1)
    return grid.view(1, oh * ow, 3)


def _affine_grid(affine: tuple[float, int, int], shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The sampling grid [1, H, W, 2] of ``TF.affine(angle, (dx, dy), scale 1, shear 0)`` on a tensor."""
    angle, dx, dy = affine
    matrix = TF._get_inverse_affine_matrix([0.0, 0.0], angle, [float(dx), float(dy)], 1.0, [0.0, 0.0])
    theta = torch.tensor(matrix, dtype=like.dtype, device=like.device).reshape(1, 2, 3)
    oh, ow = shape
    scale = torch.tensor([0.5 * ow, 0.5 * oh], dtype=like.dtype, device=like.device)
    return _base_grid(shape, True, like).bmm(theta.transpose(1, 2) / scale).view(1, oh, ow, 2)


def _perspective_grid(end: list[list[int]], shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The sampling grid [1, H, W, 2] of ``TF.perspective`` from the corners to ``end`` on a tensor."""
    oh, ow = shape
    start = [[0, 0], [ow - 1, 0], [ow - 1, oh - 1], [0, oh - 1]]
    c = TF._get_perspective_coeffs(start, end)
    theta1 = torch.tensor([[[c[0], c[1], c[2]], [c[3], c[4], c[5]]]], dtype=like.dtype, device=like.device)
    theta2 = torch.tensor([[[c[6], c[7], 1.0], [c[6], c[7], 1.0]]], dtype=like.dtype, device=like.device)
    base = _base_grid(shape, False, like)
    scale = torch.tensor([0.5 * ow, 0.5 * oh], dtype=like.dtype, device=like.device)
    grid = base.bmm(theta1.transpose(1, 2) / scale) / base.bmm(theta2.transpose(1, 2)) - 1.0
    return grid.view(1, oh, ow, 2)


def _warp(x: torch.Tensor, grids: torch.Tensor, fill: float) -> torch.Tensor:
    """Bilinear sampling of each view at its grid, outside points filled with ``fill`` (torchvision's way)."""
    mask = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
    out = F.grid_sample(torch.cat((x, mask), dim=1), grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = out[:, -1:].expand_as(out[:, :-1])
    return out[:, :-1] * mask + (1.0 - mask) * fill


def _jitter(x: torch.Tensor, draws: list[tuple[list[int], float, float, float, float]]) -> torch.Tensor:
    """Colour jitter of each view [V, 3, H, W] with its own order and factors, one batched change at a time."""
    for position in range(4):
        for op in range(4):
            rows = [i for i, (order, *_) in enumerate(draws) if order[position] == op]
            factors = [draws[i][1 + op] for i in rows]
            x = _apply(x, rows, lambda v, op=op, factors=factors: _JITTER_OPS[op](v, factors))
    return x


def _per_view(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None, None, None]


def _blend(a: torch.Tensor, b: torch.Tensor, ratios: list[float]) -> torch.Tensor:
    """torchvision's blend with one ratio per view (``1 - ratio`` rounded from double, as a Python scalar is)."""
    return (_per_view(ratios, a) * a + _per_view([1.0 - r for r in ratios], a) * b).clamp(0, 1)


def _brightness(x: torch.Tensor, factors: list[float]) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), factors)


def _contrast(x: torch.Tensor, factors: list[float]) -> torch.Tensor:
    return _blend(x, TF.rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factors)


def _saturation(x: torch.Tensor, factors: list[float]) -> torch.Tensor:
    return _blend(x, TF.rgb_to_grayscale(x), factors)


def _hue(x: torch.Tensor, factors: list[float]) -> torch.Tensor:
    h, s, v = F_t._rgb2hsv(x).unbind(dim=-3)
    return F_t._hsv2rgb(torch.stack(((h + _per_view(factors, x)[:, 0]) % 1.0, s, v), dim=-3))


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)
