"""Video editing end to end (tiny config, CPU, the synthetic video): run folders, compositing, the step's
(input, output) pairs, determinism, resumption, bootstrapping and the command line.

The runs that several tests read (a foreground, a background and a two-layer run) are trained once per
session, in a folder the pytest-xdist workers share, under a file lock: a second worker that needs a run waits
for it and then finds it finished (``train`` skips a run whose folder holds ``DONE``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    VIDEO_FRAMES,
    VIDEO_TINY,
    compose_config,
    one_torch_thread,
    video_overrides,
    write_synthetic_video,
)
from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from text2live import runs
from text2live.build import build_system
from text2live.clip_guide import TEMPLATES
from text2live.errors import ConfigError, InputError
from text2live.generator import GREENSCREEN_RGB, SkipGenerator, render_layers
from text2live.io import to_uint8
from text2live.training import train
from text2live.video_data import AtlasCrops, AtlasDataModule
from text2live.video_system import VideoEditSystem, compose_video, render_layer, sample_atlas

LAYERS = ("foreground", "background")
TERMS = ("structure", "composition", "direction", "sparsity", "sparsity_l1", "sparsity_l0", "screen", "total")
SNAPSHOT_FRAMES = [0, 1, 3, 4]  # 4 frames spread over 5
GREEN = torch.tensor(GREENSCREEN_RGB).view(1, 3, 1, 1)
PROMPTS = ["comp_text=golden swan", "src_text=swan", "screen_text=golden"]
CHEAP = ["loss.n_aug=1"]  # one CLIP view per image: the runs here test the plumbing, not the edit

# The shared runs: name -> overrides.
RUNS = {
    "foreground": ["steps=4"],
    "background": ["edit_layers=[background]", "video.fps=5"],
    "both": [
        "edit_layers=[foreground,background]",
        "foreground.comp_text=golden swan",
        "background.comp_text=frozen lake",
        "background.src_text=lake",
        "background.screen_text=ice",
    ],
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "shared_video_runs"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def video(shared) -> tuple[Path, Path]:
    """(NLA checkpoint, frames folder) of the synthetic video of conftest, written once for all workers."""
    folder = shared / "video"
    with FileLock(shared / "video.lock"):
        if not (folder / "READY").exists():
            write_synthetic_video(folder)
            (folder / "READY").write_text("")
    return folder / "nla" / "checkpoint", folder / "frames"


def video_cfg(video: tuple[Path, Path], run_dir: Path, *extra: str):
    """A tiny video run config on ``video`` (conftest's ``tiny_video_cfg`` on the shared video, one CLIP view)."""
    return compose_config(video_overrides(video, run_dir) + VIDEO_TINY + CHEAP + list(extra))


def shared_run(shared: Path, video, name: str) -> Path:
    # session fixtures are set up before the module's _one_thread: train under the same settings as the tests
    with FileLock(shared / f"{name}.lock"), one_torch_thread():
        return train(video_cfg(video, shared / name, *RUNS[name]))


RUN_FIXTURES = {"foreground": "fg_run", "background": "bg_run", "both": "both_run"}


@pytest.fixture(scope="session")
def fg_run(shared, video) -> Path:
    """Foreground only, 4 steps (snapshots and checkpoints at steps 2 and 4)."""
    return shared_run(shared, video, "foreground")


@pytest.fixture(scope="session")
def bg_run(shared, video) -> Path:
    """Background only, 3 steps, videos at 5 fps."""
    return shared_run(shared, video, "background")


@pytest.fixture(scope="session")
def both_run(shared, video) -> Path:
    """Both layers with their own prompts, 3 steps."""
    return shared_run(shared, video, "both")


# reading runs back ------------------------------------------------------------------------------------------


def run_config(run_dir: Path):
    return OmegaConf.load(run_dir / runs.CONFIG_FILE)


def state_dict(run_dir: Path, name: str = runs.FINAL_CHECKPOINT) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / runs.CHECKPOINT_DIR / name, map_location="cpu", weights_only=True)["state_dict"]


def trained_generators(run_dir: Path) -> dict[str, SkipGenerator]:
    cfg, state = run_config(run_dir), state_dict(run_dir)
    generators = {}
    for layer in cfg.edit_layers:
        prefix = f"generators.{layer}."
        generator = instantiate(cfg.generator)
        generator.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
        generators[layer] = generator
    return generators


def run_datamodule(run_dir: Path) -> AtlasDataModule:
    datamodule = instantiate(run_config(run_dir).data)
    datamodule.setup()
    return datamodule


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def output_pngs(run_dir: Path) -> dict[str, bytes]:
    """Every PNG a finished video run writes outside steps/, by path."""
    cfg = run_config(run_dir)
    names = []
    for layer in cfg.edit_layers:
        names += [f"{layer}/atlas_rgba.png", f"{layer}/atlas_composite.png"]
        names += [f"{layer}/frames/{t:05d}.png" for t in range(VIDEO_FRAMES)]
    return {name: (run_dir / name).read_bytes() for name in names}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


# the run folders --------------------------------------------------------------------------------------------


def check_layer_outputs(run_dir: Path, layer: str, fps: float) -> None:
    folder = run_dir / layer
    rgba = Image.open(folder / "atlas_rgba.png")
    composite = Image.open(folder / "atlas_composite.png")
    assert rgba.mode == "RGBA" and composite.mode == "RGB" and rgba.size == composite.size
    frames = sorted((folder / "frames").iterdir())
    assert [p.name for p in frames] == [f"{t:05d}.png" for t in range(VIDEO_FRAMES)]
    for path in frames:
        image = Image.open(path)
        assert (image.mode, image.size) == ("RGBA", (64, 36))
    for name in ("alpha.mp4", "edit_on_greenscreen.mp4"):
        assert iio.imread(folder / name, index=None).shape == (VIDEO_FRAMES, 36, 64, 3)
        assert iio.immeta(folder / name)["fps"] == fps


def check_edited_video(run_dir: Path, fps: float) -> None:
    assert iio.imread(run_dir / "edited.mp4", index=None).shape == (VIDEO_FRAMES, 36, 64, 3)
    assert iio.immeta(run_dir / "edited.mp4")["fps"] == fps
    gif = iio.imread(run_dir / "edited.gif", index=None)
    assert gif.shape[:3] == (VIDEO_FRAMES, 36, 64)
    assert iio.immeta(run_dir / "edited.gif")["duration"] == 1000 / fps


@pytest.mark.parametrize(
    ("name", "layers", "fps"),
    [("foreground", ["foreground"], 10), ("background", ["background"], 5), ("both", list(LAYERS), 10)],
)
def test_run_folder_holds_every_output(request, name, layers, fps):
    """Per layer the atlas PNGs, RGBA frames, alpha and greenscreen videos; the edited MP4 and GIF (5 frames
    of 64 x 36 at video.fps); snapshots every 2 steps; checkpoints; DONE last."""
    run_dir = request.getfixturevalue(RUN_FIXTURES[name])
    steps = 4 if name == "foreground" else 3
    assert (run_dir / runs.DONE_FILE).read_text() == f"{steps} steps\n"
    assert {p.name for p in run_dir.iterdir()} == {
        ".lock",
        "config.yaml",
        "git_revision.txt",
        "tb",
        "steps",
        "checkpoints",
        "DONE",
        "edited.mp4",
        "edited.gif",
        "metrics.json",
        "overrides.yaml",
        *layers,
    }
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert {f"{layer}/clip_score" for layer in layers} <= set(metrics) and "frame_consistency" in metrics
    for layer in layers:
        check_layer_outputs(run_dir, layer, fps)
    check_edited_video(run_dir, fps)
    snapshot_steps = ["2", "4"] if steps == 4 else ["2"]
    assert sorted(p.name for p in (run_dir / "steps").iterdir()) == snapshot_steps
    for step in snapshot_steps:
        expected = {f"frame_{t:05d}.png" for t in SNAPSHOT_FRAMES} | {f"{layer}_atlas_rgba.png" for layer in layers}
        assert {p.name for p in (run_dir / "steps" / step).iterdir()} == expected
    kept = ["previous.ckpt"] if steps == 4 else []  # checkpoints at steps 2 and 4: the first is kept
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["final.ckpt", "last.ckpt", *kept]
    assert not list(run_dir.rglob("*.part*"))
    done = (run_dir / runs.DONE_FILE).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= done for p in run_dir.rglob("*") if p.is_file())  # DONE comes last


def test_checkpoints_hold_one_generator_per_layer(both_run):
    """Checkpoints hold the two generators and nothing else (no CLIP, no NLA)."""
    expected = {f"generators.{layer}.{k}" for layer in LAYERS for k in SkipGenerator(16, 16, 4, 4).state_dict()}
    for name, step in ((runs.LAST_CHECKPOINT, 2), (runs.FINAL_CHECKPOINT, 3)):
        checkpoint = torch.load(both_run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] == step
        assert set(checkpoint["state_dict"]) == expected  # no CLIP, no NLA
    final = state_dict(both_run)
    fg = {k.split(".", 2)[2]: v for k, v in final.items() if k.startswith("generators.foreground.")}
    bg = {k.split(".", 2)[2]: v for k, v in final.items() if k.startswith("generators.background.")}
    assert any(not torch.equal(fg[k], bg[k]) for k in fg if k.endswith("weight"))  # two generators, two edits


def test_config_keeps_the_per_layer_prompts(both_run):
    """config.yaml holds each layer's own prompts (set as foreground.* / background.* overrides)."""
    cfg = run_config(both_run)
    assert cfg.foreground.comp_text == "golden swan" and cfg.foreground.src_text == "swan"
    assert (cfg.background.comp_text, cfg.background.src_text, cfg.background.screen_text) == (
        "frozen lake",
        "lake",
        "ice",
    )
    assert cfg.data.edit_layers == list(LAYERS)


def test_per_layer_prompts_reach_each_layers_loss(video, tmp_path):
    """Each layer's loss stack embeds that layer's prompts; both share one CLIP."""
    system, _ = build_system(video_cfg(video, tmp_path / "run", *RUNS["both"]))
    guide = system.losses["foreground"].guide
    assert guide is system.losses["background"].guide  # one CLIP
    expected = {"foreground": ("golden swan", "swan"), "background": ("frozen lake", "lake")}
    for layer, (comp, src) in expected.items():
        torch.testing.assert_close(system.losses[layer].comp_e, guide.text_embeddings(comp, TEMPLATES))
        torch.testing.assert_close(system.losses[layer].src_e, guide.text_embeddings(src, TEMPLATES))


@pytest.mark.parametrize(
    ("name", "layers", "steps"),
    [("foreground", ["foreground"], 4), ("background", ["background"], 3), ("both", list(LAYERS), 3)],
)
def test_tensorboard_logs_every_term_of_every_layer(request, name, layers, steps):
    """train/loss/<layer>/<term> at every step (1 .. steps: the steps done); each layer's total is its weighted
    sum (video loss weights 3, 1, 1, 0.1 (0.01 L1 + 0.005 L0), 1) and train/loss/total is the sum over layers."""
    run_dir = request.getfixturevalue(RUN_FIXTURES[name])
    logged = scalars(run_dir)
    for layer in layers:
        for term in TERMS:
            assert sorted(logged[f"train/loss/{layer}/{term}"]) == list(range(1, steps + 1)), (layer, term)
        assert f"train/loss/{layer}/bootstrap" not in logged
        assert set(logged[f"train/bootstrap_weight/{layer}"].values()) == {0.0}
    others = [other for other in LAYERS if other not in layers]
    assert not [tag for tag in logged if any(other in tag.split("/") for other in others)]
    for n in range(1, steps + 1):
        totals = 0.0
        for layer in layers:
            v = {term: logged[f"train/loss/{layer}/{term}"][n] for term in TERMS}
            assert v["sparsity"] == pytest.approx(0.01 * v["sparsity_l1"] + 0.005 * v["sparsity_l0"], rel=1e-5)
            total = 3 * v["structure"] + v["composition"] + v["direction"] + 0.1 * v["sparsity"] + v["screen"]
            assert v["total"] == pytest.approx(total, rel=1e-5)
            totals += v["total"]
        assert logged["train/loss/total"][n] == pytest.approx(totals, rel=1e-5)
        assert logged["train/lr"][n] == pytest.approx(0.0025 * 0.999 ** (n - 1), rel=1e-6)  # the rate step n used


# compositing ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def both_rendered(both_run):
    """The two-layer run re-rendered here: its data, and each layer's atlas renderings and RGBA frames."""
    datamodule = run_datamodule(both_run)
    rendered = {name: render_layer(g, datamodule.layers[name]) for name, g in trained_generators(both_run).items()}
    return datamodule, rendered


def test_two_edited_layers_composite_by_hand(both_rendered):
    """full = alpha * fg + (1 - alpha) * bg, each layer (1 - a) V + a E if edited, else the video V."""
    datamodule, rendered = both_rendered
    video, alpha = datamodule.video, datamodule.alpha
    rgba_f, rgba_b = rendered["foreground"]["rgba"], rendered["background"]["rgba"]
    assert rgba_f.shape == rgba_b.shape == (VIDEO_FRAMES, 4, 36, 64)
    e_f, a_f, e_b, a_b = rgba_f[:, :3], rgba_f[:, 3:], rgba_b[:, :3], rgba_b[:, 3:]
    fg, bg = (1 - a_f) * video + a_f * e_f, (1 - a_b) * video + a_b * e_b

    both = compose_video(video, alpha, {"foreground": rgba_f, "background": rgba_b})
    torch.testing.assert_close(both["full"], alpha * fg + (1 - alpha) * bg, rtol=0, atol=1e-6)
    torch.testing.assert_close(both["visible"]["foreground"], torch.cat([e_f, a_f * alpha], 1), rtol=0, atol=0)
    torch.testing.assert_close(both["visible"]["background"], torch.cat([e_b, a_b * (1 - alpha)], 1), rtol=0, atol=0)

    only_fg = compose_video(video, alpha, {"foreground": rgba_f})
    torch.testing.assert_close(only_fg["full"], alpha * fg + (1 - alpha) * video, rtol=0, atol=1e-6)
    assert set(only_fg["visible"]) == {"foreground"}
    only_bg = compose_video(video, alpha, {"background": rgba_b})
    torch.testing.assert_close(only_bg["full"], alpha * video + (1 - alpha) * bg, rtol=0, atol=1e-6)
    torch.testing.assert_close(compose_video(video, alpha, {})["full"], video, rtol=0, atol=1e-6)


def test_exported_frames_are_the_visible_layers(both_run, both_rendered):
    """frames/*.png hold the edit colour and its visible opacity: a_f * alpha (fg), a_b * (1 - alpha) (bg)."""
    datamodule, rendered = both_rendered
    composed = compose_video(datamodule.video, datamodule.alpha, {k: v["rgba"] for k, v in rendered.items()})
    for layer in LAYERS:
        for t in range(VIDEO_FRAMES):
            saved = png(both_run / layer / "frames" / f"{t:05d}.png")
            assert np.array_equal(saved, to_uint8(composed["visible"][layer][t])), (layer, t)
    # the alpha video is the visible opacity (H.264: a few levels off)
    a_f = composed["visible"]["foreground"][:, 3].numpy() * 255
    decoded = iio.imread(both_run / "foreground" / "alpha.mp4", index=None)[..., 0].astype(float)
    assert np.abs(decoded - a_f).mean() < 3
    # the GIF is the composite (palette-quantised)
    gif = iio.imread(both_run / "edited.gif", index=None)[..., :3].astype(float)
    full = composed["full"].permute(0, 2, 3, 1).numpy() * 255
    assert np.abs(gif - full).mean() < 6


def test_exported_atlas_is_the_edit_with_its_alpha_masked_to_used_pixels(both_run, both_rendered):
    """atlas_rgba.png: the edit of the atlas the generator saw (the foreground window, the whole background
    atlas), its alpha zeroed where no video pixel maps; atlas_composite.png: that edit over the atlas."""
    datamodule, rendered = both_rendered
    for layer in LAYERS:
        atlas, info = rendered[layer]["atlas"], datamodule.layers[layer]
        used = info.used
        if info.window is not None:
            top, left, h, w = info.window
            used = used[..., top : top + h, left : left + w]
            assert torch.equal(atlas["input"], info.whole())
        saved = png(both_run / layer / "atlas_rgba.png")
        assert np.array_equal(saved[..., :3], to_uint8(atlas["edit"][0]))
        assert np.array_equal(saved[..., 3], to_uint8(atlas["alpha"][0] * used[0]))
        assert np.array_equal(png(both_run / layer / "atlas_composite.png"), to_uint8(atlas["composite"][0]))
    assert png(both_run / "foreground" / "atlas_rgba.png").shape[:2] == tuple(
        datamodule.layers["foreground"].window[2:]
    )
    assert png(both_run / "background" / "atlas_rgba.png").shape[:2] == datamodule.layers["background"].size


def test_last_snapshot_is_the_final_result(fg_run):
    """steps/4 (the last step) shows the final generator's composite frames."""
    datamodule = run_datamodule(fg_run)
    generator = trained_generators(fg_run)["foreground"]
    rgba = render_layer(generator, datamodule.layers["foreground"])["rgba"]
    full = compose_video(datamodule.video, datamodule.alpha, {"foreground": rgba})["full"]
    for t in SNAPSHOT_FRAMES:
        assert np.array_equal(png(fg_run / "steps" / "4" / f"frame_{t:05d}.png"), to_uint8(full[t]))


# the step's (input, output) pairs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def atlas_data(video) -> AtlasDataModule:
    datamodule = AtlasDataModule(
        str(video[0]),
        str(video[1]),
        VIDEO_FRAMES,
        AtlasCrops(jitter_p=0.0),
        LAYERS,
        height=36,
        width=64,
        grid_resolution=200,
        mask_border=4,
        min_side=17,
        chunk_size=4096,
        steps=10,
        entire_atlas_every=3,
    )
    datamodule.setup()
    return datamodule


def fixed_rgba(x: torch.Tensor) -> torch.Tensor:
    """A stand-in generator output: a fixed random RGBA image per input size."""
    h, w = x.shape[-2:]
    return torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(1000 * h + w))


def stub_system(monkeypatch, **options) -> VideoEditSystem:
    """A VideoEditSystem whose generators return ``fixed_rgba`` (no losses: layer_outputs only)."""
    generators = {layer: SkipGenerator(4, 4, 0, 4) for layer in LAYERS}
    for generator in generators.values():
        monkeypatch.setattr(generator, "forward", fixed_rgba)
    return VideoEditSystem(generators, {layer: nn.Identity() for layer in LAYERS}, optimizer=None, **options)


def frame_pass(system: VideoEditSystem, sample: dict) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    inputs, outputs = system.layer_outputs("foreground", sample)
    k = sample["pass_frame"]
    return inputs[3], outputs[3], sample["crops"][k], sample["alphas"][k]


@pytest.mark.parametrize("seed", [0, 1])
def test_foreground_frame_pass_weights_colour_by_alpha_twice_as_the_reference(atlas_data, monkeypatch, seed):
    """alpha_once=false (bug 5): the RGBA output is multiplied by the NLA alpha before compositing."""
    sample = atlas_data.sampler(0, seed)["foreground"]
    system = stub_system(monkeypatch, alpha_once=False)
    image, out, crop, al = frame_pass(system, sample)
    assert torch.equal(image, crop)
    rgba = fixed_rgba(crop)
    rgb, a = rgba[:, :3], rgba[:, 3:]
    torch.testing.assert_close(out["composite"], (1 - a * al) * crop + a * al * rgb * al, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["alpha"], a * al, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["edit"], rgb * al, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_foreground_frame_pass_weights_colour_by_alpha_once(atlas_data, monkeypatch, seed):
    """alpha_once=true: composite = (1 - a) crop + a rgb alpha; the renderings are matted by alpha."""
    sample = atlas_data.sampler(0, seed)["foreground"]
    system = stub_system(monkeypatch, alpha_once=True)
    _, out, crop, al = frame_pass(system, sample)
    rgba = fixed_rgba(crop)
    rgb, a = rgba[:, :3], rgba[:, 3:]
    torch.testing.assert_close(out["composite"], (1 - a) * crop + a * rgb * al, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["alpha"], a * al, rtol=0, atol=1e-6)
    screen = (a * rgb + (1 - a) * GREEN) * al + (1 - al) * GREEN
    torch.testing.assert_close(out["edit_on_greenscreen"], screen, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mask_structure_input", [False, True])
def test_atlas_sampled_pairs(atlas_data, monkeypatch, mask_structure_input):
    """The three atlas-sampled pairs: renderings of the atlas crop sampled by each grid and matted by alpha
    (greenscreen shows green where alpha is low); inputs are matted too only with mask_structure_input."""
    sample = atlas_data.sampler(0, 3)["foreground"]
    system = stub_system(monkeypatch, mask_structure_input=mask_structure_input)
    inputs, outputs = system.layer_outputs("foreground", sample)
    atlas_crop = sample["atlas_crop"]
    rendered = render_layers(fixed_rgba(atlas_crop), atlas_crop)
    for i, (grid, al) in enumerate(zip(sample["grids"], sample["alphas"])):
        sampled = sample_atlas(atlas_crop, grid)
        torch.testing.assert_close(inputs[i], sampled * al if mask_structure_input else sampled, rtol=0, atol=1e-6)
        for key in ("edit", "alpha", "composite"):
            torch.testing.assert_close(outputs[i][key], sample_atlas(rendered[key], grid) * al, rtol=0, atol=1e-6)
        screen = sample_atlas(rendered["edit_on_greenscreen"], grid) * al + (1 - al) * GREEN
        torch.testing.assert_close(outputs[i]["edit_on_greenscreen"], screen, rtol=0, atol=1e-6)


def test_background_pairs_are_not_matted(atlas_data, monkeypatch):
    """Background renderings are only grid-sampled (no NLA alpha), whatever mask_structure_input says."""
    sample = atlas_data.sampler(0, 4)["background"]
    system = stub_system(monkeypatch, mask_structure_input=True)
    inputs, outputs = system.layer_outputs("background", sample)
    atlas_crop = sample["atlas_crop"]
    rendered = render_layers(fixed_rgba(atlas_crop), atlas_crop)
    for i, grid in enumerate(sample["grids"]):
        torch.testing.assert_close(inputs[i], sample_atlas(atlas_crop, grid), rtol=0, atol=0)
        torch.testing.assert_close(outputs[i]["composite"], sample_atlas(rendered["composite"], grid), rtol=0, atol=0)
    crop = sample["crops"][sample["pass_frame"]]
    rgba = fixed_rgba(crop)
    torch.testing.assert_close(outputs[3]["composite"], (1 - rgba[:, 3:]) * crop + rgba[:, 3:] * rgba[:, :3])


def test_four_pairs_or_five_with_the_whole_atlas(atlas_data, monkeypatch):
    """3 atlas-sampled crops + 1 frame crop; the whole atlas is a 5th pair on steps 2, 5 (every 3rd)."""
    system = stub_system(monkeypatch)
    for step in range(6):
        sample = atlas_data.sampler(step, step)
        for layer in LAYERS:
            inputs, outputs = system.layer_outputs(layer, sample[layer])
            whole = (step + 1) % 3 == 0
            assert len(inputs) == len(outputs) == (5 if whole else 4), (step, layer)
            if whole:
                atlas = sample[layer]["atlas"]
                assert torch.equal(inputs[4], atlas)
                expected = render_layers(fixed_rgba(atlas), atlas)
                assert all(torch.equal(outputs[4][key], expected[key]) for key in expected)


# determinism and resumption ---------------------------------------------------------------------------------


def test_same_seed_same_run(fg_run, video, tmp_path):
    """A second run of the same config: identical outputs, snapshots, generator weights and logged losses."""
    again = train(video_cfg(video, tmp_path / "again", *RUNS["foreground"]))
    assert (again / "edited.gif").read_bytes() == (fg_run / "edited.gif").read_bytes()
    assert output_pngs(again) == output_pngs(fg_run)
    assert folder_bytes(again / "steps") == folder_bytes(fg_run / "steps")
    final, final_again = state_dict(fg_run), state_dict(again)
    assert final.keys() == final_again.keys()
    assert all(torch.equal(final[k], final_again[k]) for k in final)
    assert scalars(again)["train/loss/total"] == scalars(fg_run)["train/loss/total"]


class Interrupted(Exception):
    """Stands in for a crash or a killed job."""


class InterruptAt(pl.Callback):
    """Raise before optimisation step ``step`` (after the checkpoint of the steps before it was written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Interrupted(f"stopped before step {self.step}")


class StepRecorder(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


def test_an_interrupted_run_resumes_to_the_same_result(fg_run, video, tmp_path):
    """Stopped before step 2 of 4 (checkpoint at step 2), then run again: the same bytes as an uninterrupted run."""
    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        train(video_cfg(video, resumed, *RUNS["foreground"]), callbacks=[InterruptAt(2)])
    assert not (resumed / runs.DONE_FILE).exists() and not (resumed / "edited.gif").exists()
    last = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert sorted(p.name for p in (resumed / "steps").iterdir()) == ["2"]
    step2_written = mtimes(resumed / "steps" / "2")

    recorder = StepRecorder()
    assert train(video_cfg(video, resumed, *RUNS["foreground"]), callbacks=[recorder]) == resumed
    assert recorder.steps == [2, 3]  # continued from the step-2 checkpoint
    assert mtimes(resumed / "steps" / "2") == step2_written
    assert (resumed / runs.DONE_FILE).read_text() == "4 steps\n"
    assert (resumed / "edited.gif").read_bytes() == (fg_run / "edited.gif").read_bytes()
    assert output_pngs(resumed) == output_pngs(fg_run)
    assert folder_bytes(resumed / "steps") == folder_bytes(fg_run / "steps")
    final, final_resumed = state_dict(fg_run), state_dict(resumed)
    assert all(torch.equal(final[k], final_resumed[k]) for k in final)
    assert scalars(resumed)["train/loss/total"] == scalars(fg_run)["train/loss/total"]


def test_a_finished_run_is_skipped(fg_run, video):
    """A folder with DONE is left alone, even when a presentation key (log_images_freq) changed."""
    before = mtimes(fg_run)
    recorder = StepRecorder()
    assert train(video_cfg(video, fg_run, *RUNS["foreground"], "log_images_freq=1"), callbacks=[recorder]) == fg_run
    assert recorder.steps == []
    assert mtimes(fg_run) == before


@pytest.mark.parametrize(
    ("override", "named"),
    [("seed=1", "seed: 0 -> 1"), ("edit_layers=[background]", "edit_layers: ['foreground'] -> ['background']")],
)
def test_a_different_config_is_refused(fg_run, video, override, named):
    """Another config aimed at a finished run's folder is refused, naming what differs; nothing is touched."""
    before = mtimes(fg_run)
    with pytest.raises(ConfigError) as exc:
        train(video_cfg(video, fg_run, *RUNS["foreground"], override))
    assert str(exc.value).startswith(f"{fg_run} already holds a different run")
    assert named in str(exc.value)
    assert mtimes(fg_run) == before


# bootstrapping ----------------------------------------------------------------------------------------------


def test_bootstrap_of_one_layer(video, tmp_path):
    """Only the layer with a bootstrap_text bootstraps (constant weight 10 for the first 2 steps)."""
    cfg = video_cfg(
        video,
        tmp_path / "run",
        "edit_layers=[foreground,background]",
        "foreground.bootstrap_text=swan",
        "loss.bootstrap_steps=2",
        "steps=2",
        "log_images_freq=0",
    )
    run_dir = train(cfg)
    assert (run_dir / runs.DONE_FILE).exists()
    logged = scalars(run_dir)
    assert sorted(logged["train/loss/foreground/bootstrap"]) == [1, 2]
    assert "train/loss/background/bootstrap" not in logged
    assert logged["train/bootstrap_weight/foreground"] == {1: 10.0, 2: 10.0}
    assert logged["train/bootstrap_weight/background"] == {1: 0.0, 2: 0.0}
    for n in (1, 2):
        v = {term: logged[f"train/loss/foreground/{term}"][n] for term in (*TERMS, "bootstrap")}
        total = 3 * v["structure"] + v["composition"] + v["direction"] + 0.1 * v["sparsity"] + v["screen"]
        assert v["total"] == pytest.approx(total + 10 * v["bootstrap"], rel=1e-5)


def test_bootstrap_without_bootstrap_text_is_a_config_error(video, tmp_path):
    """Bootstrapping on, but no layer has a bootstrap_text: refused before anything is written."""
    with pytest.raises(ConfigError) as exc:
        train(video_cfg(video, tmp_path / "run", "loss.bootstrap_steps=2"))
    assert str(exc.value).startswith("bootstrapping is on (loss.bootstrap_steps > 0) but no edited layer has")
    assert not (tmp_path / "run").exists()


# re-rendering -----------------------------------------------------------------------------------------------


def test_render_video_run_reproduces_the_run_outputs(both_run, bg_run, tmp_path):
    """``t2l-render run_dir=<video run>`` writes the run's own PNGs and GIF again, byte for byte."""
    from text2live.render import render_video_run

    out = render_video_run(both_run, out_dir=tmp_path / "again")
    assert out == tmp_path / "again"
    for name, data in output_pngs(both_run).items():
        assert (out / name).read_bytes() == data, name
    assert (out / "edited.gif").read_bytes() == (both_run / "edited.gif").read_bytes()

    copy = tmp_path / "copy"
    shutil.copytree(bg_run, copy)
    default = render_video_run(copy)
    assert default == copy / "render"
    for name, data in output_pngs(bg_run).items():
        assert (default / name).read_bytes() == data, name
    assert iio.immeta(default / "edited.mp4")["fps"] == 5  # the run's video.fps


def test_render_refuses_an_image_for_a_video_run(both_run):
    """A video run re-renders its own video: image_path= is refused."""
    from text2live.render import render

    with pytest.raises(InputError, match="is a video run"):
        render(both_run, image_path="cat.png")


# the command line -------------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "text2live.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_not_started(run_dir: Path) -> None:
    """Hydra may create the folder (and its train.log); the run itself wrote nothing."""
    assert not (run_dir / runs.CONFIG_FILE).exists()
    assert not (run_dir / runs.DONE_FILE).exists()
    assert not (run_dir / runs.CHECKPOINT_DIR).exists()


def cli_args(video, run_dir: Path, *extra: str) -> list[str]:
    return [*video_overrides(video, run_dir), *VIDEO_TINY, *CHEAP, *extra]


def test_cli_video_run(video, tmp_path):
    """``python -m text2live.cli.train experiment=video ...`` trains and writes the outputs, nothing elsewhere."""
    run_dir = tmp_path / "run"
    result = run_cli(*cli_args(video, run_dir, "steps=1", "log_images_freq=0"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (run_dir / runs.DONE_FILE).read_text() == "1 steps\n"
    check_layer_outputs(run_dir, "foreground", 10)
    check_edited_video(run_dir, 10)
    assert {p.name for p in tmp_path.iterdir()} == {"run"}  # nothing written outside run_dir


def test_cli_missing_nla_checkpoint_file(video, tmp_path):
    """An input error found deep in setup (after CLIP is built) still ends in one ``error:`` line, exit 2."""
    missing = tmp_path / "pretrained_nla_models" / "checkpoint"
    args = cli_args(video, tmp_path / "run", f"nla_checkpoint={missing}")
    line = error_line(run_cli(*args, cwd=tmp_path))
    assert line.startswith(f"error: nla_checkpoint={missing} does not exist")
    assert_not_started(tmp_path / "run")


@pytest.mark.slow
def test_cli_video_without_nla_checkpoint(video, tmp_path):
    """A missing mandatory value reached through data.nla_checkpoint is named by its top-level key."""
    args = [a for a in cli_args(video, tmp_path / "run") if not a.startswith("nla_checkpoint=")]
    line = error_line(run_cli(*args, cwd=tmp_path))
    assert line.startswith("error: nla_checkpoint is not set")
    assert_not_started(tmp_path / "run")


@pytest.mark.slow
def test_cli_empty_prompt_of_a_layer(video, tmp_path):
    """An empty per-layer prompt is named with its layer key."""
    line = error_line(run_cli(*cli_args(video, tmp_path / "run", "foreground.comp_text=''"), cwd=tmp_path))
    assert line.startswith("error: foreground.comp_text is empty")
    assert_not_started(tmp_path / "run")


@pytest.mark.slow
def test_cli_unknown_layer(video, tmp_path):
    """A layer that does not exist is refused before anything is built."""
    line = error_line(run_cli(*cli_args(video, tmp_path / "run", "edit_layers=[middle]"), cwd=tmp_path))
    assert line.startswith("error: edit_layers=['middle'] is not valid")
    assert_not_started(tmp_path / "run")


# The same mistakes in process (the command line turns any such error into one line, as the tests above show).


def test_video_without_nla_checkpoint_is_a_config_error(video, tmp_path):
    """nla_checkpoint is mandatory for experiment=video (data.nla_checkpoint interpolates it)."""
    _, frames = video
    base = ["experiment=video", f"frames_dir={frames}", f"num_frames={VIDEO_FRAMES}", *PROMPTS]
    cfg = compose_config([*base, f"run_dir={tmp_path / 'run'}", *VIDEO_TINY])
    with pytest.raises(ConfigError) as exc:
        train(cfg)
    assert str(exc.value).startswith("nla_checkpoint is not set: pass nla_checkpoint=... on the command line")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("override", "start"),
    [
        ("foreground.comp_text=''", 'foreground.comp_text is empty: pass comp_text="<text>"'),
        ("background.src_text='  '", "background.src_text is empty"),
        ("edit_layers=[middle]", "edit_layers=['middle'] is not valid"),
        ("edit_layers=[]", "edit_layers=[] is not valid"),
    ],
)
def test_bad_layer_settings_are_config_errors(video, tmp_path, override, start):
    """Empty per-layer prompts and unknown or missing layers: one sentence, nothing written."""
    extra = ["edit_layers=[foreground,background]"] if override.startswith("background.") else []
    with pytest.raises(ConfigError) as exc:
        train(video_cfg(video, tmp_path / "run", *extra, override))
    assert str(exc.value).startswith(start)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "run").exists()
