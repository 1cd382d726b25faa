"""Video editing on Neural Layered Atlases: one generator per edited layer, trained on atlas crops.

Each step the generator of a layer edits an atlas crop; its edit is grid-sampled into the three frame crops
whose UVs the crop covers, and a second pass edits one raw frame crop (SPEC section 5). The layers' losses are
summed, so the foreground and the background can be edited in one run.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from text2live.callbacks import layer_grid
from text2live.generator import GREENSCREEN_RGB, SkipGenerator, render_layers
from text2live.io import save_png, save_png_sequence, save_video
from text2live.losses import LossStack
from text2live.system import EditSystem, OptimizerFactory, eval_mode
from text2live.video_data import AtlasDataModule, AtlasLayer

SNAPSHOT_FRAMES = 4


def _greenscreen(like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(GREENSCREEN_RGB, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def sample_atlas(image: torch.Tensor, grid: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear samples of ``image`` ([1, C, h, w]) at ``grid`` ([1, H, W, 2] in [-1, 1]), clamped to [0, 1]."""
    return F.grid_sample(image, grid, mode="bilinear", align_corners=align_corners).clamp(0, 1)


def matte(layers: dict[str, torch.Tensor], alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Foreground renderings multiplied by the NLA alpha; the greenscreen shows green where alpha is low."""
    out = {key: value * alpha for key, value in layers.items()}
    out["edit_on_greenscreen"] = out["edit_on_greenscreen"] + (1 - alpha) * _greenscreen(alpha)
    return out


@torch.no_grad()
def render_layer(
    generator: SkipGenerator, layer: AtlasLayer, align_corners: bool = False, device: torch.device | str = "cpu"
) -> dict:
    """Edit a layer's whole atlas and map the edit into every frame.

    Returns ``atlas`` (the renderings of the atlas the generator saw, and ``input``) and ``rgba``
    ([T, 4, H, W]: the edit layer at every frame pixel, before any NLA alpha).
    """
    whole = layer.whole().to(device)
    with eval_mode(generator):
        rgba = generator(whole)
    atlas = {key: value.cpu() for key, value in render_layers(rgba, whole).items()}
    atlas["input"] = whole.cpu()
    if layer.window is not None:
        top, left, h, w = layer.window
        full_h, full_w = layer.size
        rgba = F.pad(rgba, (left, full_w - left - w, top, full_h - top - h), mode="replicate")
    frames = torch.empty(len(layer.uvs), 4, *layer.uvs.shape[1:3])
    for t in range(len(layer.uvs)):
        frames[t] = sample_atlas(rgba, layer.grid(t).to(device), align_corners)[0].cpu()
    return {"atlas": atlas, "rgba": frames}


def render_video(
    generators: dict[str, SkipGenerator], datamodule: AtlasDataModule, align_corners: bool = False, device="cpu"
) -> tuple[dict[str, dict], dict]:
    """Every edited layer rendered (:func:`render_layer`) and the video composed from them (:func:`compose_video`)."""
    rendered = {
        name: render_layer(generator, datamodule.layers[name], align_corners, device)
        for name, generator in generators.items()
    }
    composed = compose_video(datamodule.video, datamodule.alpha, {k: v["rgba"] for k, v in rendered.items()})
    return rendered, composed


def compose_video(video: torch.Tensor, alpha: torch.Tensor, rgba: dict[str, torch.Tensor]) -> dict:
    """The edited video and each layer's visible edit layer.

    ``full = alpha * fg + (1 - alpha) * bg`` where each layer is ``(1 - a) * video + a * edit`` if edited and
    the video otherwise. A layer's visible opacity is its edit alpha times the NLA alpha (foreground) or
    times ``1 - alpha`` (background), so an exported layer never shows through the object in front of it.
    """
    layers = {}
    for name in ("foreground", "background"):
        if name in rgba:
            edit, a = rgba[name][:, :3], rgba[name][:, 3:]
            layers[name] = (1 - a) * video + a * edit
        else:
            layers[name] = video
    full = alpha * layers["foreground"] + (1 - alpha) * layers["background"]
    visible = {}
    for name, frames in rgba.items():
        coverage = alpha if name == "foreground" else 1 - alpha
        visible[name] = torch.cat([frames[:, :3], frames[:, 3:] * coverage], dim=1)
    return {"full": full, "visible": visible}


def save_video_results(
    rendered: dict[str, dict], composed: dict, layers: dict[str, AtlasLayer], folder: Path, fps: float
) -> None:
    """Write per layer the RGBA atlas, the RGBA frames, alpha and greenscreen videos; and the edited video."""
    folder = Path(folder)
    for name, result in rendered.items():
        atlas, layer = result["atlas"], layers[name]
        used = _window(layer.used, layer.window)
        save_png(torch.cat([atlas["edit"][0], atlas["alpha"][0] * used[0]]), folder / name / "atlas_rgba.png")
        save_png(atlas["composite"][0], folder / name / "atlas_composite.png")
        rgba = composed["visible"][name]
        save_png_sequence(rgba, folder / name / "frames")
        edit, a = rgba[:, :3], rgba[:, 3:]
        save_video(a, folder / name / "alpha.mp4", fps)
        save_video(a * edit + (1 - a) * _greenscreen(edit), folder / name / "edit_on_greenscreen.mp4", fps)
    save_video(composed["full"], folder / "edited.mp4", fps)
    save_video(composed["full"], folder / "edited.gif", fps)


def _window(image: torch.Tensor, window: tuple[int, int, int, int] | None) -> torch.Tensor:
    if window is None:
        return image
    top, left, h, w = window
    return image[..., top : top + h, left : left + w]


class VideoEditSystem(EditSystem):
    """Trains one generator per edited NLA layer.

    Args:
        generators: ``{layer: generator}`` for the edited layers.
        losses: ``{layer: loss stack}`` (the stacks share one frozen CLIP).
        optimizer, lr_decay, min_lr: as for images (one optimiser over every generator).
        multiply_foreground_alpha: matte the foreground's frame crops by the NLA alpha (the reference does).
        mask_structure_input: also matte the input of the foreground's atlas-sampled crops, so the structure
            and direction terms compare like with like; ``false`` is the reference's bug 4.
        alpha_once: in the foreground's frame pass multiply the edit colour by the NLA alpha once; ``false``
            multiplies the whole RGBA output before compositing, so the colour is weighted by alpha twice
            (the reference's bug 5).
        align_corners: ``grid_sample`` convention (the reference uses ``false``).
        fps: frame rate of the written videos.
    """

    SAVED_PREFIX = "generators."

    def __init__(
        self,
        generators: dict[str, SkipGenerator],
        losses: dict[str, LossStack],
        optimizer: OptimizerFactory,
        lr_decay: float = 0.999,
        min_lr: float = 1e-5,
        multiply_foreground_alpha: bool = True,
        mask_structure_input: bool = False,
        alpha_once: bool = False,
        align_corners: bool = False,
        fps: float = 10.0,
    ) -> None:
        super().__init__(optimizer, lr_decay, min_lr)
        if set(generators) != set(losses):
            raise ValueError(f"one loss stack per generator: got {sorted(generators)} and {sorted(losses)}")
        self.generators = nn.ModuleDict(generators)
        self.losses = nn.ModuleDict(losses)
        self.multiply_foreground_alpha = multiply_foreground_alpha
        self.mask_structure_input = mask_structure_input
        self.alpha_once = alpha_once
        self.align_corners = align_corners
        self.fps = fps

    def forward(self, layer: str, image: torch.Tensor) -> torch.Tensor:
        """The RGBA edit of ``image`` ([N, 3, H, W]) by the generator of ``layer``."""
        return self.generators[layer](image)

    # training -------------------------------------------------------------------------------------------

    def guides(self) -> list:
        return list({id(stack.guide): stack.guide for stack in self.losses.values()}.values())

    def layer_outputs(self, layer: str, sample: dict) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        """The step's (input, renderings) pairs of one layer: three atlas-sampled frame crops, one raw frame
        crop, and the whole atlas on the steps that include it."""
        matted = layer == "foreground" and self.multiply_foreground_alpha
        atlas_crop = sample["atlas_crop"]
        rendered = render_layers(self(layer, atlas_crop), atlas_crop)
        inputs, outputs = [], []
        for grid, alpha in zip(sample["grids"], sample["alphas"]):
            image = sample_atlas(atlas_crop, grid, self.align_corners)
            out = {key: sample_atlas(value, grid, self.align_corners) for key, value in rendered.items()}
            if matted:
                out = matte(out, alpha)
                if self.mask_structure_input:
                    image = image * alpha
            inputs.append(image)
            outputs.append(out)

        k = int(sample["pass_frame"])
        crop = sample["crops"][k]
        rgba = self(layer, crop)
        if not matted:
            out = render_layers(rgba, crop)
        elif self.alpha_once:
            alpha = sample["alphas"][k]
            edit, a = rgba[:, :3], rgba[:, 3:]
            out = matte(render_layers(rgba), alpha)
            out["composite"] = (1 - a) * crop + a * edit * alpha
        else:
            out = render_layers(rgba * sample["alphas"][k], crop)
        inputs.append(crop)
        outputs.append(out)

        if "atlas" in sample:
            inputs.append(sample["atlas"])
            outputs.append(render_layers(self(layer, sample["atlas"]), sample["atlas"]))
        return inputs, outputs

    def step_terms(
        self, batch: dict, step: int, g: torch.Generator
    ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Every layer's terms as ``<layer>/<term>``; ``total`` sums the layers' totals."""
        terms: dict[str, torch.Tensor] = {}
        extra: dict[str, float] = {}
        total = 0.0
        for layer, losses in self.losses.items():
            inputs, outputs = self.layer_outputs(layer, batch[layer])
            layer_terms = losses(inputs, outputs, step, g)
            terms.update({f"{layer}/{name}": value for name, value in layer_terms.items()})
            extra[f"train/bootstrap_weight/{layer}"] = losses.weights(step).get("bootstrap", 0.0)
            total = total + layer_terms["total"]
        terms["total"] = total
        return terms, extra

    # results ----------------------------------------------------------------------------------------------

    def render(self, datamodule: AtlasDataModule) -> tuple[dict[str, dict], dict]:
        return render_video(dict(self.generators), datamodule, self.align_corners, self.device)

    def snapshot(self, datamodule: AtlasDataModule, folder: Path | None = None) -> dict[str, torch.Tensor]:
        """A few edited frames and each layer's RGBA atlas (written to ``folder``); the frames in a row and each
        layer's row of atlas tiles."""
        rendered, composed = self.render(datamodule)
        count = len(datamodule.video)
        picks = sorted({round(i * (count - 1) / max(1, SNAPSHOT_FRAMES - 1)) for i in range(SNAPSHOT_FRAMES)})
        frames = composed["full"][picks]
        images = {"video/frames": make_grid(frames.clamp(0, 1), nrow=len(picks), padding=4)}
        for name, result in rendered.items():
            images[f"video/{name}_atlas/input|edit|alpha|greenscreen|composite"] = layer_grid(
                result["atlas"]["input"], result["atlas"]
            )
        if folder is not None:
            for t, frame in zip(picks, frames):
                save_png(frame, Path(folder) / f"frame_{t:05d}.png")
            for name, result in rendered.items():
                atlas = result["atlas"]
                save_png(torch.cat([atlas["edit"][0], atlas["alpha"][0]]), Path(folder) / f"{name}_atlas_rgba.png")
        return images

    def save_results(self, datamodule: AtlasDataModule, folder: Path) -> None:
        rendered, composed = self.render(datamodule)
        save_video_results(rendered, composed, datamodule.layers, folder, self.fps)
