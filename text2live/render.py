"""Apply a finished run's generator(s) without training (``t2l-render``).

An image run's generator edits its image or another one; a video run's generators re-render its video.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from text2live.build import instantiate, is_video
from text2live.errors import InputError
from text2live.generator import SkipGenerator, render_layers
from text2live.io import load_image, save_layers
from text2live.runs import load_run
from text2live.video_system import render_video, save_video_results


def generator_from_state(cfg: DictConfig, state: dict[str, torch.Tensor], prefix: str) -> SkipGenerator:
    """The generator of ``cfg`` with the weights under ``prefix`` in a checkpoint's ``state``."""
    generator = instantiate(cfg.generator)
    generator.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
    return generator


def load_generator(run_dir: Path, device: torch.device | str = "cpu") -> tuple[SkipGenerator, DictConfig]:
    """The trained generator of an image run and the run's config."""
    state, cfg = load_run(run_dir)
    if is_video(cfg):
        raise InputError(f"{run_dir} is a video run: it has one generator per layer (use render_video_run)")
    return generator_from_state(cfg, state, "generator.").to(device), cfg


@torch.no_grad()
def render_image(generator: SkipGenerator, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Layers of [1, 3, H, W] ``image`` (BatchNorm on batch statistics, as during training)."""
    generator.eval()
    device = next(generator.parameters()).device
    image = image.to(device)
    return render_layers(generator(image), image)


def _render_video(run_dir: Path) -> tuple[DictConfig, object, dict[str, dict], dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    state, cfg = load_run(run_dir)
    datamodule = instantiate(cfg.data)
    datamodule.setup("predict")
    generators = {
        layer: generator_from_state(cfg, state, f"generators.{layer}.").to(device) for layer in cfg.edit_layers
    }
    rendered, composed = render_video(generators, datamodule, cfg.video.align_corners, device)
    return cfg, datamodule, rendered, composed


def render_video_run(run_dir: Path, out_dir: str | Path | None = None) -> Path:
    """Re-render a video run: its layers' atlases, RGBA frames, alpha and greenscreen videos, the edited video."""
    cfg, datamodule, rendered, composed = _render_video(Path(run_dir))
    out = Path(out_dir) if out_dir else Path(run_dir) / "render"
    save_video_results(rendered, composed, datamodule.layers, out, cfg.video.fps)
    return out


def render_video_frames(run_dir: str | Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A video run's edited frames [T, 3, H, W] and each edited layer's visible RGBA frames [T, 4, H, W]."""
    _, _, _, composed = _render_video(Path(run_dir))
    return composed["full"], composed["visible"]


def image_run_layers(
    run_dir: str | Path, image_path: str | None = None, device: torch.device | str | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """An image run's layers of its own image (or of ``image_path``), as [1, C, H, W] tensors, and the image's path."""
    run_dir = Path(run_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generator, cfg = load_generator(run_dir, device)
    path = image_path or cfg.image_path
    image = load_image(path, cfg.data.resize_input)[None]
    if min(image.shape[-2:]) < generator.min_side:
        raise InputError(
            f"{path} is {image.shape[-1]}x{image.shape[-2]} pixels; the generator needs both sides >= "
            f"{generator.min_side}: use a larger image"
        )
    return {name: layer.cpu() for name, layer in render_image(generator, image).items()}, str(path)


def render(run_dir: str | Path, image_path: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Re-render a run into ``out_dir`` (default ``<run_dir>/render/<image name>``, or ``render/`` for a video)."""
    run_dir = Path(run_dir)
    _, cfg = load_run(run_dir)
    if is_video(cfg):
        if image_path:
            raise InputError(f"{run_dir} is a video run: it re-renders its own video; drop image_path=")
        return render_video_run(run_dir, out_dir)
    layers, path = image_run_layers(run_dir, image_path)
    out = Path(out_dir) if out_dir else run_dir / "render" / Path(path).stem
    save_layers(layers, out)
    return out
