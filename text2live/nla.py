"""Neural Layered Atlases (Kasten et al. 2021): the pretrained networks a video edit is mapped through.

An NLA checkpoint holds four coordinate MLPs ("IMLP"): two mappings from a video pixel (x, y, t) to a point of
the foreground or background atlas, one atlas network shared by both layers (atlas point -> RGB) and the
foreground opacity (x, y, t -> alpha). SPEC section 5 lists their sizes and the coordinate conventions.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from text2live.checkpoints import pickles_objects
from text2live.errors import InputError

log = logging.getLogger("text2live")

# Checkpoint key -> the network it holds.
CHECKPOINT_KEYS = {
    "model_F_mapping1_state_dict": "foreground mapping",
    "model_F_mapping2_state_dict": "background mapping",
    "F_atlas_state_dict": "atlas",
    "model_F_alpha_state_dict": "alpha",
}
LAYERS = ("foreground", "background")


class IMLP(nn.Module):
    """The NLA coordinate MLP: optional sin/cos positional encoding, ReLU layers, skip inputs, tanh output.

    The encoding of ``x`` ([N, D]) is, for every frequency ``2**j * pi``, ``sin`` of the D coordinates then
    their ``cos``; a skip layer receives the encoding concatenated after the hidden features. Parameter names
    (``hidden.<i>.weight``) match NLA checkpoints.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int = 256,
        num_layers: int = 8,
        positional_dim: int = 0,
        skip_layers: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        encoding_dim = 2 * input_dim * positional_dim if positional_dim else input_dim
        self.skip_layers = tuple(skip_layers)
        self.hidden = nn.ModuleList()
        for i in range(num_layers):
            in_dim = encoding_dim if i == 0 else hidden_dim + (encoding_dim if i in self.skip_layers else 0)
            self.hidden.append(nn.Linear(in_dim, output_dim if i == num_layers - 1 else hidden_dim))
        frequencies = torch.tensor([2.0**j * math.pi for j in range(positional_dim)])
        self.register_buffer("frequencies", frequencies, persistent=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], input_dim: int) -> IMLP:
        """The IMLP whose sizes a state dict holds (NLA's ``config.json`` may set other sizes than its defaults)."""
        count = sum(1 for key in state if key.startswith("hidden.") and key.endswith(".weight"))
        weights = [state.get(f"hidden.{i}.weight") for i in range(count)]
        if not count or any(not isinstance(w, torch.Tensor) or w.dim() != 2 for w in weights):
            raise ValueError("it holds no hidden.<i>.weight matrices")
        encoding_dim = weights[0].shape[1]
        hidden_dim = weights[0].shape[0] if count > 1 else 256
        positional_dim = 0 if encoding_dim == input_dim else encoding_dim // (2 * input_dim)
        skips = tuple(i for i in range(1, count) if weights[i].shape[1] == hidden_dim + encoding_dim)
        return cls(input_dim, weights[-1].shape[0], hidden_dim, count, positional_dim, skips)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not len(self.frequencies):
            return x
        proj = x[:, :, None] * self.frequencies  # [N, D, F]
        return torch.cat([proj.sin(), proj.cos()], dim=1).transpose(1, 2).reshape(len(x), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = self.encode(x)
        h = encoded
        for i, layer in enumerate(self.hidden):
            if i > 0:
                h = F.relu(h)
            if i in self.skip_layers:
                h = torch.cat([h, encoded], dim=1)
            h = layer(h)
        return torch.tanh(h)


class NeuralAtlases(nn.Module):
    """The four frozen NLA networks, with the coordinate conventions of SPEC section 5.

    Args:
        num_frames: the frame count NLA was trained on (``t`` is normalised by it).
        height, width: the frame size NLA was trained on (768 x 432 for the reference's videos).
    """

    def __init__(self, num_frames: int, height: int = 432, width: int = 768) -> None:
        super().__init__()
        self.num_frames, self.height, self.width = num_frames, height, width
        self.foreground_mapping = IMLP(3, 2, num_layers=6)
        self.background_mapping = IMLP(3, 2, num_layers=4)
        self.atlas = IMLP(2, 3, num_layers=8, positional_dim=10, skip_layers=(4, 7))
        self.alpha = IMLP(3, 1, num_layers=8, positional_dim=5)
        self.requires_grad_(False).eval()

    # checkpoint key -> (attribute, input dimension)
    NETWORKS = {
        "model_F_mapping1_state_dict": ("foreground_mapping", 3),
        "model_F_mapping2_state_dict": ("background_mapping", 3),
        "F_atlas_state_dict": ("atlas", 2),
        "model_F_alpha_state_dict": ("alpha", 3),
    }

    def networks(self) -> dict[str, IMLP]:
        return {
            "model_F_mapping1_state_dict": self.foreground_mapping,
            "model_F_mapping2_state_dict": self.background_mapping,
            "F_atlas_state_dict": self.atlas,
            "model_F_alpha_state_dict": self.alpha,
        }

    def checkpoint(self) -> dict[str, dict[str, torch.Tensor]]:
        """The NLA checkpoint format: one state dict per network."""
        return {key: net.state_dict() for key, net in self.networks().items()}

    def load_checkpoint(self, checkpoint: dict, source: str = "the checkpoint") -> None:
        missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
        if missing:
            names = ", ".join(f"{key} ({CHECKPOINT_KEYS[key]})" for key in missing)
            raise InputError(
                f"{source} is not a Neural Layered Atlas checkpoint: it lacks {names}; pass the `checkpoint` file "
                "NLA's training wrote (e.g. pretrained_nla_models/<video>/checkpoint)"
            )
        for key in self.NETWORKS:
            if not isinstance(checkpoint[key], dict):
                raise InputError(
                    f"{source}: {key} holds a {type(checkpoint[key]).__name__}, not the state dict of NLA's "
                    f"{CHECKPOINT_KEYS[key]} network; pass a checkpoint written by NLA's training"
                )
            attribute, input_dim = self.NETWORKS[key]
            try:  # the sizes the checkpoint was trained with (NLA's defaults, or those of its config.json)
                sized = IMLP.from_state_dict(checkpoint[key], input_dim)
                sized.load_state_dict(checkpoint[key])
            except (RuntimeError, ValueError) as exc:
                reason = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
                raise InputError(
                    f"{source}: {key} is not the state dict of an NLA {CHECKPOINT_KEYS[key]} network ({reason}); "
                    "pass a checkpoint written by NLA's training or t2l-atlas"
                ) from None
            setattr(self, attribute, sized.requires_grad_(False).eval())

    # coordinates -------------------------------------------------------------------------------------------

    def normalize(self, xyt: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates (x, y, t) -> network input: x / (max(W, H) / 2) - 1, likewise y, t / (T / 2) - 1."""
        half = max(self.width, self.height) / 2
        scale = torch.tensor([half, half, self.num_frames / 2], dtype=xyt.dtype, device=xyt.device)
        return xyt / scale - 1

    def frame_maps(self, xyt: torch.Tensor) -> dict[str, torch.Tensor]:
        """For pixels ``xyt`` ([N, 3]): ``foreground`` and ``background`` atlas UVs ([N, 2]) and ``alpha`` ([N, 1]).

        Background UVs lie in [-1, 0]^2, foreground UVs in [0, 1]^2; alpha is squashed into [0.001, 0.991].
        """
        x = self.normalize(xyt)
        alpha = 0.99 * (0.5 * (self.alpha(x) + 1)) + 0.001
        return {
            "foreground": 0.5 * self.foreground_mapping(x) + 0.5,
            "background": 0.5 * self.background_mapping(x) - 0.5,
            "alpha": alpha,
        }

    def atlas_rgb(self, uv: torch.Tensor) -> torch.Tensor:
        """Atlas colour in [0, 1] at atlas points ``uv`` ([N, 2])."""
        return 0.5 * (self.atlas(uv) + 1)


def load_nla(path: str | os.PathLike, num_frames: int, height: int = 432, width: int = 768) -> NeuralAtlases:
    """Load an NLA checkpoint on the CPU, checking its keys and shapes."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(
            f"nla_checkpoint={path} is a folder: pass the checkpoint file inside it (e.g. {path / 'checkpoint'})"
        )
    if not path.is_file():
        raise InputError(
            f"nla_checkpoint={path} does not exist: pass the NLA checkpoint of the video, or lay out the example "
            "data with scripts/prepare_video_data.py"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not pickles_objects(exc):
            raise InputError(
                f"cannot read {path} as a PyTorch checkpoint (it is not a PyTorch file, or it is corrupt): pass the "
                "NLA checkpoint file (pretrained_nla_models/<video>/checkpoint)"
            ) from None
        # NLA's own checkpoints hold only tensors, numbers and dicts; anything else would run code when unpickled
        raise InputError(
            f"{path} holds Python objects besides tensors, which are never unpickled: if you trust the file, "
            "convert it once with python -c \"import torch; c = torch.load('<file>', weights_only=False); "
            "torch.save({k: v for k, v in c.items() if k.endswith('state_dict')}, '<new file>')\" and pass the new file"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any other failure to read means the same thing to the user
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise InputError(
            f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: {reason}): pass the NLA "
            "checkpoint file (pretrained_nla_models/<video>/checkpoint)"
        ) from None
    if not isinstance(checkpoint, dict):
        raise InputError(f"{path} holds a {type(checkpoint).__name__}, not an NLA checkpoint dictionary")
    nla = NeuralAtlases(num_frames, height, width)
    nla.load_checkpoint(checkpoint, source=str(path))
    return nla


# evaluation in chunks ----------------------------------------------------------------------------------------


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def pixel_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[H * W, 2] pixel coordinates (x, y), row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


@dataclass
class VideoMaps:
    """Per-pixel NLA maps of a whole video: UVs per layer ([T, H, W, 2]) and alpha ([T, 1, H, W])."""

    uvs: dict[str, torch.Tensor]
    alpha: torch.Tensor


@torch.no_grad()
def video_maps(
    nla: NeuralAtlases, num_frames: int, height: int, width: int, chunk: int = 65536, progress: bool = False
) -> VideoMaps:
    """Evaluate the mappings and alpha at every pixel of every frame, ``chunk`` pixels at a time."""
    device = next(nla.parameters()).device
    grid = pixel_grid(height, width, device)
    uvs = {layer: torch.empty(num_frames, height * width, 2) for layer in LAYERS}
    alpha = torch.empty(num_frames, height * width, 1)
    frames = range(num_frames)
    if progress:
        from tqdm.auto import tqdm

        frames = tqdm(frames, desc="NLA frame maps", leave=False)
    for t in frames:
        for part in _chunks(len(grid), chunk):
            xy = grid[part]
            xyt = torch.cat([xy, torch.full_like(xy[:, :1], float(t))], dim=1)
            maps = nla.frame_maps(xyt)
            for layer in LAYERS:
                uvs[layer][t, part] = maps[layer].cpu()
            alpha[t, part] = maps["alpha"].cpu()
    return VideoMaps(
        uvs={layer: uv.view(num_frames, height, width, 2) for layer, uv in uvs.items()},
        alpha=alpha.view(num_frames, height, width, 1).permute(0, 3, 1, 2).contiguous(),
    )


@torch.no_grad()
def rasterize_atlas(
    nla: NeuralAtlases,
    origin: tuple[float, float],
    size: tuple[int, int],
    resolution: int,
    chunk: int = 65536,
) -> torch.Tensor:
    """The atlas image ([1, 3, h, w]) of an atlas window: pixel (r, c) shows atlas point ``origin + (c, r) / res``.

    ``origin`` is the (u, v) atlas point of pixel (0, 0); ``resolution`` pixels span one atlas unit. Only the
    window is evaluated, ``chunk`` points at a time.
    """
    device = next(nla.parameters()).device
    h, w = size
    grid = pixel_grid(h, w, device)
    out = torch.empty(h * w, 3)
    offset = torch.tensor(origin, dtype=torch.float32, device=device)
    for part in _chunks(len(grid), chunk):
        out[part] = nla.atlas_rgb(grid[part] / resolution + offset).cpu()
    return out.view(h, w, 3).permute(2, 0, 1)[None].contiguous()


# a synthetic NLA for tests and benchmarks --------------------------------------------------------------------


def _program(net: IMLP, encoding_rows: torch.Tensor, out_weights: torch.Tensor, out_bias: torch.Tensor) -> None:
    """Make ``net`` compute ``tanh(out_weights @ (encoding_rows @ enc(x)) + out_bias)`` exactly.

    The first ``k`` hidden units carry ``encoding_rows @ enc(x) + 4`` (positive for the encodings used here,
    so every ReLU passes it unchanged); all other weights are 0.
    """
    k = encoding_rows.shape[0]
    lift = 4.0
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        first = net.hidden[0]
        first.weight[:k, : encoding_rows.shape[1]] = encoding_rows
        first.bias[:k] = lift
        for layer in net.hidden[1:-1]:
            layer.weight[:k, :k] = torch.eye(k)
        last = net.hidden[-1]
        last.weight[:, :k] = out_weights
        last.bias[:] = out_bias - lift * out_weights.sum(dim=1)


def synthetic_nla(num_frames: int, height: int, width: int, seed: int = 0, noise: float = 1e-3) -> NeuralAtlases:
    """NLA networks of the real architecture whose maps are known: a panning background, a foreground that
    drifts, a blob of opacity in the middle of the frame and a colourful atlas, plus seeded weight noise.

    Foreground UV = 0.5 * tanh(0.8 x - 0.2 t, 0.8 y) + 0.5; background UV = 0.5 * tanh(0.6 x + 0.3 t, 0.6 y) - 0.5
    (x, y, t normalised as NLA does); alpha is high where cos(pi x) - sin(pi y) > 1.2.
    """
    nla = NeuralAtlases(num_frames, height, width)
    _program(nla.foreground_mapping, torch.tensor([[0.8, 0.0, -0.2], [0.0, 0.8, 0.0]]), torch.eye(2), torch.zeros(2))
    _program(nla.background_mapping, torch.tensor([[0.6, 0.0, 0.3], [0.0, 0.6, 0.0]]), torch.eye(2), torch.zeros(2))
    # alpha encoding (5 frequencies of x, y, t): index 3 is cos(pi x), index 1 is sin(pi y)
    rows = torch.zeros(1, 30)
    rows[0, 3], rows[0, 1] = 1.0, -1.0
    _program(nla.alpha, rows, torch.tensor([[6.0]]), torch.tensor([-7.2]))
    # atlas encoding (10 frequencies of u, v): indices 4..7 are sin 2pi u, sin 2pi v, cos 2pi u, cos 2pi v
    rows = torch.zeros(3, 40)
    rows[0, 4], rows[1, 7], rows[2, 5], rows[2, 6] = 1.0, 1.0, 1.0, 1.0
    _program(nla.atlas, rows, 1.5 * torch.eye(3), torch.zeros(3))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in nla.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return nla
