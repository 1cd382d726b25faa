"""Resizing and the random views (augmented crops) that CLIP sees of every output.

All randomness is drawn from an explicit ``torch.Generator`` so that a step is a pure function of its seed.
The distributions are those of the reference's torchvision pipeline (SPEC section 2).

A view is made in two phases. :meth:`ViewAugment.draw` makes the random draws of one view, in the reference's
order, and returns them as :class:`ViewParams`; :func:`render_views` then builds any number of views of the same
shape at once: one resize per crop (crops differ in size), then each change as one batched operation over the
views that have it (a warp with one sampling grid per view, the colour changes with one factor per view).

The colour changes and the warps compute exactly the values of torchvision's tensor functions (the same
floating-point operations in the same order, so the same bits) and the same gradients, but select with float
masks instead of boolean ones and clamp with backwards that need no ``where`` (:class:`_Blend`): on the CPU,
boolean tensors make torchvision's versions several times slower than their arithmetic. They also write into
tensors they own where they can, because a new result costs more than overwriting memory just read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from text2live.draws import Draws


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


Source = torch.Generator | Draws  # where a draw comes from: a generator, or the Python draws of one


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor (a step's factors, matrices, row picks) on ``device`` without waiting for the device: on
    CUDA through pinned memory and an asynchronous copy (a copy from pageable memory synchronises the stream)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def device_tensor(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)`` through :func:`to_device`."""
    return to_device(torch.tensor(values, dtype=dtype), device)


def rand_uniform(g: Source, low: float, high: float) -> float:
    if isinstance(g, Draws):
        return g.uniform(low, high)
    return float(torch.empty(1).uniform_(low, high, generator=g).item())


def rand_int(g: Source, low: int, high: int) -> int:
    if isinstance(g, Draws):
        return g.randint(low, high)
    return int(torch.randint(low, high, (1,), generator=g).item())


def rand_chance(g: Source, p: float) -> bool:
    if isinstance(g, Draws):
        return g.rand() < p
    return bool(torch.rand(1, generator=g).item() < p)


def rand_perm(g: Source, n: int) -> list[int]:
    if isinstance(g, Draws):
        return g.randperm(n)
    return torch.randperm(n, generator=g).tolist()


# exact, fast colour operations -----------------------------------------------------------------------------------


def _clamp_passes_bounds() -> bool:
    """Whether autograd's clamp lets the gradient through at a value equal to a bound (torch versions differ)."""
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    (grad,) = torch.autograd.grad(x.clamp(0.0, 1.0).sum(), x)
    return bool(grad.sum() > 0)


_CLAMP_PASSES_BOUNDS = _clamp_passes_bounds()


def _clamp_backward(grad: torch.Tensor, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """The gradient autograd's ``x.clamp(0, 1)`` passes back: ``grad`` where the clamp changed nothing, else 0
    (written into ``grad`` with ``inplace``)."""
    if _CLAMP_PASSES_BOUNDS:  # inside [0, 1], bounds included
        inside = 1.0 - (x - x.clamp(0.0, 1.0)).abs_().clamp_(max=1.0).ceil_()
        return grad.mul_(inside) if inplace else grad * inside
    if inplace:  # strictly inside (0, 1): one fused kernel
        return torch.ops.aten.hardtanh_backward.grad_input(grad, x, 0.0, 1.0, grad_input=grad)
    return torch.ops.aten.hardtanh_backward(grad, x, 0.0, 1.0)


def _mask(op, a: torch.Tensor, b: torch.Tensor | float) -> torch.Tensor:
    """``op(a, b)`` (a comparison) as a float tensor of 0 and 1, outside autograd."""
    if torch.is_grad_enabled():
        a = a.detach()
        b = b.detach() if isinstance(b, torch.Tensor) else b
    shape = torch.broadcast_shapes(a.shape, b.shape) if isinstance(b, torch.Tensor) else a.shape
    return op(a, b, out=torch.empty(shape, dtype=a.dtype, device=a.device))


def _factors(values: float | list[float], like: torch.Tensor) -> float | torch.Tensor:
    """A factor per image of a batch [N, C, H, W] (shape [N, 1, 1, 1]), or one Python float for all."""
    if isinstance(values, (int, float)):
        return float(values)
    return device_tensor(values, like.dtype, like.device).view(-1, 1, 1, 1)


class _Blend(torch.autograd.Function):
    """``clamp(ratio * a + complement * b, 0, 1)`` with the gradient autograd takes of it, in one function that
    overwrites its own tensors: the sum and the clamp in place, the gradient to ``a`` in place of the clamp's.

    Without boolean tensors: the clamp's gradient passes through ``hardtanh_backward``. Where autograd's clamp
    passes it only strictly inside (0, 1), where the result is inside (0, 1) says the same, so the result is kept
    for the backward instead of the sum.
    """

    @staticmethod
    def forward(ctx, a, b, ratio, complement):
        mixed = (ratio * a).add_(complement * b)
        ctx.ratio, ctx.complement, ctx.b_shape = ratio, complement, b.shape
        if _CLAMP_PASSES_BOUNDS:  # the rule needs the sum: is 1 the sum or its clamp?
            ctx.save_for_backward(mixed)
            return mixed.clamp(0.0, 1.0)
        ctx.save_for_backward(mixed.clamp_(0.0, 1.0))
        return mixed

    @staticmethod
    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        grad = _clamp_backward(grad, saved)
        grad_b = None
        if ctx.needs_input_grad[1]:  # summed over the channels that the product broadcasts to, then multiplied
            shape = torch.broadcast_shapes(ctx.b_shape, getattr(ctx.complement, "shape", ()))
            grad_b = (grad.sum_to_size(shape) * ctx.complement).sum_to_size(ctx.b_shape)
        return grad.mul_(ctx.ratio) if ctx.needs_input_grad[0] else None, grad_b, None, None


def blend(a: torch.Tensor, b: torch.Tensor, ratio: float | list[float]) -> torch.Tensor:
    """torchvision's ``_blend``: ``clamp(ratio * a + (1 - ratio) * b, 0, 1)``, ``1 - ratio`` taken in double
    precision as torchvision does with a Python float; the same values and gradient."""
    complement = 1.0 - ratio if isinstance(ratio, (int, float)) else [1.0 - r for r in ratio]
    ratio, complement = _factors(ratio, a), _factors(complement, a)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _Blend.apply(a, b, ratio, complement)
    return (ratio * a).add_(complement * b).clamp_(0.0, 1.0)


_LUMA = (0.2989, 0.587, 0.114)  # torchvision's weights of red, green and blue


@lru_cache(maxsize=8)
def _luma_weights(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_LUMA, dtype=dtype, device=device).view(3, 1, 1)


class _Luma(torch.autograd.Function):
    """torchvision's luma ``0.2989 r + 0.587 g + 0.114 b`` with the gradient autograd takes of it (each channel's
    gradient is the luma's times the channel's weight, in float32) computed in one product."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x.unbind(dim=-3)
        return (_LUMA[0] * r).add_(_LUMA[1] * g).add_(_LUMA[2] * b).unsqueeze(dim=-3)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * _luma_weights(grad.dtype, grad.device)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma [N, 1, H, W] of RGB images [N, 3, H, W] (torchvision's weights): the same values and gradient."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Luma.apply(x)
    return _Luma.forward(None, x)


def adjust_brightness(x: torch.Tensor, factor: float | list[float]) -> torch.Tensor:
    # torchvision blends with zeros_like(x): adding a zero per image gives the same bits, sign of zero included
    return blend(x, x.new_zeros(1, 1, 1, 1), factor)


def _mean_luma(luma: torch.Tensor) -> torch.Tensor:
    """The mean [N, 1, 1, 1] of each luma image, summed as torchvision's reduction of one image sums it.

    With one CPU thread a batched reduction adds in the same order; with several, the reduction of one image is
    split between threads differently from that of a batch, so each image is then reduced on its own.
    """
    if len(luma) == 1 or luma.device.type != "cpu" or torch.get_num_threads() == 1:
        return luma.mean(dim=(-3, -2, -1), keepdim=True)
    return torch.cat([luma[i : i + 1].mean(dim=(-3, -2, -1), keepdim=True) for i in range(len(luma))])


def adjust_contrast(x: torch.Tensor, factor: float | list[float]) -> torch.Tensor:
    return blend(x, _mean_luma(grayscale(x)), factor)


def adjust_saturation(x: torch.Tensor, factor: float | list[float]) -> torch.Tensor:
    return blend(x, grayscale(x), factor)


def _first_of(r: torch.Tensor, g: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Float masks of the first of the channels r, g, b that equals ``value`` (as ``torch.max(dim=)`` picks)."""
    is_r = _mask(torch.eq, r, value)
    not_r = 1.0 - is_r
    is_g = _mask(torch.eq, g, value).mul_(not_r)
    return is_r, is_g, not_r.sub_(is_g)


class _Hue(torch.autograd.Function):
    """torchvision's ``adjust_hue`` (RGB to HSV, shift the hue, back to RGB) with a hand-written backward.

    The forward computes torchvision's values with the same floating-point operations, selecting with float masks
    (``sum(mask_i * value_i)`` with one mask equal to 1 is exact), and writes into tensors it owns wherever it can:
    on the CPU, an operation on these large planes that allocates its result takes several times as long as one
    that overwrites a tensor it has just read.

    The backward is the derivative of torchvision's graph as autograd takes it: the maximum and minimum route their
    gradient to the first channel that attains them (``torch.max(dim=)``), a clamp passes it only where autograd's
    clamp does, the hue's ``floor`` and modulo pass none through their integer part. It agrees with autograd on
    torchvision's function to float32 rounding (tests/test_views.py).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, hue: float | torch.Tensor) -> torch.Tensor:
        backward = not isinstance(ctx, _NoContext)  # what only the backward needs is skipped without a graph
        r, g, b = x.unbind(-3)
        v = torch.maximum(r, g)
        torch.maximum(v, b, out=v)
        m = torch.minimum(r, g)
        torch.minimum(m, b, out=m)
        is_r, is_g, is_b = _first_of(r, g, v)
        grey = _mask(torch.eq, v, m)
        coloured = 1.0 - grey
        cr = v - m
        den = (v * coloured).add_(grey)  # torch.where(grey, 1, v)
        s = cr / den
        crd = cr + grey  # torch.where(grey, 1, cr): cr is 0 where grey
        rc = (v - r).div_(crd)
        gc = (v - g).div_(crd)
        bc = (v - b).div_(crd)
        # the hue in sixths, by the first maximum: bc - gc, (2 + rc) - bc or (4 + gc) - rc
        h = (bc - gc).mul_(is_r)
        h_b = gc.add_(4.0).sub_(rc).mul_(is_b)
        h.add_(rc.add_(2.0).sub_(bc).mul_(is_g)).add_(h_b)
        del rc, gc, bc, h_b
        hc = (is_g * 2.0).add_(is_b * 4.0).neg_().add_(h) if backward else None  # without its branch constant
        h.div_(6.0).add_(1.0).frac_()  # fmod(h, 1) of h > 0, exact
        h.add_(hue)
        h.sub_(torch.floor(h)).mul_(6.0)  # h % 1, exact; then in sixths
        i = torch.floor(h)
        f = h.sub_(i)
        one_f = 1.0 - f
        a_p = 1.0 - s
        a_q = (s * f).neg_().add_(1.0)
        a_t = (s * one_f).neg_().add_(1.0)
        pre_p, pre_q, pre_t = v * a_p, v * a_q, v * a_t
        if backward:  # the clamps' inputs are kept for their gradient
            p, q, t = pre_p.clamp(0.0, 1.0), pre_q.clamp(0.0, 1.0), pre_t.clamp(0.0, 1.0)
        else:
            p, q, t = pre_p.clamp_(0.0, 1.0), pre_q.clamp_(0.0, 1.0), pre_t.clamp_(0.0, 1.0)
        # the HSV sector (i == 6 is sector 0), then each channel's value: v, q, p or t by sector
        m0, m1, m2, m3, m4, m5, m6 = (_mask(torch.eq, i, float(j)) for j in range(7))
        m0.add_(m6)
        del m6
        picks = (  # (v, q, p, t) masks of red, green and blue: R = v q p p t v, G = t v v q p p, B = p p t v v q
            (m0 + m5, m1, m2 + m3, m4),
            (m1 + m2, m3, m4 + m5, m0),
            (m3 + m4, m5, m0 + m1, m2),
        )
        out = torch.empty_like(x)
        for channel, (pick_v, pick_q, pick_p, pick_t) in zip(out.unbind(-3), picks, strict=True):
            torch.mul(v, pick_v, out=channel).addcmul_(q, pick_q).addcmul_(p, pick_p).addcmul_(t, pick_t)
        if not backward:
            return out
        lo_r, lo_g, lo_b = _first_of(r, g, m)
        ctx.save_for_backward(
            v, s, f, one_f, a_p, a_q, a_t, cr, den, crd, coloured, hc, is_r, is_g, is_b, lo_r, lo_g, lo_b,
            pre_p, pre_q, pre_t, *(mask for channel in picks for mask in channel),
        )  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (v, s, f, one_f, a_p, a_q, a_t, cr, den, crd, coloured, hc, is_r, is_g, is_b, lo_r, lo_g, lo_b,
         pre_p, pre_q, pre_t, *masks) = ctx.saved_tensors  # fmt: skip
        picks = (masks[0:4], masks[4:8], masks[8:12])
        grad_r, grad_g, grad_b = grad.unbind(-3)
        g_v, g_q, g_p, g_t = (
            (grad_r * picks[0][k]).addcmul_(grad_g, picks[1][k]).addcmul_(grad_b, picks[2][k]) for k in range(4)
        )
        _clamp_backward(g_p, pre_p, inplace=True)
        _clamp_backward(g_q, pre_q, inplace=True)
        _clamp_backward(g_t, pre_t, inplace=True)
        g_v.addcmul_(g_p, a_p).addcmul_(g_q, a_q).addcmul_(g_t, a_t)
        g_s = (g_q * f).addcmul_(g_t, one_f).add_(g_p).mul_(v).neg_()
        d = g_t.sub_(g_q).mul_(v).mul_(s).div_(crd)  # the hue's gradient over crd
        g_cr = (d * hc).neg_().mul_(coloured).add_(g_s / den)
        g_v.add_(g_s.mul_(cr).div_(den).div_(den).neg_().mul_(coloured)).add_(g_cr)
        g_m = g_cr.neg_()
        # the hue reads two channels directly: +d where a channel is subtracted, -d where it is added
        out = torch.empty_like(grad)
        spread = g_p  # its memory, no longer needed
        for channel, is_c, lo_c, plus, minus in zip(
            out.unbind(-3), (is_r, is_g, is_b), (lo_r, lo_g, lo_b), (is_b, is_r, is_g), (is_g, is_b, is_r), strict=True
        ):
            torch.mul(is_c, g_v, out=channel).addcmul_(lo_c, g_m).addcmul_(torch.sub(plus, minus, out=spread), d)
        return out, None


def adjust_hue(x: torch.Tensor, factor: float | list[float]) -> torch.Tensor:
    """torchvision's ``adjust_hue`` of RGB images [N, 3, H, W] in [0, 1]: the same values and, to float32
    rounding, the same gradient (see :class:`_Hue`)."""
    hue = _factors(factor, x)
    if isinstance(hue, torch.Tensor):
        hue = hue.view(-1, 1, 1)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Hue.apply(x, hue)
    with torch.no_grad():
        return _Hue.forward(_NoContext(), x, hue)


class _NoContext:
    """Stands in for autograd's context when a function of this module runs without a graph."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


_COLOUR_CHANGES = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


# warps -------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _base_grid(oh: int, ow: int, centred: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, H * W, 3] pixel centres (x, y, 1) as torchvision's grid generators lay them out: from the image centre
    (``centred``, affine) or from its corner (perspective)."""
    x0, y0 = (-ow * 0.5 + 0.5, -oh * 0.5 + 0.5) if centred else (0.5, 0.5)
    grid = torch.empty(1, oh, ow, 3, dtype=dtype, device=device)
    grid[..., 0].copy_(torch.linspace(x0, x0 + ow - 1.0, steps=ow, device=device))
    grid[..., 1].copy_(torch.linspace(y0, y0 + oh - 1.0, steps=oh, device=device).unsqueeze_(-1))
    grid[..., 2].fill_(1)
    return grid.view(1, oh * ow, 3)


def _affine_grids(draws: list[tuple[float, int, int]], shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Sampling grids [N, H, W, 2] of ``TF.affine(angle, (dx, dy), scale 1, shear 0)``, one per draw."""
    oh, ow = shape
    matrices = [
        TF._get_inverse_affine_matrix([0.0, 0.0], a, [float(dx), float(dy)], 1.0, [0.0, 0.0]) for a, dx, dy in draws
    ]
    theta = device_tensor(matrices, like.dtype, like.device).view(-1, 2, 3)
    scale = device_tensor([0.5 * ow, 0.5 * oh], like.dtype, like.device)
    base = _base_grid(oh, ow, True, like.dtype, like.device).expand(len(draws), -1, -1)
    return base.bmm(theta.transpose(1, 2) / scale).view(-1, oh, ow, 2)


def _perspective_coeffs(start: list[list[int]], ends: list[list[list[int]]]) -> list[list[float]]:
    """``TF._get_perspective_coeffs(start, end)`` for each end, in one batched double-precision least-squares solve
    (the same LAPACK driver, so the same float32 coefficients)."""
    rows = []
    for end in ends:
        a = []
        for (x, y), (u, v) in zip(end, start, strict=True):
            a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
            a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rows.append(a)
    a_matrix = torch.tensor(rows, dtype=torch.float64)
    b_matrix = torch.tensor([[c for point in start for c in point]] * len(ends), dtype=torch.float64).unsqueeze(-1)
    return torch.linalg.lstsq(a_matrix, b_matrix, driver="gels").solution.squeeze(-1).to(torch.float32).tolist()


def _perspective_grids(ends: list[list[list[int]]], shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """Sampling grids [N, H, W, 2] of ``TF.perspective`` from the corners to each ``end``."""
    oh, ow = shape
    coeffs = _perspective_coeffs([[0, 0], [ow - 1, 0], [ow - 1, oh - 1], [0, oh - 1]], ends)
    theta1 = device_tensor([[c[0:3], c[3:6]] for c in coeffs], like.dtype, like.device)
    theta2 = device_tensor([[[c[6], c[7], 1.0]] * 2 for c in coeffs], like.dtype, like.device)
    scale = device_tensor([0.5 * ow, 0.5 * oh], like.dtype, like.device)
    base = _base_grid(oh, ow, False, like.dtype, like.device).expand(len(ends), -1, -1)
    grid = base.bmm(theta1.transpose(1, 2) / scale) / base.bmm(theta2.transpose(1, 2)) - 1.0
    return grid.view(-1, oh, ow, 2)


def warp(x: torch.Tensor, grids: torch.Tensor, fill: float) -> torch.Tensor:
    """Bilinear sampling of each image [N, C, H, W] at its grid, points outside filled with ``fill`` the way
    torchvision does (a sampled mask channel blends the fill in; it needs no gradient, so it is sampled apart)."""
    out = F.grid_sample(x, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    with torch.no_grad():  # sampling is per channel: the mask channel alone gives the same values
        ones = torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        mask = F.grid_sample(ones, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
        filled = 1.0 - mask  # times a fill of 1 (the default): the same values, one channel for all
        if fill != 1.0:  # per channel, the products torchvision computes
            filled = filled * torch.full((1, x.shape[1], 1, 1), float(fill), dtype=x.dtype, device=x.device)
    # grid_sample's backward needs its input and grid, not its output: the output can be changed in place
    return out.mul_(mask).add_(filled)


# the random draws ------------------------------------------------------------------------------------------------


@dataclass
class ViewParams:
    """The random draws of one view: its crop ``(top, left, height, width)`` (None: the whole image), a
    horizontal flip, an affine warp ``(angle, dx, dy)``, a perspective warp (the corners' destinations), a colour
    jitter ``(order, brightness, contrast, saturation, hue)`` and greyscale; None where a change is not drawn."""

    box: tuple[int, int, int, int] | None
    flip: bool
    affine: tuple[float, int, int] | None
    perspective: list[list[int]] | None
    jitter: tuple[list[int], float, float, float, float] | None
    gray: bool


def draw_jitter(g: Source, strength: float) -> tuple[list[int], float, float, float, float]:
    """torchvision's ColorJitter(strength x 4) draws: the order of the four changes and their factors."""
    order = rand_perm(g, 4)
    brightness = rand_uniform(g, 1 - strength, 1 + strength)
    contrast = rand_uniform(g, 1 - strength, 1 + strength)
    saturation = rand_uniform(g, 1 - strength, 1 + strength)
    hue = rand_uniform(g, -strength, strength)
    return order, brightness, contrast, saturation, hue


def adjust_blends(x: torch.Tensor, ops: list[int], factors: list[float]) -> torch.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2), one per image of ``x`` [N, 3, H, W].

    The three are torchvision's blends with a target of zero, the mean luma or the luma; with several of them in
    one batch the target is ``luma * [saturation] + mean luma * [contrast]``, which equals each one's own target
    exactly (adding a product with 0 changes nothing).
    """
    if len(set(ops)) == 1:
        return _COLOUR_CHANGES[ops[0]](x, factors)
    luma = grayscale(x)
    mean = _mean_luma(luma)
    saturation = _factors([float(op == 2) for op in ops], x)
    contrast = _factors([float(op == 1) for op in ops], x)
    return blend(x, luma * saturation + mean * contrast, factors)


JitterDraws = tuple[list[int], float, float, float, float]


def apply_jitter(views: list[torch.Tensor], rows: list[int], draws: list[JitterDraws]) -> None:
    """The colour jitter of ``views[i]`` [1, 3, H, W] for ``i`` in ``rows``, each with its draws, in place in the
    list: at each of the four positions of the random order, one batched blend (brightness, contrast or
    saturation) and one batched hue change."""
    for position in range(4):
        ops = [order[position] for order, *_ in draws]
        blends = [j for j, op in enumerate(ops) if op != 3]
        kinds, factors = [ops[j] for j in blends], [draws[j][1 + ops[j]] for j in blends]
        _apply(views, [rows[j] for j in blends], functools.partial(adjust_blends, ops=kinds, factors=factors))
        hues = [j for j, op in enumerate(ops) if op == 3]
        _apply(views, [rows[j] for j in hues], functools.partial(adjust_hue, factor=[draws[j][4] for j in hues]))


def color_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.1) -> torch.Tensor:
    """torchvision's ColorJitter(strength x 4): the four changes in a random order."""
    order, *factors = draw_jitter(g, strength)
    for op in order:
        x = _COLOUR_CHANGES[op](x, factors[op])
    return x


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

    def draw(self, g: Source, h: int, w: int, box: tuple[int, int, int, int] | None = None) -> ViewParams:
        """The draws of one view of shape ``(h, w)``, in the reference's order."""
        flip = rand_chance(g, self.flip_p)
        affine = None
        if rand_chance(g, self.affine_p):
            angle = rand_uniform(g, -self.degrees, self.degrees)
            max_dx, max_dy = self.translate * w, self.translate * h
            affine = (angle, round(rand_uniform(g, -max_dx, max_dx)), round(rand_uniform(g, -max_dy, max_dy)))
        perspective = _perspective_points(g, w, h, self.distortion) if rand_chance(g, self.perspective_p) else None
        jitter = draw_jitter(g, self.jitter) if rand_chance(g, self.jitter_p) else None
        return ViewParams(box, flip, affine, perspective, jitter, rand_chance(g, self.grayscale_p))

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """One augmented view of ``x`` [1, 3, H, W]."""
        params = self.draw(g, *x.shape[-2:])
        return render_views([(x, [params])], tuple(x.shape[-2:]), self.fill)


def _perspective_points(g: torch.Generator, w: int, h: int, d: float) -> list[list[int]]:
    half_h, half_w = h // 2, w // 2
    dx, dy = int(d * half_w), int(d * half_h)
    top_left = [rand_int(g, 0, dx + 1), rand_int(g, 0, dy + 1)]
    top_right = [rand_int(g, w - dx - 1, w), rand_int(g, 0, dy + 1)]
    bot_right = [rand_int(g, w - dx - 1, w), rand_int(g, h - dy - 1, h)]
    bot_left = [rand_int(g, 0, dx + 1), rand_int(g, h - dy - 1, h)]
    return [top_left, top_right, bot_right, bot_left]


def view_shape(hw: tuple[int, int], size: int = 224, max_size: int = 320, legacy: bool = True) -> tuple[int, int]:
    """The shape of the CLIP views of an ``hw`` image (that of :func:`resize_shorter`)."""
    h, w = hw
    return (h, w) if legacy and min(h, w) == size else resized_shape(h, w, size, max_size)


def draw_views(
    g: Source,
    hw: tuple[int, int],
    n_views: int,
    augment: ViewAugment,
    size: int = 224,
    max_size: int = 320,
    legacy: bool = True,
) -> tuple[tuple[int, int], list[ViewParams]]:
    """The shape and the random draws of the ``n_views`` CLIP views of an ``hw`` image.

    View 1 is the whole image resized (shorter side ``size``, longer side at most ``max_size``); the others
    are random crops of ``s * (H, W)``, ``s ~ U(0.6, 1)``, resized to view 1's shape. Every view then gets its own
    random augmentation. The draws come in the reference's order: view 1's augmentation, then for each further
    view its crop and its augmentation.
    """
    h, w = hw
    shape = view_shape(hw, size, max_size, legacy)
    params = [augment.draw(g, *shape)]
    for _ in range(n_views - 1):
        s = rand_uniform(g, 0.6, 1.0)
        ch, cw = int(h * s), int(w * s)
        top, left = rand_int(g, 0, h - ch + 1), rand_int(g, 0, w - cw + 1)
        params.append(augment.draw(g, *shape, box=(top, left, ch, cw)))
    return shape, params


def _upsample_backward(grad: torch.Tensor, shape: tuple[int, int], input_shape, legacy: bool) -> torch.Tensor:
    """The gradient that :func:`resize` to ``shape`` passes back from ``grad`` to its input of ``input_shape``."""
    if legacy:
        return torch.ops.aten.upsample_bilinear2d_backward(grad, list(shape), list(input_shape), False)
    return torch.ops.aten._upsample_bilinear2d_aa_backward(grad, list(shape), list(input_shape), False)


class _Crops(torch.autograd.Function):
    """The crops of one image [1, C, H, W], each resized to ``shape`` (and flipped where asked), one output each.

    The values are those of :func:`resize` of each crop. The backward adds each crop's gradient into the image's
    gradient in place, where autograd would make a zero image per crop and then add these up.
    """

    @staticmethod
    def forward(ctx, image, boxes, flips, shape, legacy):
        ctx.set_materialize_grads(False)
        ctx.boxes, ctx.flips, ctx.shape, ctx.legacy, ctx.image_shape = boxes, flips, shape, legacy, image.shape
        views = []
        for (top, left, ch, cw), flip in zip(boxes, flips, strict=True):
            view = resize(image[..., top : top + ch, left : left + cw], shape, legacy)
            views.append(view.flip(-1) if flip else view.clone() if (ch, cw) == shape else view)
        return tuple(views)

    @staticmethod
    def backward(ctx, *grads):
        image_grad = None
        for grad, (top, left, ch, cw), flip in zip(grads, ctx.boxes, ctx.flips, strict=True):
            if grad is None:
                continue
            if image_grad is None:
                image_grad = grad.new_zeros(ctx.image_shape)
            if flip:
                grad = grad.flip(-1)
            if (ch, cw) != ctx.shape:
                grad = _upsample_backward(grad, ctx.shape, (*ctx.image_shape[:-2], ch, cw), ctx.legacy)
            image_grad[..., top : top + ch, left : left + cw].add_(grad)
        return image_grad, None, None, None, None


def crops(
    image: torch.Tensor, boxes: list[tuple[int, int, int, int]], flips: list[bool], shape: tuple[int, int], legacy: bool
) -> list[torch.Tensor]:
    """The crops ``(top, left, height, width)`` of ``image`` [1, C, H, W] resized to ``shape``, each flipped
    horizontally where ``flips`` says: ``resize(image[..., crop], shape, legacy)`` and its gradient."""
    shape = tuple(shape)
    if torch.is_grad_enabled() and image.requires_grad:
        return list(_Crops.apply(image, boxes, flips, shape, legacy))
    return list(_Crops.forward(_NoContext(), image, boxes, flips, shape, legacy))


# building views in batches -----------------------------------------------------------------------------------------


def _apply(views: list[torch.Tensor], rows: list[int], change) -> None:
    """Replace ``views[i]`` for ``i`` in ``rows`` by the rows of ``change(their concatenation)``."""
    if not rows:
        return
    changed = change(torch.cat([views[i] for i in rows]))
    for i, view in zip(rows, changed.split(1), strict=True):
        views[i] = view


def render_views(
    requests: list[tuple[torch.Tensor, list[ViewParams]]],
    shape: tuple[int, int],
    fill: float = 1.0,
    legacy: bool = True,
) -> torch.Tensor:
    """The views [sum of len(params), 3, *shape] of the ``(image [1, 3, H, W], params)`` requests, all of one
    shape, in the order of the requests.

    Each view is cropped and resized on its own; every later change runs once over all the views (of every
    request) that drew it. The values are those of building each view on its own with torchvision's functions.
    """
    views: list[torch.Tensor] = []
    params: list[ViewParams] = []
    for x, view_params in requests:
        h, w = x.shape[-2:]
        boxes = [p.box if p.box is not None else (0, 0, h, w) for p in view_params]
        views += crops(x, boxes, [p.flip for p in view_params], shape, legacy)
        params += view_params
    like = views[0]
    rows = [i for i, p in enumerate(params) if p.affine is not None]
    _apply(views, rows, lambda v: warp(v, _affine_grids([params[i].affine for i in rows], shape, like), fill))
    rows = [i for i, p in enumerate(params) if p.perspective is not None]
    _apply(views, rows, lambda v: warp(v, _perspective_grids([params[i].perspective for i in rows], shape, like), fill))
    rows = [i for i, p in enumerate(params) if p.jitter is not None]
    apply_jitter(views, rows, [params[i].jitter for i in rows])
    rows = [i for i, p in enumerate(params) if p.gray]
    _apply(views, rows, lambda v: grayscale(v).expand(v.shape))
    return torch.cat(views)


def clip_views(
    x: torch.Tensor,
    n_views: int,
    g: torch.Generator,
    augment: ViewAugment,
    size: int = 224,
    max_size: int = 320,
    legacy: bool = True,
) -> torch.Tensor:
    """The ``n_views`` augmented views [n_views, 3, h, w] of one image [1, 3, H, W] (see :func:`draw_views`)."""
    shape, params = draw_views(g, tuple(x.shape[-2:]), n_views, augment, size, max_size, legacy)
    return render_views([(x, params)], shape, augment.fill, legacy)


class ViewPlan:
    """The CLIP views of a training step, drawn first and built afterwards.

    :meth:`add` makes the random draws of an image's views at once, so a step's draws keep the reference's order
    (text rows and views interleaved as the loss terms ask for them); :meth:`render` then builds the views of all
    images of one shape together, those that need a gradient apart from those that do not (a batched operation
    computes the gradient of every row it holds).

    Args:
        g: the step's generator, or :class:`~text2live.draws.Draws` of it.
        n_views: views per image.
        augment: their augmentation.
        legacy: resize without antialiasing, as the reference (see :func:`resize`).
    """

    def __init__(self, g: Source, n_views: int, augment: ViewAugment, legacy: bool = True) -> None:
        self.g, self.n_views, self.augment, self.legacy = g, n_views, augment, legacy
        self.requests: list[tuple[torch.Tensor, tuple[int, int], list[ViewParams]]] = []

    def add(self, image: torch.Tensor) -> int:
        """Draw the views of ``image`` [1, 3, H, W]; returns their index in :meth:`render`'s list."""
        shape, params = draw_views(self.g, tuple(image.shape[-2:]), self.n_views, self.augment, legacy=self.legacy)
        self.requests.append((image, shape, params))
        return len(self.requests) - 1

    def groups(self) -> list[list[int]]:
        """The requests that are built (and embedded) together: same view shape, same need of a gradient."""
        groups: dict[tuple, list[int]] = {}
        for i, (image, shape, _) in enumerate(self.requests):
            groups.setdefault((shape, image.requires_grad), []).append(i)
        return list(groups.values())

    def render(self, members: list[int]) -> torch.Tensor:
        """The views [len(members) * n_views, 3, h, w] of the requests ``members`` (one of :meth:`groups`)."""
        shape = self.requests[members[0]][1]
        requests = [(self.requests[i][0], self.requests[i][2]) for i in members]
        return render_views(requests, shape, self.augment.fill, self.legacy)
