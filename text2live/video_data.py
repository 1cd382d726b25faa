"""The atlas DataModule: a video's frames and NLA maps, and each step's crops (SPEC section 5).

Setup loads the frames, evaluates the NLA mappings and alpha at every pixel once, and rasterises the atlas of
each edited layer over the window the video uses. Every step then samples three frames (t - d, t, t + d),
a crop of each, the atlas crop that covers their UVs, a shared horizontal flip and colour jitter, all drawn
from the step's seeded generator, as the Hydra-built :class:`AtlasCrops` (``data.crops``) says.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from text2live.data import DATA_STREAM, LOSS_STREAM, step_seed
from text2live.errors import ConfigError, InputError
from text2live.io import load_frames
from text2live.loader import StepLoader
from text2live.nla import LAYERS, load_nla, rasterize_atlas, video_maps
from text2live.views import color_jitter, rand_chance, rand_int

log = logging.getLogger("text2live")

# The atlas of a layer occupies [-1, 0]^2 (background) or [0, 1]^2 (foreground); UVs are shifted by this
# before being scaled to atlas pixels.
UV_SHIFT = {"background": 1.0, "foreground": 0.0}


@dataclass
class AtlasLayer:
    """One NLA layer, rasterised.

    Attributes:
        name: ``foreground`` or ``background``.
        uvs: [T, H, W, 2] atlas pixel (u, v) of every video pixel, relative to ``atlas`` (the only copy of
            the UV maps).
        atlas: [1, 3, h, w] the atlas image over the window the video uses.
        origin: the (u, v) grid pixel of ``atlas``'s corner in the full atlas grid.
        used: [1, 1, h, w] 1 where some video pixel maps (for masking atlas pictures).
        boundaries: foreground only: per frame the (top, left, height, width) box around alpha >= threshold.
        window: foreground only: (top, left, height, width) of the atlas window those boxes map into; the
            generator sees this window as the whole atlas.
    """

    name: str
    uvs: torch.Tensor
    atlas: torch.Tensor
    origin: tuple[int, int]
    used: torch.Tensor
    boundaries: torch.Tensor | None = None
    window: tuple[int, int, int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.atlas.shape[-2:])

    def whole(self) -> torch.Tensor:
        """The atlas the generator edits as a whole (the foreground's window, or the full background atlas)."""
        if self.window is None:
            return self.atlas
        top, left, h, w = self.window
        return self.atlas[..., top : top + h, left : left + w]

    def grid(self, frame: int) -> torch.Tensor:
        """[1, H, W, 2] sampling grid of ``frame`` into the full atlas (grid_sample convention)."""
        h, w = self.size
        scale = torch.tensor([w, h], dtype=self.uvs.dtype)
        return (self.uvs[frame] / scale * 2 - 1)[None]


def atlas_extent(
    uvs: torch.Tensor, shift: float, resolution: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """UVs in atlas pixels relative to their floor minimum, that minimum (u, v), and the extent (h, w)."""
    px = (uvs + shift) * resolution
    lo = px.reshape(-1, 2).amin(dim=0).floor()
    px -= lo
    hi = px.reshape(-1, 2).amax(dim=0).ceil()
    u0, v0 = (int(x) for x in lo.tolist())
    w, h = (max(1, int(x)) for x in hi.tolist())
    return px, (u0, v0), (h, w)


def used_mask(uvs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, 1, h, w]: 1 at the four atlas pixels around every video pixel's UV."""
    h, w = size
    mask = torch.zeros(h, w)
    flat = uvs.reshape(-1, 2)
    u = flat[:, 0].clamp(0, w - 1)
    v = flat[:, 1].clamp(0, h - 1)
    for uu in (u.floor().long(), u.ceil().long()):
        for vv in (v.floor().long(), v.ceil().long()):
            mask[vv, uu] = 1
    return mask[None, None]


def mask_boundaries(alpha: torch.Tensor, border: int, threshold: float, min_size: int) -> torch.Tensor:
    """Per frame (top, left, height, width) of the box around alpha >= threshold, grown by ``border`` pixels
    (clipped to the frame) and to at least ``min_size`` per side."""
    frames, _, height, width = alpha.shape
    boxes = torch.zeros(frames, 4, dtype=torch.long)
    for t in range(frames):
        ys, xs = (alpha[t, 0] >= threshold).nonzero(as_tuple=True)
        if not len(ys):
            raise InputError(
                f"the NLA foreground alpha never reaches data.mask_threshold={threshold} in frame {t}: lower "
                "data.mask_threshold, or edit the background layer only"
            )
        top, left = max(int(ys.min()) - border, 0), max(int(xs.min()) - border, 0)
        bottom, right = min(int(ys.max()) + border, height), min(int(xs.max()) + border, width)
        top, bottom = _grow(top, bottom, min_size, height)
        left, right = _grow(left, right, min_size, width)
        if bottom - top < min_size or right - left < min_size:
            raise InputError(
                f"frames of {width}x{height} px are too small for crops of at least {min_size} px: use larger "
                "frames (data.width, data.height) or a generator with fewer scales"
            )
        boxes[t] = torch.tensor([top, left, bottom - top, right - left])
    return boxes


def _grow(start: int, stop: int, size: int, limit: int) -> tuple[int, int]:
    """Grow [start, stop) to ``size``: downward if it fits (as the reference), else upward, clipped to [0, limit)."""
    pad = size - (stop - start)
    if pad <= 0:
        return start, stop
    if stop + pad <= limit:
        return start, stop + pad
    start -= pad
    if start < 0:  # the reference would go out of the frame here
        start, stop = 0, min(limit, stop - start)
    return start, stop


def foreground_window(boundaries: torch.Tensor, uvs: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the atlas window that the boxes of every frame map into."""
    lo = torch.full((2,), math.inf)
    hi = torch.full((2,), -math.inf)
    for (top, left, h, w), frame in zip(boundaries.tolist(), uvs):
        box = frame[top : top + h, left : left + w].reshape(-1, 2)
        lo = torch.minimum(lo, box.amin(dim=0))
        hi = torch.maximum(hi, box.amax(dim=0))
    (u0, v0), (u1, v1) = lo.floor().long().tolist(), hi.ceil().long().tolist()
    return v0, u0, v1 - v0, u1 - u0


def check_edit_layers(edit_layers) -> list[str]:
    """``edit_layers`` as a list, if it names each NLA layer at most once; else a ConfigError."""
    try:
        layers = None if isinstance(edit_layers, str) else list(edit_layers)
    except TypeError:
        layers = None
    if not layers or any(layer not in LAYERS for layer in layers) or len(set(layers)) != len(layers):
        raise ConfigError(
            f"edit_layers={edit_layers!r} is not valid: use [foreground], [background] or [foreground,background]"
        )
    return layers


class AtlasCrops:
    """How each step's crops are drawn (SPEC section 5): the settings of the atlas DataModule's ``crops``.

    The step's frames are ``t - frame_distance``, ``t`` and ``t + frame_distance``. Crop sides are
    ``U(crop_min_cover, 1)`` times the frame (background: one window for the three frames) or the frame's alpha
    box (foreground). One horizontal flip (p = ``flip_p``) is shared by every crop of the step; colour jitter
    (p = ``jitter_p``) is drawn for the three background crops together, each foreground crop and each atlas crop.
    """

    def __init__(
        self, frame_distance: int = 2, flip_p: float = 0.5, jitter_p: float = 0.1, crop_min_cover: float = 0.95
    ) -> None:
        if not 0 < crop_min_cover <= 1:
            raise ConfigError(f"data.crops.crop_min_cover must be in (0, 1], got {crop_min_cover}")
        self.frame_distance = frame_distance
        self.flip_p = flip_p
        self.jitter_p = jitter_p
        self.crop_min_cover = crop_min_cover

    def without_augmentation(self) -> AtlasCrops:
        """The "no internal crops" ablation: whole frames or whole alpha boxes, never flipped nor jittered."""
        return AtlasCrops(self.frame_distance, flip_p=0.0, jitter_p=0.0, crop_min_cover=1.0)


class AtlasSampler:
    """Draws one step's training sample of every edited layer, with the crops that ``crops`` describes.

    Args:
        video, alpha: the frames [T, 3, H, W] and the NLA alpha [T, 1, H, W].
        layers: the edited layers, rasterised.
        reference: the NLA reconstruction of the background, which its frame crops are cut from.
        crops: how the crops are drawn.
        min_side: the smallest side of a foreground crop (the generator's smallest input).
        entire_atlas_every: the whole atlas joins the steps ``k * N - 1`` (0: never).
        background_atlas_downscale: the whole background atlas is downscaled by this factor.
    """

    def __init__(
        self,
        video: torch.Tensor,
        alpha: torch.Tensor,
        layers: dict[str, AtlasLayer],
        reference: dict[str, torch.Tensor],
        crops: AtlasCrops,
        min_side: int = 129,
        entire_atlas_every: int = 75,
        background_atlas_downscale: int = 3,
    ) -> None:
        self.video, self.alpha, self.layers, self.reference = video, alpha, layers, reference
        self.crops = crops
        self.min_side = min_side
        self.entire_atlas_every = entire_atlas_every
        self.background_atlas_downscale = background_atlas_downscale
        self._whole: dict[str, torch.Tensor] = {}

    def whole_atlas(self, name: str) -> torch.Tensor:
        """The whole-atlas input: the foreground window, or the background atlas downscaled (antialiased)."""
        if name not in self._whole:
            atlas = self.layers[name].whole()
            factor = self.background_atlas_downscale
            if name == "background" and factor > 1:
                h, w = atlas.shape[-2:]
                atlas = F.interpolate(atlas, size=(h // factor, w // factor), mode="bilinear", antialias=True)
            self._whole[name] = atlas
        return self._whole[name]

    def layer_crop(self, name: str, frame: int, top: int, left: int, h: int, w: int) -> torch.Tensor:
        """[1, 3, h, w] of the layer's reference video: background reconstruction, or frame x alpha."""
        if name == "foreground":
            sl = (slice(frame, frame + 1), slice(None), slice(top, top + h), slice(left, left + w))
            return self.video[sl] * self.alpha[sl]
        return self.reference[name][frame : frame + 1, :, top : top + h, left : left + w]

    def _jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return color_jitter(x, g) if rand_chance(g, self.crops.jitter_p) else x

    def _window_size(self, g: torch.Generator, side: int) -> int:
        return rand_int(g, round(self.crops.crop_min_cover * side), side + 1)

    def __call__(self, step: int, seed: int) -> dict:
        g = torch.Generator().manual_seed(seed)
        d = self.crops.frame_distance
        t = rand_int(g, d, len(self.video) - d)
        flip = rand_chance(g, self.crops.flip_p)
        frames = [t - d, t, t + d]
        sample: dict = {"step": step, "frames": frames, "flip": flip}
        for name, layer in self.layers.items():
            sample[name] = self.layer_sample(name, layer, frames, flip, g)
            if self.entire_atlas_every > 0 and (step + 1) % self.entire_atlas_every == 0:
                sample[name]["atlas"] = self.whole_atlas(name)
        return sample

    def layer_sample(self, name: str, layer: AtlasLayer, frames: list[int], flip: bool, g: torch.Generator) -> dict:
        boxes = []
        if name == "foreground":
            for frame in frames:
                y0, x0, fh, fw = layer.boundaries[frame].tolist()
                h = max(self._window_size(g, fh), self.min_side)
                w = max(self._window_size(g, fw), self.min_side)
                top, left = y0 + rand_int(g, 0, fh - h + 1), x0 + rand_int(g, 0, fw - w + 1)
                boxes.append((top, left, h, w))
            crops = [self._jitter(self.layer_crop(name, f, *box), g) for f, box in zip(frames, boxes)]
        else:
            height, width = self.video.shape[-2:]
            h, w = self._window_size(g, height), self._window_size(g, width)
            top, left = rand_int(g, 0, height - h + 1), rand_int(g, 0, width - w + 1)
            boxes = [(top, left, h, w)] * 3
            crops = list(self._jitter(torch.cat([self.layer_crop(name, f, *boxes[0]) for f in frames]), g).split(1))
        uvs = [layer.uvs[f, top : top + h, left : left + w] for f, (top, left, h, w) in zip(frames, boxes)]
        alphas = [
            self.alpha[f : f + 1, :, top : top + h, left : left + w] for f, (top, left, h, w) in zip(frames, boxes)
        ]
        lo = torch.stack([uv.reshape(-1, 2).amin(dim=0) for uv in uvs]).amin(dim=0).floor().long()
        hi = torch.stack([uv.reshape(-1, 2).amax(dim=0) for uv in uvs]).amax(dim=0).ceil().long()
        (u0, v0), (u1, v1) = lo.tolist(), hi.tolist()
        atlas_crop = self._jitter(layer.atlas[..., v0:v1, u0:u1], g)
        span = (hi - lo).to(uvs[0].dtype)
        grids = [(2 * (uv - lo) / span - 1)[None] for uv in uvs]
        if flip:
            grids = [torch.stack([-grid[..., 0], grid[..., 1]], dim=-1).flip(-2) for grid in grids]
            crops, alphas, atlas_crop = [c.flip(-1) for c in crops], [a.flip(-1) for a in alphas], atlas_crop.flip(-1)
        return {
            "atlas_crop": atlas_crop.contiguous(),
            "grids": grids,
            "crops": [c.contiguous() for c in crops],
            "alphas": [a.contiguous() for a in alphas],
            "pass_frame": rand_int(g, 0, 3),
            "atlas_box": (v0, u0, v1 - v0, u1 - u0),
        }


class AtlasSteps(IterableDataset):
    """Yields the sample of every step from ``start`` to ``stop`` (exclusive); see :class:`AtlasSampler`."""

    def __init__(self, sampler: AtlasSampler, seed: int, start: int, stop: int) -> None:
        self.sampler, self.seed, self.start, self.stop = sampler, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def sample(self, step: int) -> dict:
        sample = self.sampler(step, step_seed(self.seed, step, DATA_STREAM))
        sample["seed"] = step_seed(self.seed, step, LOSS_STREAM)
        return sample

    def __iter__(self) -> Iterator[dict]:
        for step in range(self.start, self.stop):
            yield self.sample(step)


class AtlasDataModule(pl.LightningDataModule):
    """A video edited through its Neural Layered Atlas.

    Args:
        nla_checkpoint: the NLA checkpoint of the video.
        frames_dir: the folder of its frames (sorted jpg/png; the first ``num_frames`` are used).
        num_frames: the frame count NLA was trained on.
        crops: how each step's frame and atlas crops are drawn.
        edit_layers: the layers to edit: ``foreground``, ``background`` or both.
        height, width: frame size (NLA's training size; 432 x 768 for the reference's videos).
        grid_resolution: atlas pixels per atlas unit.
        chunk_size: points evaluated at once when running the NLA networks.
        steps, seed: the run's length and seed.
        mask_threshold, mask_border: the foreground box is alpha >= threshold, grown by ``mask_border`` px.
        entire_atlas_every: the whole atlas is an extra output on steps ``k * N - 1`` (0: never).
        background_atlas_downscale: the whole background atlas is downscaled by this factor for that output.
        min_side: the smallest side the generator accepts.
        full_input: the "no internal crops" ablation: whole frames (background) or whole alpha boxes
            (foreground), without flip or jitter.
    """

    def __init__(
        self,
        nla_checkpoint: str,
        frames_dir: str,
        num_frames: int,
        crops: AtlasCrops,
        edit_layers: Sequence[str] = ("foreground",),
        height: int = 432,
        width: int = 768,
        grid_resolution: int = 2000,
        chunk_size: int = 65536,
        steps: int = 3000,
        seed: int = 0,
        mask_threshold: float = 0.95,
        mask_border: int = 30,
        entire_atlas_every: int = 75,
        background_atlas_downscale: int = 3,
        min_side: int = 129,
        full_input: bool = False,
    ) -> None:
        super().__init__()
        edit_layers = check_edit_layers(edit_layers)
        distance = crops.frame_distance
        if not isinstance(num_frames, int) or num_frames < 2 * distance + 1:
            raise ConfigError(
                f"num_frames={num_frames} is not valid: a video needs at least 2 * data.crops.frame_distance + 1 = "
                f"{2 * distance + 1} frames"
            )
        if steps < 1:
            raise ConfigError(f"steps must be at least 1, got {steps}")
        if grid_resolution < 2 or chunk_size < 1:
            raise ConfigError("data.grid_resolution must be >= 2 and data.chunk_size >= 1")
        if min(height, width) < min_side:
            raise ConfigError(
                f"frames of {width}x{height} px are smaller than the generator's smallest input ({min_side} px): "
                "set data.width/data.height or use fewer generator scales"
            )
        self.nla_checkpoint, self.frames_dir, self.num_frames = nla_checkpoint, frames_dir, num_frames
        self.crops = crops.without_augmentation() if full_input else crops
        self.edit_layers = edit_layers
        self.height, self.width = height, width
        self.grid_resolution, self.chunk_size = grid_resolution, chunk_size
        self.steps, self.seed = steps, seed
        self.mask_threshold, self.mask_border = mask_threshold, mask_border
        self.entire_atlas_every, self.background_atlas_downscale = entire_atlas_every, background_atlas_downscale
        self.min_side, self.full_input = min_side, full_input
        self.video: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.video is not None:
            return
        video = load_frames(self.frames_dir, self.num_frames, (self.height, self.width))
        nla = load_nla(self.nla_checkpoint, self.num_frames, self.height, self.width)
        if torch.cuda.is_available():
            nla.cuda()
        log.info("evaluating the NLA maps of %d frames of %dx%d px", self.num_frames, self.width, self.height)
        maps = video_maps(nla, self.num_frames, self.height, self.width, self.chunk_size, progress=True)
        self.alpha = maps.alpha
        self.layers: dict[str, AtlasLayer] = {}
        reference: dict[str, torch.Tensor] = {}
        for name in self.edit_layers:
            uvs, (u0, v0), size = atlas_extent(maps.uvs[name], UV_SHIFT[name], self.grid_resolution)
            shift = UV_SHIFT[name]
            origin = (u0 / self.grid_resolution - shift, v0 / self.grid_resolution - shift)
            atlas = rasterize_atlas(nla, origin, size, self.grid_resolution, self.chunk_size)
            layer = AtlasLayer(name, uvs, atlas, (u0, v0), used_mask(uvs, size))
            if name == "foreground":
                layer.boundaries = mask_boundaries(maps.alpha, self.mask_border, self.mask_threshold, self.min_side)
                layer.window = foreground_window(layer.boundaries, uvs)
                _check_side(layer.window[2:], self.min_side, "foreground atlas window")
            else:
                reference[name] = reconstruct(nla, maps.uvs[name], self.chunk_size)
                _check_side(size, self.min_side * self.background_atlas_downscale, "background atlas")
            self.layers[name] = layer
        del maps
        self.video = video
        self.sampler = AtlasSampler(
            video,
            self.alpha,
            self.layers,
            reference,
            self.crops,
            min_side=self.min_side,
            entire_atlas_every=self.entire_atlas_every,
            background_atlas_downscale=self.background_atlas_downscale,
        )

    def train_dataloader(self) -> DataLoader:
        steps = AtlasSteps(self.sampler, self.seed, 0, self.steps)
        return StepLoader(steps, lambda: self.trainer.global_step if self.trainer is not None else 0)


def _check_side(size: Sequence[int], minimum: int, what: str) -> None:
    if min(size) < minimum:
        raise InputError(
            f"the {what} is only {size[1]}x{size[0]} px but needs sides of at least {minimum}: raise "
            "data.grid_resolution"
        )


@torch.no_grad()
def reconstruct(nla, uvs: torch.Tensor, chunk: int) -> torch.Tensor:
    """[T, 3, H, W] NLA reconstruction of a layer: the atlas colour at every pixel's UV."""
    device = next(nla.parameters()).device
    frames, height, width, _ = uvs.shape
    out = torch.empty(frames, height * width, 3)
    for t in range(frames):
        flat = uvs[t].reshape(-1, 2)
        for start in range(0, len(flat), chunk):
            out[t, start : start + chunk] = nla.atlas_rgb(flat[start : start + chunk].to(device)).cpu()
    return out.view(frames, height, width, 3).permute(0, 3, 1, 2).contiguous()
