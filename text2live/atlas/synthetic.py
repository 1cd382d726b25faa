"""A synthetic layered video whose truth is known: for tests, and to see what NLA training can do in seconds.

A textured ellipse moves over a textured background that pans. Every frame is point-sampled from the two
textures, so the foreground mask and the optical flow in both directions are exact: a pixel of the ellipse moves
with it (``foreground_speed`` pixels per frame), a pixel of the background against the pan (``-background_speed``).
Flow is valid where it lands inside the next (previous) frame on the same layer, which is what NLA's
forward-backward check keeps of a real flow: occluded and disoccluded pixels are invalid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from text2live.atlas.inputs import VideoInputs
from text2live.io import save_png


def _texture(u: torch.Tensor, v: torch.Tensor, g: torch.Generator, base: tuple[float, float, float], period: float):
    """[3, *u.shape]: a smooth colourful pattern (two plane waves per channel) around ``base``."""
    channels = []
    for c in range(3):
        angle, phase = (torch.rand(2, generator=g) * 2 * math.pi).tolist()
        angle2, phase2 = (torch.rand(2, generator=g) * 2 * math.pi).tolist()
        wave = torch.sin(2 * math.pi * (u * math.cos(angle) + v * math.sin(angle)) / period + phase)
        wave2 = torch.sin(2 * math.pi * (u * math.cos(angle2) + v * math.sin(angle2)) / (1.7 * period) + phase2)
        channels.append(base[c] + 0.18 * wave + 0.12 * wave2)
    return torch.stack(channels).clamp(0, 1)


def synthetic_video(
    num_frames: int = 8,
    height: int = 48,
    width: int = 80,
    seed: int = 0,
    background_speed: tuple[float, float] = (1.0, 0.5),
    foreground_speed: tuple[float, float] = (2.5, -0.5),
    radii: tuple[float, float] = (0.3, 0.22),
) -> VideoInputs:
    """The video, its true masks and its true flow, as :func:`text2live.atlas.inputs.prepare_inputs` returns them.

    ``radii``: the ellipse's half width and half height as fractions of the frame height. It starts at a
    quarter of the width, at mid-height, and moves ``foreground_speed`` (x, y) pixels per frame; the background
    pans by ``background_speed``.
    """
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    rx, ry = radii[0] * height, radii[1] * height
    start = (0.25 * width, 0.5 * height)
    bg_seed, fg_seed = torch.randint(2**31, (2,), generator=g).tolist()

    def centre(t: float) -> tuple[float, float]:
        return start[0] + foreground_speed[0] * t, start[1] + foreground_speed[1] * t

    def inside(x: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
        cx, cy = centre(t)
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1

    frames, masks = [], []
    for t in range(num_frames):
        cx, cy = centre(t)
        background = _texture(
            xs + background_speed[0] * t,
            ys + background_speed[1] * t,
            torch.Generator().manual_seed(bg_seed),
            (0.45, 0.55, 0.5),
            23.0,
        )
        foreground = _texture(xs - cx, ys - cy, torch.Generator().manual_seed(fg_seed), (0.8, 0.35, 0.25), 9.0)
        mask = inside(xs, ys, t)
        frames.append(torch.where(mask, foreground, background))
        masks.append(mask[None])

    def flow(t: int, direction: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The flow of frame ``t`` to frame ``t + direction`` and where it is valid."""
        mask = masks[t][0]
        fg = [direction * v for v in foreground_speed]
        bg = [-direction * v for v in background_speed]
        dx = torch.where(mask, fg[0], bg[0])
        dy = torch.where(mask, fg[1], bg[1])
        x2, y2 = xs + dx, ys + dy
        in_frame = (x2 >= 0) & (x2 <= width - 1) & (y2 >= 0) & (y2 <= height - 1)
        valid = in_frame & (inside(x2, y2, t + direction) == mask)
        return torch.stack([dx, dy]), valid[None]

    forward = [flow(t, 1) for t in range(num_frames - 1)]
    backward = [flow(t + 1, -1) for t in range(num_frames - 1)]
    empty = torch.zeros(0, 2, height, width)
    return VideoInputs(
        frames=torch.stack(frames).float(),
        masks=torch.stack(masks).float(),
        flow_forward=torch.stack([f for f, _ in forward]).float() if forward else empty,
        flow_backward=torch.stack([f for f, _ in backward]).float() if backward else empty,
        flow_forward_valid=torch.stack([v for _, v in forward]) if forward else empty[:, :1].bool(),
        flow_backward_valid=torch.stack([v for _, v in backward]) if backward else empty[:, :1].bool(),
        names=[f"{t:05d}" for t in range(num_frames)],
    )


def write_video(video: VideoInputs, folder: str | Path) -> dict[str, Path]:
    """Write ``video`` as NLA's preprocessing lays out a video: ``frames/<name>.png``, ``masks/<name>.png`` (0 or
    255) and ``flow/<a>_<b>.npy`` ([H, W, 2] float32 (dx, dy) in pixels from frame a to frame b, both directions,
    named by the frame files: ``00000.png_00001.png.npy``).

    Returns the three folders by name.
    """
    folder = Path(folder)
    out = {name: folder / name for name in ("frames", "masks", "flow")}
    out["flow"].mkdir(parents=True, exist_ok=True)
    files = [f"{name}.png" for name in video.names]
    for t, name in enumerate(files):
        save_png(video.frames[t], out["frames"] / name)
        save_png(video.masks[t], out["masks"] / name)
    for t in range(len(files) - 1):
        a, b = files[t], files[t + 1]
        np.save(out["flow"] / f"{a}_{b}.npy", video.flow_forward[t].permute(1, 2, 0).numpy())
        np.save(out["flow"] / f"{b}_{a}.npy", video.flow_backward[t].permute(1, 2, 0).numpy())
    return out
