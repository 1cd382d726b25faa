"""The edit-layer generator: a Deep-Image-Prior "skip" encoder-decoder that maps RGB to RGBA.

The layout follows the reference (``omerbt/Text2LIVE``, ``models/backbone/skip.py``) level by level, so a
reference state dict maps onto it one tensor at a time (see :func:`convert_reference_state_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

GREENSCREEN_RGB = (0.0, 177 / 255, 64 / 255)


class BatchStatNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with the statistics of the current batch.

    The reference never switches its generator to eval mode, so every forward pass (rendering included)
    uses batch statistics. Lightning puts modules in eval mode outside training; this layer keeps the
    reference behaviour there on purpose. Running statistics are still tracked in training mode so that
    state dicts keep the usual BatchNorm keys.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        track = self.training and self.track_running_stats
        if track and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            training=True,
            momentum=self.momentum if self.momentum is not None else 0.1,
            eps=self.eps,
        )


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Reflection-padded convolution with bias (padding module first, as in the reference)."""
    return nn.Sequential(nn.ReflectionPad2d((kernel - 1) // 2), nn.Conv2d(in_ch, out_ch, kernel, stride))


def _act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2)


class SkipLevel(nn.Module):
    """One scale of the encoder-decoder: a skip branch, a strided deeper branch, and the merge."""

    def __init__(self, in_ch: int, down: int, up: int, skip: int, inner: SkipLevel | None, top: bool) -> None:
        super().__init__()
        self.skip = nn.Sequential(_conv(in_ch, skip, 1), BatchStatNorm2d(skip), _act()) if skip else None
        self.down = nn.Sequential(
            _conv(in_ch, down, 3, stride=2),
            BatchStatNorm2d(down),
            _act(),
            _conv(down, down, 3),
            BatchStatNorm2d(down),
            _act(),
        )
        self.inner = inner
        deeper_ch = inner.out_channels if inner is not None else down
        self.merge = nn.Sequential(
            BatchStatNorm2d(skip + deeper_ch),
            _conv(skip + deeper_ch, up, 3),
            BatchStatNorm2d(up),
            _act(),
            _conv(up, up, 1),
            nn.Identity() if top else BatchStatNorm2d(up),
            _act(),
        )
        self.out_channels = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deeper = self.down(x)
        if self.inner is not None:
            deeper = self.inner(deeper)
        deeper = F.interpolate(deeper, scale_factor=2.0, mode="bilinear", align_corners=False)
        if self.skip is None:
            return self.merge(deeper)
        branches = _center_crop_to_common([self.skip(x), deeper])
        return self.merge(torch.cat(branches, dim=1))


def _center_crop_to_common(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    h = min(t.shape[-2] for t in tensors)
    w = min(t.shape[-1] for t in tensors)
    out = []
    for t in tensors:
        top = (t.shape[-2] - h) // 2
        left = (t.shape[-1] - w) // 2
        out.append(t[..., top : top + h, left : left + w])
    return out


class DecorrelatedColors(nn.Module):
    """Maps the 3 colour logits from a decorrelated colour space to RGB; the alpha logit passes through."""

    def __init__(self, inv_color_scale: float = 1.6) -> None:
        super().__init__()
        sqrt_corr = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
        sqrt_corr = sqrt_corr / torch.tensor([inv_color_scale, 1.0, 1.0])
        sqrt_corr = sqrt_corr / sqrt_corr.norm(dim=0).max()
        self.register_buffer("colcorr_t", sqrt_corr.T.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = torch.einsum("nchw,cd->ndhw", x[:, :3], self.colcorr_t)
        return torch.cat([rgb, x[:, 3:]], dim=1)


class SkipGenerator(nn.Module):
    """RGB image in [0, 1] -> RGBA in [0, 1] (``[:, :3]`` the edit colours, ``[:, 3:]`` the opacity).

    Args:
        channels_down: channels of the strided (encoder) convolutions at every scale.
        channels_up: channels of the decoder convolutions at every scale.
        channels_skip: channels of the 1x1 skip branch at every scale (0 disables skips).
        num_scales: number of scales; inputs need both sides >= 2**num_scales + 1.
    """

    def __init__(
        self, channels_down: int = 128, channels_up: int = 128, channels_skip: int = 4, num_scales: int = 7
    ) -> None:
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"generator.num_scales must be at least 1, got {num_scales}")
        self.num_scales = num_scales
        inner = None
        for level in reversed(range(num_scales)):
            in_ch = 3 if level == 0 else channels_down
            inner = SkipLevel(in_ch, channels_down, channels_up, channels_skip, inner, top=level == 0)
        self.body = inner
        self.head = nn.Conv2d(channels_up, 4, 1)
        self.decorrelate = DecorrelatedColors()

    @property
    def min_side(self) -> int:
        """Smallest input side the network accepts (the deepest reflection pad needs 2 pixels)."""
        return 2**self.num_scales + 1

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decorrelate(self.head(self.body(rgb))))


def render_layers(rgba: torch.Tensor, background: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Split a generator output into the edit layer and its renderings.

    Returns ``edit`` (RGB), ``alpha`` (1 channel), ``edit_on_greenscreen`` and, with a background,
    ``composite = (1 - alpha) * background + alpha * edit``.
    """
    edit, alpha = rgba[:, :3], rgba[:, 3:4]
    green = torch.tensor(GREENSCREEN_RGB, dtype=rgba.dtype, device=rgba.device).view(1, 3, 1, 1)
    out = {"edit": edit, "alpha": alpha, "edit_on_greenscreen": alpha * edit + (1 - alpha) * green}
    if background is not None:
        out["composite"] = (1 - alpha) * background + alpha * edit
    return out


def convert_reference_state_dict(
    reference: Mapping[str, torch.Tensor], generator: SkipGenerator
) -> dict[str, torch.Tensor]:
    """Map a state dict saved by the reference implementation onto ``generator``'s names.

    The reference builds the network as nested ``nn.Sequential`` containers with numeric names; its
    tensors come in the same order as this module registers them, so they are paired in order and every
    pair is checked by name suffix and shape. Raises ``ValueError`` when the two do not describe the same
    architecture.
    """
    ours = generator.state_dict()
    if len(reference) != len(ours):
        raise ValueError(
            f"the reference state dict has {len(reference)} tensors but this generator has {len(ours)}: "
            "build the generator with the same channels and num_scales as the reference run"
        )
    converted = {}
    for (ref_key, ref_value), (our_key, our_value) in zip(reference.items(), ours.items(), strict=True):
        if ref_key.rsplit(".", 1)[-1] != our_key.rsplit(".", 1)[-1] or ref_value.shape != our_value.shape:
            raise ValueError(
                f"reference tensor {ref_key} {tuple(ref_value.shape)} does not match {our_key} "
                f"{tuple(our_value.shape)}: the checkpoint was trained with another generator configuration"
            )
        converted[our_key] = ref_value
    return converted
