"""Training a Neural Layered Atlas: the DataModule of random video pixels and the LightningModule around the four
NLA networks (SPEC section 8).

Every step draws ``samples`` pixels ``(x, y, t)`` uniformly, with replacement, from all the pixels of the video, as
NLA does, from a generator seeded by (seed, step); all the data of a pixel is one row of a table, so a step's batch
is one indexing operation. Before the first step each mapping network is pre-trained to the identity-like map
``uv = uv_mapping_scale * (x, y)`` (NLA's ``pre_train_mapping``). The whole video is evaluated for the snapshots
and the results: its reconstruction and PSNR, the two atlases, the flow error and the alpha.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from torchvision.utils import make_grid

from text2live.atlas.objective import NLAObjective
from text2live.data import DATA_STREAM, step_seed
from text2live.errors import ConfigError, InputError, NonFiniteLossError
from text2live.io import save_png, save_video
from text2live.loader import StepLoader
from text2live.nla import IMLP, NeuralAtlases, rasterize_atlas, video_maps
from text2live.video_data import UV_SHIFT, atlas_extent, reconstruct

log = logging.getLogger("text2live")

PRETRAIN_STREAM = 2  # the random stream of the mapping pre-training (0 and 1 are the steps' data and losses)


def build_atlases(
    foreground_mapping: IMLP,
    background_mapping: IMLP,
    atlas: IMLP,
    alpha: IMLP,
    num_frames: int,
    height: int,
    width: int,
) -> NeuralAtlases:
    """Trainable NLA networks of any size, with the coordinate conventions of :class:`NeuralAtlases`."""
    nla = NeuralAtlases(num_frames, height, width)
    nla.foreground_mapping, nla.background_mapping, nla.atlas, nla.alpha = (
        foreground_mapping,
        background_mapping,
        atlas,
        alpha,
    )
    return nla.requires_grad_(True).train()


# the data --------------------------------------------------------------------------------------------------

# The columns of a pixel's row in the table (names and widths), in order.
COLUMNS = {
    "rgb": 3,
    "rgb_dx": 3,
    "rgb_dy": 3,
    "mask": 1,
    "flow_forward": 2,
    "forward_valid": 1,
    "flow_backward": 2,
    "backward_valid": 1,
}


def pixel_table(inputs) -> torch.Tensor:
    """[T * H * W, 16]: every pixel's row (``COLUMNS``), frame-major then row-major, as NLA indexes its video.

    ``rgb_dx``/``rgb_dy`` are the frame's differences to the next pixel right / down (0 at the last column /
    row, as NLA's); the flow of the last frame (forward) and of the first (backward) is invalid and 0, as is every
    flow that failed the forward-backward check.
    """
    frames = inputs.frames.float()
    t, _, h, w = frames.shape
    dx = torch.zeros_like(frames)
    dx[..., :-1] = frames[..., 1:] - frames[..., :-1]
    dy = torch.zeros_like(frames)
    dy[..., :-1, :] = frames[..., 1:, :] - frames[..., :-1, :]
    forward = torch.zeros(t, 2, h, w)
    forward_valid = torch.zeros(t, 1, h, w)
    backward = torch.zeros(t, 2, h, w)
    backward_valid = torch.zeros(t, 1, h, w)
    if t > 1:
        forward_valid[:-1] = inputs.flow_forward_valid.float()
        forward[:-1] = inputs.flow_forward.float() * forward_valid[:-1]
        backward_valid[1:] = inputs.flow_backward_valid.float()
        backward[1:] = inputs.flow_backward.float() * backward_valid[1:]
    columns = [frames, dx, dy, inputs.masks.float(), forward, forward_valid, backward, backward_valid]
    return torch.cat(columns, dim=1).permute(0, 2, 3, 1).reshape(t * h * w, -1).contiguous()


class PixelSteps(IterableDataset):
    """The batch of every step from ``start`` to ``stop`` (exclusive): ``samples`` random pixels of the video."""

    def __init__(self, table: torch.Tensor, size: tuple[int, int, int], samples: int, seed: int, stop: int) -> None:
        self.table, self.size, self.samples, self.seed = table, size, samples, seed
        self.start, self.stop = 0, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def sample(self, step: int) -> dict:
        g = torch.Generator().manual_seed(step_seed(self.seed, step, DATA_STREAM))
        _, h, w = self.size
        index = torch.randint(len(self.table), (self.samples,), generator=g)
        xyt = torch.stack([index % w, index // w % h, index // (h * w)], dim=1).float()
        rows = self.table[index].split(list(COLUMNS.values()), dim=1)
        batch = {"step": step, "xyt": xyt, **dict(zip(COLUMNS, rows))}
        for key in ("forward_valid", "backward_valid"):
            batch[key] = batch[key][:, 0] > 0.5
        return batch

    def __iter__(self) -> Iterator[dict]:
        for step in range(self.start, self.stop):
            yield self.sample(step)


class VideoPixels(pl.LightningDataModule):
    """A video's frames, masks and flows (:func:`text2live.atlas.inputs.prepare_inputs`), served as random pixels.

    Args:
        video, frames_dir, num_frames, width, height, masks_dir, flow_dir, mask_object, mask_weights,
            flow_weights: passed to ``prepare_inputs`` (see conf/atlas.yaml).
        cache_dir: where the computed masks and flows are kept between runs.
        samples: pixels per step (NLA's ``samples_batch``).
        steps, seed: the run's; every step's pixels are a function of (seed, step).
        inputs: the prepared inputs, when the caller has them (then nothing is read from disk).
    """

    def __init__(
        self,
        video: str | None = None,
        frames_dir: str | None = None,
        num_frames: int | None = None,
        width: int = 768,
        height: int = 432,
        masks_dir: str | None = None,
        flow_dir: str | None = None,
        mask_object: str = "anything",
        mask_weights: str | None = None,
        flow_weights: str | None = None,
        cache_dir: str | None = None,
        samples: int = 10000,
        steps: int = 1,
        seed: int = 0,
        inputs=None,
    ) -> None:
        super().__init__()
        if not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"data.samples={samples!r} is not valid: use an integer >= 1")
        self.video, self.frames_dir, self.num_frames = video, frames_dir, num_frames
        self.width, self.height = width, height
        self.masks_dir, self.flow_dir, self.mask_object = masks_dir, flow_dir, mask_object
        self.mask_weights, self.flow_weights, self.cache_dir = mask_weights, flow_weights, cache_dir
        self.samples, self.steps, self.seed = samples, steps, seed
        self.inputs = inputs
        self.table: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        if self.inputs is None:
            from text2live.atlas.inputs import prepare_inputs

            self.inputs = prepare_inputs(
                video=self.video,
                frames_dir=self.frames_dir,
                num_frames=self.num_frames,
                width=self.width,
                height=self.height,
                masks_dir=self.masks_dir,
                flow_dir=self.flow_dir,
                mask_object=self.mask_object,
                mask_weights=self.mask_weights,
                flow_weights=self.flow_weights,
                cache_dir=Path(self.cache_dir),
                device="cuda" if torch.cuda.is_available() else "cpu",
            )
        frames = self.inputs.frames
        if frames.ndim != 4 or frames.shape[1] != 3 or len(frames) < 2:
            raise InputError(f"an NLA needs at least two frames of RGB video; got frames of shape {list(frames.shape)}")
        self.table = pixel_table(self.inputs)

    @property
    def size(self) -> tuple[int, int, int]:
        """(T, H, W) of the video."""
        t, _, h, w = self.inputs.frames.shape
        return t, h, w

    def train_dataloader(self) -> DataLoader:
        steps = PixelSteps(self.table, self.size, self.samples, self.seed, self.steps)
        return StepLoader(steps, lambda: self.trainer.global_step if self.trainer is not None else 0)


# the system ------------------------------------------------------------------------------------------------


@dataclass
class Pretraining:
    """NLA's pre-training of each mapping to ``uv = uv_mapping_scale * (x, y)``: ``iterations`` passes over the
    frames, one Adam step (``lr``) per frame on ``samples`` random pixels of it (0 iterations: none)."""

    iterations: int = 100
    samples: int = 10000
    lr: float = 1e-4


@dataclass
class VideoEvaluation:
    """The NLA at every pixel of the video (on the CPU)."""

    reconstruction: torch.Tensor  # [T, 3, H, W]
    alpha: torch.Tensor  # [T, 1, H, W]
    uvs: dict[str, torch.Tensor]  # atlas points per layer, [T, H, W, 2]
    psnr: list[float]  # per frame, dB
    flow_error: dict[str, float]  # mean alpha-weighted atlas distance (pixels) of valid forward-flow matches


class AtlasSystem(pl.LightningModule):
    """The four NLA networks trained on random video pixels with the NLA objective.

    Args:
        nla: the networks (see :func:`build_atlases`).
        objective: the loss.
        optimizer: a factory ``params -> Optimizer`` (NLA: Adam, lr 1e-4); it gets NLA's four parameter groups
            (foreground mapping, background mapping, alpha, atlas), so its state is interchangeable with NLA's.
        pretraining: the mapping pre-training before the first step.
        seed: seeds the pre-training's pixels.
        chunk_size: points per network call when the whole video is evaluated.
        atlas_resolution: atlas pixels per atlas unit in the atlas pictures (None: about one per frame pixel).
        fps: frame rate of the written videos.
    """

    def __init__(
        self,
        nla: NeuralAtlases,
        objective: NLAObjective,
        optimizer,
        pretraining: Pretraining,
        seed: int = 0,
        chunk_size: int = 65536,
        atlas_resolution: int | None = None,
        fps: float = 10.0,
    ) -> None:
        super().__init__()
        self.nla = nla
        self.objective = objective
        self.optimizer_factory = optimizer
        self.pretraining = pretraining
        self.seed = seed
        self.chunk_size = chunk_size
        self.atlas_resolution = atlas_resolution or round(max(nla.width, nla.height) / objective.uv_mapping_scale)
        self.fps = fps

    def parameter_groups(self) -> list[nn.Module]:
        """NLA's order of the optimiser's parameter groups."""
        return [self.nla.foreground_mapping, self.nla.background_mapping, self.nla.alpha, self.nla.atlas]

    # training ---------------------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        if self.global_step > 0 or self.pretraining.iterations <= 0:
            return  # resumed: the checkpoint holds the pre-trained (and trained) mappings
        mappings = {"foreground": self.nla.foreground_mapping, "background": self.nla.background_mapping}
        with torch.enable_grad():
            for index, (name, mapping) in enumerate(mappings.items()):
                loss = self.pretrain_mapping(mapping, seed=step_seed(self.seed, index, PRETRAIN_STREAM))
                log.info("pre-trained the %s mapping: distance to the scaled identity %.4f", name, loss)

    def pretrain_mapping(self, mapping: nn.Module, seed: int) -> float:
        """Fit ``mapping`` to ``uv = uv_mapping_scale * (x, y)`` in normalised coordinates; returns the last loss."""
        config, nla = self.pretraining, self.nla
        g = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(mapping.parameters(), lr=config.lr)
        loss = torch.zeros(())
        for _ in range(config.iterations):
            for t in range(nla.num_frames):
                ys = torch.randint(nla.height, (config.samples,), generator=g)
                xs = torch.randint(nla.width, (config.samples,), generator=g)
                xyt = torch.stack([xs, ys, torch.full_like(xs, t)], dim=1).float().to(self.device)
                x = nla.normalize(xyt)
                loss = (x[:, :2] * self.objective.uv_mapping_scale - mapping(x)).norm(dim=1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return loss.item()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = int(batch["step"])
        if step != self.global_step:
            raise RuntimeError(f"the sample of step {step} reached training step {self.global_step}")
        terms, out = self.objective(self.nla, batch, step)
        mse = (out["rgb"].detach() - batch["rgb"]).square().mean()
        extra = {"alpha_mean": out["alpha"].detach().mean(), "psnr": -10 * torch.log10(mse)}
        values = torch.stack([v.detach().float() for v in (*terms.values(), *extra.values())]).tolist()  # one sync
        names = [*(f"train/loss/{name}" for name in terms), *(f"train/{name}" for name in extra)]
        metrics = dict(zip(names, values))
        bad = [name for name, value in zip(terms, values) if not math.isfinite(value)]
        if bad:
            raise NonFiniteLossError(step + 1, [b for b in bad if b != "total"] or bad)
        self.log("loss", metrics["train/loss/total"], prog_bar=True, logger=False, on_step=True)
        self.log("psnr", metrics["train/psnr"], prog_bar=True, logger=False, on_step=True)
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step + 1)
        return terms["total"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory([{"params": list(net.parameters())} for net in self.parameter_groups()])

    # results ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, inputs) -> VideoEvaluation:
        """Reconstruct every frame, and measure PSNR and the flow error, from the networks as they stand."""
        nla = self.nla
        frames = inputs.frames.float()
        t, _, h, w = frames.shape
        maps = video_maps(nla, t, h, w, self.chunk_size)
        layers = {name: reconstruct(nla, uv, self.chunk_size) for name, uv in maps.uvs.items()}
        reconstruction = maps.alpha * layers["foreground"] + (1 - maps.alpha) * layers["background"]
        mse = (reconstruction - frames).square().mean(dim=(1, 2, 3))
        psnr = [float(-10 * torch.log10(m)) if m > 0 else math.inf for m in mse]
        return VideoEvaluation(reconstruction, maps.alpha, maps.uvs, psnr, self.flow_error(inputs, maps))

    def flow_error(self, inputs, maps) -> dict[str, float]:
        """Mean distance in pixels (NLA's flow-loss units) between the atlas points of a pixel and of the pixel its
        forward flow leads to, over the valid flow, weighted by alpha (foreground) and 1 - alpha (background);
        ``total`` is their sum, NLA's per-pixel flow loss of both layers."""
        nla = self.nla
        device = next(nla.parameters()).device
        t, _, h, w = inputs.frames.shape
        errors = {"foreground": 0.0, "background": 0.0}
        count = 0
        per_pixel = 2 * self.objective.pixels_per_unit(nla)  # atlas points are half the mappings' raw outputs
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
        )
        for frame in range(t - 1):
            valid = inputs.flow_forward_valid[frame, 0].bool()
            if not valid.any():
                continue
            flow = inputs.flow_forward[frame].float()
            here = torch.stack([xs[valid], ys[valid], torch.full_like(xs[valid], frame)], dim=1)
            there = here + torch.stack([flow[0][valid], flow[1][valid], torch.ones_like(xs[valid])], dim=1)
            alpha = maps.alpha[frame, 0][valid]
            uv_here = {name: maps.uvs[name][frame][valid] for name in errors}
            for start in range(0, len(there), self.chunk_size):
                part = slice(start, start + self.chunk_size)
                matched = nla.frame_maps(there[part].to(device))
                for name in errors:
                    distance = (matched[name].cpu() - uv_here[name][part]).norm(dim=1) * per_pixel
                    weight = alpha[part] if name == "foreground" else 1 - alpha[part]
                    errors[name] += float((distance * weight).sum())
            count += int(valid.sum())
        out = {name: value / max(count, 1) for name, value in errors.items()}
        out["total"] = out["foreground"] + out["background"]
        return out

    @torch.no_grad()
    def atlas_images(self, evaluation: VideoEvaluation) -> dict[str, torch.Tensor]:
        """Both atlases as RGBA ([4, h, w]) over the window the video uses.

        The foreground window covers the pixels whose alpha exceeds 0.5 and its opacity is the largest alpha
        mapped to each atlas pixel; the background window covers every pixel and is opaque where any maps (NLA's
        evaluation shows them so).
        """
        images = {}
        alpha = evaluation.alpha[:, 0]
        for name in ("foreground", "background"):
            uvs = evaluation.uvs[name]
            values = alpha if name == "foreground" else torch.ones_like(alpha)
            shown = uvs[alpha > 0.5] if name == "foreground" and (alpha > 0.5).any() else uvs
            _, (u0, v0), size = atlas_extent(shown, UV_SHIFT[name], self.atlas_resolution)
            origin = (u0 / self.atlas_resolution - UV_SHIFT[name], v0 / self.atlas_resolution - UV_SHIFT[name])
            rgb = rasterize_atlas(self.nla, origin, size, self.atlas_resolution, self.chunk_size)[0]
            px = (uvs.reshape(-1, 2) + UV_SHIFT[name]) * self.atlas_resolution - torch.tensor([u0, v0])
            images[name] = torch.cat([rgb, atlas_opacity(px, values.reshape(-1), size)[None]])
        return images

    def snapshot(self, datamodule: VideoPixels, folder: Path | None = None) -> dict[str, torch.Tensor]:
        """Evaluate the whole video: PSNR per frame to the loggers, and the atlases and a few reconstructed frames
        (written to ``folder``, if given) as images by TensorBoard tag."""
        evaluation = self.evaluate(datamodule.inputs)
        atlases = self.atlas_images(evaluation)
        step = self.trainer.global_step if self._trainer is not None else 0
        scalars = {
            "eval/psnr": sum(evaluation.psnr) / len(evaluation.psnr),
            "eval/flow_error": evaluation.flow_error["total"],
        }
        scalars.update({f"eval/psnr_frame/{t:05d}": value for t, value in enumerate(evaluation.psnr)})
        for logger in self.loggers:
            logger.log_metrics(scalars, step=step)
        frames = datamodule.inputs.frames.float()
        picks = sorted({0, len(frames) // 2, len(frames) - 1})
        tiles = []
        for t in picks:
            tiles += [frames[t], evaluation.reconstruction[t], evaluation.alpha[t].expand(3, -1, -1)]
        images = {
            "eval/input|reconstruction|alpha": make_grid(
                torch.stack(tiles).clamp(0, 1), nrow=3, padding=2, pad_value=1.0
            ),
            **{f"eval/{name}_atlas": on_white(image) for name, image in atlases.items()},
        }
        if folder is not None:
            save_png(images["eval/input|reconstruction|alpha"], Path(folder) / "reconstruction.png")
            for name, image in atlases.items():
                save_png(image, Path(folder) / f"{name}_atlas.png")
        return images

    def save_results(self, datamodule: VideoPixels, folder: Path) -> dict:
        """Write the reconstruction, the alpha video and both atlases into ``folder``; returns the metrics."""
        inputs = datamodule.inputs
        evaluation = self.evaluate(inputs)
        save_video(evaluation.reconstruction, folder / "reconstruction.mp4", fps=self.fps)
        save_video(evaluation.alpha, folder / "alpha.mp4", fps=self.fps)
        for name, image in self.atlas_images(evaluation).items():
            save_png(image, folder / f"{name}_atlas.png")
        masks = inputs.masks.float() > 0.5
        matte = evaluation.alpha > 0.5
        union = (masks | matte).sum()
        t, _, h, w = inputs.frames.shape
        return {
            "psnr": sum(evaluation.psnr) / len(evaluation.psnr),
            "psnr_per_frame": evaluation.psnr,
            "alpha_mean": float(evaluation.alpha.mean()),
            "alpha_mask_iou": float((masks & matte).sum() / union) if union > 0 else 1.0,
            "flow_error": evaluation.flow_error["total"],
            "flow_error_foreground": evaluation.flow_error["foreground"],
            "flow_error_background": evaluation.flow_error["background"],
            "num_frames": t,
            "width": w,
            "height": h,
        }


def atlas_opacity(px: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[h, w]: the largest of ``values`` at the four atlas pixels around each point ``px`` ([N, 2] atlas pixels
    (u, v) relative to the window); points outside the window are left out."""
    h, w = size
    out = torch.zeros(h * w)
    for u in (px[:, 0].floor(), px[:, 0].ceil()):
        for v in (px[:, 1].floor(), px[:, 1].ceil()):
            inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
            index = (v[inside] * w + u[inside]).long()
            out.scatter_reduce_(0, index, values[inside].float(), reduce="amax")
    return out.view(h, w)


def on_white(rgba: torch.Tensor) -> torch.Tensor:
    """An RGBA image ([4, h, w]) over white, for viewers without transparency."""
    return rgba[:3] * rgba[3:] + (1 - rgba[3:])
