"""The atlas DataModule: NLA maps and atlases of the synthetic video, each step's crops, and bad inputs.

Boxes and UV bounds are checked against the rules of SPEC section 5 (frames t - 2, t, t + 2; background crops
of 95-100 % of the frame sharing one window; foreground crops inside the grown alpha box; the atlas crop is
the floor/ceil bounding box of the three crops' UVs; a shared flip).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH
from PIL import Image

from text2live.data import DATA_STREAM, LOSS_STREAM, step_seed
from text2live.errors import ConfigError, InputError
from text2live.nla import load_nla, synthetic_nla
from text2live.video_data import (
    AtlasCrops,
    AtlasDataModule,
    AtlasSteps,
    atlas_extent,
    foreground_window,
    mask_boundaries,
    used_mask,
)
from text2live.video_system import sample_atlas

LAYERS = ("foreground", "background")
RES = 200  # data.grid_resolution of the tiny video runs
SHIFT = {"foreground": 0.0, "background": 1.0}
SETTINGS = dict(
    num_frames=VIDEO_FRAMES,
    height=VIDEO_HEIGHT,
    width=VIDEO_WIDTH,
    grid_resolution=RES,
    mask_border=4,
    min_side=17,
    chunk_size=4096,
    steps=20,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_datamodule(video: tuple[Path, Path], **overrides) -> AtlasDataModule:
    checkpoint, frames = video
    kwargs = {"nla_checkpoint": str(checkpoint), "frames_dir": str(frames), "edit_layers": LAYERS, **SETTINGS}
    return AtlasDataModule(**{"crops": AtlasCrops(), **kwargs, **overrides})


@pytest.fixture(scope="module")
def dm(synthetic_video) -> AtlasDataModule:
    """Both layers of the synthetic video; the whole atlas joins steps 2, 5, 8 ..."""
    datamodule = make_datamodule(synthetic_video, entire_atlas_every=3)
    datamodule.setup("fit")
    return datamodule


@pytest.fixture(scope="module")
def nla(synthetic_video):
    return load_nla(synthetic_video[0], VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH)


def draw(sampler, monkeypatch, step: int, seed: int, **crops) -> tuple[dict, dict[str, list[tuple]]]:
    """One step's sample and, per layer, the (frame, top, left, h, w) boxes its frame crops were cut from;
    ``crops`` replaces settings of the sampler's crops for this draw."""
    boxes: dict[str, list[tuple]] = {name: [] for name in LAYERS}
    original = sampler.layer_crop

    def record(name, frame, top, left, h, w):
        boxes[name].append((frame, top, left, h, w))
        return original(name, frame, top, left, h, w)

    with monkeypatch.context() as m:
        m.setattr(sampler, "layer_crop", record)
        for key, value in crops.items():
            m.setattr(sampler.crops, key, value)
        sample = sampler(step, seed)
    return sample, boxes


def bilinear(image: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of ``image`` ([C, h, w]) at pixel positions (x, y), zero outside (by hand)."""
    _, h, w = image.shape
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    out = torch.zeros(image.shape[0], *x.shape)
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xx, yy = (x0 + dx).long(), (y0 + dy).long()
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        values = image[:, yy.clamp(0, h - 1), xx.clamp(0, w - 1)] * inside
        out += values * weight
    return out


# the building blocks, on hand-made tensors ----------------------------------------------------------------


def test_atlas_extent():
    uvs = torch.tensor([[[[-0.5, -0.25], [-0.1, -0.9]]], [[[-0.33, -0.5], [-0.42, -0.77]]]])  # [2, 1, 2, 2]
    px, origin, size = atlas_extent(uvs, shift=1.0, resolution=10)
    # (uv + 1) * 10: u in [5, 9] (floor 5), v in [1, 7.5] (floor 1)
    assert origin == (5, 1)
    assert size == (7, 4)  # (h, w) = ceil(7.5 - 1), ceil(9 - 5)
    torch.testing.assert_close(px, (uvs + 1) * 10 - torch.tensor([5.0, 1.0]))
    assert px.amin().item() >= 0


def test_used_mask_marks_the_four_pixels_around_each_uv():
    uvs = torch.tensor([[[[1.5, 2.25], [4.0, 0.0]]]])  # u, v in atlas pixels
    mask = used_mask(uvs, (4, 6))
    expected = torch.zeros(4, 6)
    expected[2:4, 1:3] = 1  # around (1.5, 2.25)
    expected[0, 4] = 1  # exactly on a pixel
    assert torch.equal(mask, expected[None, None])


def test_mask_boundaries_box_around_the_mask():
    alpha = torch.zeros(1, 1, 36, 64)
    alpha[0, 0, 10:15, 20:30] = 1.0  # rows 10..14, columns 20..29
    alpha[0, 0, 12, 30] = 0.6  # exactly at the threshold: inside
    box = mask_boundaries(alpha, border=3, threshold=0.6, min_size=5)
    # (top, left) = (min - border); (bottom, right) = (max + border), exclusive, as the reference computes it
    assert box.tolist() == [[7, 17, 17 - 7, 33 - 17]]
    assert box.dtype == torch.long


def test_mask_boundaries_clip_to_the_frame():
    alpha = torch.zeros(1, 1, 36, 64)
    alpha[0, 0, 0:4, 60:64] = 0.99
    assert mask_boundaries(alpha, border=3, threshold=0.95, min_size=5).tolist() == [[0, 57, 6, 7]]


def test_mask_boundaries_grow_to_the_minimum_size():
    alpha = torch.zeros(2, 1, 36, 64)
    alpha[0, 0, 10:12, 20:22] = 1.0  # small box in the middle: grows down and right
    alpha[1, 0, 33:35, 62:64] = 1.0  # small box at the corner: grows up and left
    boxes = mask_boundaries(alpha, border=1, threshold=0.5, min_size=9)
    assert boxes[0].tolist() == [9, 19, 9, 9]  # rows 9..11 (3 px) grown to 9 px at the bottom, likewise columns
    # rows 32..34 (+ border, clipped at 36): 35 + 6 would pass the frame, so the top moves up by 6
    assert boxes[1].tolist() == [26, 55, 9, 9]


def test_mask_boundaries_empty_mask_is_an_input_error():
    alpha = torch.full((3, 1, 36, 64), 0.5)
    alpha[0, 0, 5, 5] = 1.0
    alpha[2, 0, 5, 5] = 1.0
    with pytest.raises(InputError) as exc:
        mask_boundaries(alpha, border=2, threshold=0.95, min_size=5)
    assert "data.mask_threshold=0.95 in frame 1" in str(exc.value)


def test_mask_boundaries_fit_a_minimum_box_that_needs_both_directions():
    alpha = torch.zeros(1, 1, 20, 40)
    alpha[0, 0, 5:9, 10:30] = 1.0
    (top, left, h, w) = mask_boundaries(alpha, border=0, threshold=0.5, min_size=17)[0].tolist()
    assert h >= 17 and top >= 0 and top + h <= 20
    assert top <= 5 and top + h >= 8


def test_foreground_window_is_the_uv_box_of_every_frame_box():
    uvs = torch.zeros(2, 4, 6, 2)
    uvs[..., 0] = 10.0  # u outside the boxes: ignored
    uvs[..., 1] = 50.0
    uvs[0, 1:3, 2:5] = torch.tensor([3.2, 7.9])
    uvs[0, 2, 4] = torch.tensor([5.5, 2.1])
    uvs[1, 0:2, 0:2] = torch.tensor([4.0, 8.5])
    boxes = torch.tensor([[1, 2, 2, 3], [0, 0, 2, 2]])
    # u in [3.2, 5.5] -> [3, 6]; v in [2.1, 8.5] -> [2, 9]
    assert foreground_window(boxes, uvs) == (2, 3, 7, 3)


# the layers of the synthetic video --------------------------------------------------------------------------


def test_layer_uvs_and_atlas_are_registered(dm, nla):
    """uvs are (NLA UV + shift) * res - origin, and atlas pixel (r, c) shows the atlas at origin + (c, r) / res,
    so atlas pixel index c holds UV value c (the sampling convention is checked separately)."""
    ys, xs = torch.meshgrid(torch.arange(36.0), torch.arange(64.0), indexing="ij")
    for name in LAYERS:
        layer = dm.layers[name]
        u0, v0 = layer.origin
        for t in (0, 3):
            xyt = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((36 * 64,), float(t))], dim=1)
            with torch.no_grad():
                uv = nla.frame_maps(xyt)[name].reshape(36, 64, 2)
            expected = (uv + SHIFT[name]) * RES - torch.tensor([u0, v0], dtype=torch.float32)
            torch.testing.assert_close(layer.uvs[t], expected, rtol=0, atol=2e-3)
        h, w = layer.size
        assert layer.uvs[..., 0].min() >= 0 and layer.uvs[..., 0].min() < 1
        assert layer.uvs[..., 1].min() >= 0 and layer.uvs[..., 1].min() < 1
        assert w - 1 < layer.uvs[..., 0].max() <= w and h - 1 < layer.uvs[..., 1].max() <= h
        for r, c in ((0, 0), (h - 1, w - 1), (h // 2, w // 3)):
            point = torch.tensor([[(u0 + c) / RES - SHIFT[name], (v0 + r) / RES - SHIFT[name]]])
            with torch.no_grad():
                torch.testing.assert_close(layer.atlas[0, :, r, c], nla.atlas_rgb(point)[0], rtol=0, atol=1e-5)
        assert layer.used.shape == (1, 1, h, w)
    fg = dm.layers["foreground"]
    assert fg.window is not None and dm.layers["background"].window is None
    top, left, h, w = fg.window
    assert torch.equal(fg.whole(), fg.atlas[..., top : top + h, left : left + w])


def test_foreground_boxes_and_window(dm):
    fg = dm.layers["foreground"]
    expected = mask_boundaries(dm.alpha, border=4, threshold=0.95, min_size=17)
    assert torch.equal(fg.boundaries, expected)
    for (top, left, h, w), alpha in zip(fg.boundaries.tolist(), dm.alpha):
        ys, xs = (alpha[0] >= 0.95).nonzero(as_tuple=True)
        assert (top, left) == (max(int(ys.min()) - 4, 0), max(int(xs.min()) - 4, 0))
        assert h >= 17 and w >= 17 and top + h <= 36 and left + w <= 64
    assert fg.window == foreground_window(fg.boundaries, fg.uvs)


def test_sampling_the_atlas_is_bilinear_at_uv_minus_half_a_pixel(dm):
    """``sample_atlas(atlas, layer.grid(t))`` (align_corners=False) reads the atlas at pixel position uv - 0.5."""
    for name in LAYERS:
        layer = dm.layers[name]
        h, w = layer.size
        pattern = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(5))
        patterned = dataclasses.replace(layer, atlas=pattern)
        for t in range(VIDEO_FRAMES):
            sampled = sample_atlas(pattern, patterned.grid(t))[0]
            uv = layer.uvs[t]
            expected = bilinear(pattern[0], uv[..., 0] - 0.5, uv[..., 1] - 0.5)
            torch.testing.assert_close(sampled, expected, rtol=0, atol=1e-5)


def test_background_reference_is_the_nla_reconstruction(dm, nla):
    reference = dm.sampler.reference["background"]
    assert reference.shape == (VIDEO_FRAMES, 3, 36, 64)
    ys, xs = torch.meshgrid(torch.arange(36.0), torch.arange(64.0), indexing="ij")
    for t in range(VIDEO_FRAMES):
        xyt = torch.stack([xs.reshape(-1), ys.reshape(-1), torch.full((36 * 64,), float(t))], dim=1)
        with torch.no_grad():
            rgb = nla.atlas_rgb(nla.frame_maps(xyt)["background"])
        torch.testing.assert_close(reference[t], rgb.T.reshape(3, 36, 64), rtol=0, atol=1e-5)
    assert "foreground" not in dm.sampler.reference


def test_video_is_the_frames_and_alpha_is_the_nla_alpha(dm, nla, synthetic_video):
    frames = sorted(synthetic_video[1].iterdir())
    for t in (0, 4):
        pixels = torch.tensor(list(Image.open(frames[t]).getdata()), dtype=torch.float32) / 255
        torch.testing.assert_close(dm.video[t], pixels.T.reshape(3, 36, 64))
    xyt = torch.tensor([[10.0, 20.0, 1.0], [32.0, 16.0, 3.0]])
    with torch.no_grad():
        alpha = nla.frame_maps(xyt)["alpha"][:, 0]
    torch.testing.assert_close(torch.stack([dm.alpha[1, 0, 20, 10], dm.alpha[3, 0, 16, 32]]), alpha, atol=1e-5, rtol=0)


# each step's sample -----------------------------------------------------------------------------------------


def test_frames_are_t_minus_2_t_t_plus_2(tmp_path, monkeypatch):
    """With 7 frames, t takes every value in [2, 4] and the crops come from frames t - 2, t and t + 2."""
    from conftest import write_synthetic_video

    video = write_synthetic_video(tmp_path, num_frames=7)
    datamodule = make_datamodule(video, num_frames=7, edit_layers=("foreground",))
    datamodule.setup()
    centres = set()
    for seed in range(40):
        sample, boxes = draw(datamodule.sampler, monkeypatch, 0, seed)
        t = sample["frames"][1]
        assert sample["frames"] == [t - 2, t, t + 2]
        assert [box[0] for box in boxes["foreground"]] == sample["frames"]
        centres.add(t)
    assert centres == {2, 3, 4}


def test_frame_distance_comes_from_the_crop_settings(dm, monkeypatch):
    """With frame_distance=1 the step's frames of a 5-frame video are t - 1, t, t + 1 for t in [1, 3]."""
    centres = set()
    for seed in range(40):
        sample, boxes = draw(dm.sampler, monkeypatch, 0, seed, frame_distance=1)
        t = sample["frames"][1]
        assert sample["frames"] == [t - 1, t, t + 1]
        assert [box[0] for box in boxes["foreground"]] == sample["frames"]
        centres.add(t)
    assert centres == {1, 2, 3}


def test_crop_settings_are_checked(synthetic_video):
    with pytest.raises(ConfigError, match=r"data.crops.crop_min_cover must be in \(0, 1\], got 0"):
        AtlasCrops(crop_min_cover=0)
    with pytest.raises(ConfigError, match=r"at least 2 \* data.crops.frame_distance \+ 1 = 7 frames"):
        make_datamodule(synthetic_video, crops=AtlasCrops(frame_distance=3))


def test_full_input_keeps_the_frames_and_drops_the_augmentation(synthetic_video):
    settings = AtlasCrops(frame_distance=1, flip_p=0.3, jitter_p=0.2, crop_min_cover=0.8)
    crops = make_datamodule(synthetic_video, crops=settings, full_input=True).crops
    assert (crops.frame_distance, crops.flip_p, crops.jitter_p, crops.crop_min_cover) == (1, 0.0, 0.0, 1.0)
    assert make_datamodule(synthetic_video, crops=settings).crops is settings


def test_crop_sides_within_the_configured_cover(dm, monkeypatch):
    fg_boxes = dm.layers["foreground"].boundaries
    for seed in range(40):
        sample, boxes = draw(dm.sampler, monkeypatch, 0, seed)
        assert sample["frames"] == [0, 2, 4]  # 5 frames: t = 2 only
        # background: 95-100 % of 36 x 64, one window on all three frames
        (first, *others) = boxes["background"]
        _, top, left, h, w = first
        assert round(0.95 * 36) <= h <= 36 and round(0.95 * 64) <= w <= 64
        assert 0 <= top <= 36 - h and 0 <= left <= 64 - w
        assert [box[1:] for box in others] == [first[1:]] * 2
        # foreground: 95-100 % of the frame's alpha box (at least 17 px), inside it
        for frame, top, left, h, w in boxes["foreground"]:
            y0, x0, fh, fw = fg_boxes[frame].tolist()
            assert max(round(0.95 * fh), 17) <= h <= fh and max(round(0.95 * fw), 17) <= w <= fw
            assert y0 <= top and top + h <= y0 + fh and x0 <= left and left + w <= x0 + fw
        for name in LAYERS:
            crops, alphas = sample[name]["crops"], sample[name]["alphas"]
            shapes = [(box[3], box[4]) for box in boxes[name]]
            assert [tuple(c.shape[-2:]) for c in crops] == shapes
            assert [tuple(a.shape[-2:]) for a in alphas] == shapes
            assert [tuple(g.shape[1:3]) for g in sample[name]["grids"]] == shapes
            assert sample[name]["pass_frame"] in (0, 1, 2)


def test_atlas_crop_covers_the_uvs_of_the_three_crops(dm, monkeypatch):
    """Every grid value lies in [-1, 1], and the extremes are within one atlas pixel of -1 and +1."""
    for seed in range(60):
        sample, boxes = draw(dm.sampler, monkeypatch, 0, seed)
        for name in LAYERS:
            layer_sample = sample[name]
            v0, u0, h, w = layer_sample["atlas_box"]
            assert tuple(layer_sample["atlas_crop"].shape) == (1, 3, h, w)
            grids = torch.cat([g.reshape(-1, 2) for g in layer_sample["grids"]])
            assert grids.min() >= -1 and grids.max() <= 1
            for axis, span in ((0, w), (1, h)):
                assert (grids[:, axis].min() + 1) * span / 2 < 1, (seed, name, axis)
                assert (1 - grids[:, axis].max()) * span / 2 < 1, (seed, name, axis)
            # the box is floor(min) .. ceil(max) of the three crops' UVs
            uvs = torch.cat(
                [dm.layers[name].uvs[f, t : t + bh, lf : lf + bw].reshape(-1, 2) for f, t, lf, bh, bw in boxes[name]]
            )
            lo, hi = uvs.amin(dim=0), uvs.amax(dim=0)
            assert (u0, v0) == (math.floor(lo[0]), math.floor(lo[1]))
            assert (u0 + w, v0 + h) == (math.ceil(hi[0]), math.ceil(hi[1]))


def test_grids_read_the_atlas_crop_where_the_uvs_point(dm, monkeypatch):
    """Sampling the atlas crop at a grid = bilinear interpolation of the crop at uv - origin - 0.5."""
    for seed in range(5):
        sample, boxes = draw(dm.sampler, monkeypatch, 0, seed, jitter_p=0.0, flip_p=0.0)
        for name in LAYERS:
            layer_sample = sample[name]
            v0, u0, h, w = layer_sample["atlas_box"]
            crop = layer_sample["atlas_crop"]
            assert torch.equal(crop, dm.layers[name].atlas[..., v0 : v0 + h, u0 : u0 + w])
            for grid, (frame, top, left, bh, bw) in zip(layer_sample["grids"], boxes[name]):
                uv = dm.layers[name].uvs[frame, top : top + bh, left : left + bw]
                expected = bilinear(crop[0], uv[..., 0] - u0 - 0.5, uv[..., 1] - v0 - 0.5)
                torch.testing.assert_close(sample_atlas(crop, grid)[0], expected, rtol=0, atol=1e-5)


def test_frame_crops_are_the_layer_references(dm, monkeypatch):
    """Without jitter: background crops are the NLA reconstruction, foreground crops are frame x alpha."""
    sample, boxes = draw(dm.sampler, monkeypatch, 0, 11, jitter_p=0.0, flip_p=0.0)
    for name in LAYERS:
        for crop, alpha, (frame, top, left, h, w) in zip(sample[name]["crops"], sample[name]["alphas"], boxes[name]):
            window = (slice(frame, frame + 1), slice(None), slice(top, top + h), slice(left, left + w))
            if name == "foreground":
                assert torch.equal(crop, dm.video[window] * dm.alpha[window])
            else:
                assert torch.equal(crop, dm.sampler.reference["background"][window])
            assert torch.equal(alpha, dm.alpha[window])


def test_flip_mirrors_the_whole_sample(dm, monkeypatch):
    for seed in (0, 1, 2):
        plain, _ = draw(dm.sampler, monkeypatch, 4, seed, flip_p=0.0)
        flipped, _ = draw(dm.sampler, monkeypatch, 4, seed, flip_p=1.0)
        assert (plain["flip"], flipped["flip"]) == (False, True)
        assert plain["frames"] == flipped["frames"]
        for name in LAYERS:
            a, b = plain[name], flipped[name]
            assert a["atlas_box"] == b["atlas_box"] and a["pass_frame"] == b["pass_frame"]
            assert torch.equal(b["atlas_crop"], a["atlas_crop"].flip(-1))
            for key in ("crops", "alphas"):
                assert all(torch.equal(y, x.flip(-1)) for x, y in zip(a[key], b[key]))
            for grid_a, grid_b in zip(a["grids"], b["grids"]):
                assert torch.equal(grid_b, torch.stack([-grid_a[..., 0], grid_a[..., 1]], dim=-1).flip(-2))
                # what the generator's edit turns into: the mirror of the unflipped rendering
                mirrored = sample_atlas(a["atlas_crop"], grid_a).flip(-1)
                torch.testing.assert_close(sample_atlas(b["atlas_crop"], grid_b), mirrored, rtol=0, atol=1e-5)


def test_colour_jitter_is_rare_and_shared_by_the_background_crops(dm, monkeypatch):
    """p = 0.1 per draw: for the three background crops together, for each foreground crop, for each atlas crop."""
    counts = {"background crops": 0, "foreground crop": 0, "atlas crop": 0}
    n = 300
    for seed in range(n):
        sample, boxes = draw(dm.sampler, monkeypatch, 0, seed, flip_p=0.0)
        crops = sample["background"]["crops"]
        plain = [dm.sampler.layer_crop("background", *box) for box in boxes["background"]]
        jittered = [not torch.equal(c, p) for c, p in zip(crops, plain)]
        assert len(set(jittered)) == 1  # all three or none
        counts["background crops"] += jittered[0]
        plain_fg = dm.sampler.layer_crop("foreground", *boxes["foreground"][0])
        counts["foreground crop"] += not torch.equal(sample["foreground"]["crops"][0], plain_fg)
        v0, u0, h, w = sample["background"]["atlas_box"]
        atlas = dm.layers["background"].atlas[..., v0 : v0 + h, u0 : u0 + w]
        counts["atlas crop"] += not torch.equal(sample["background"]["atlas_crop"], atlas)
    for what, count in counts.items():
        assert 0.1 * n - 15 <= count <= 0.1 * n + 15, (what, count)  # about 3 standard deviations


def test_flip_follows_flip_p(dm):
    flips = [dm.sampler(0, seed)["flip"] for seed in range(200)]
    assert 70 < sum(flips) < 130  # p = 0.5


def test_whole_atlas_joins_every_third_step(dm):
    steps = AtlasSteps(dm.sampler, seed=0, start=0, stop=9)
    with_atlas = [sample["step"] for sample in steps if "atlas" in sample["foreground"]]
    assert with_atlas == [2, 5, 8]  # (step + 1) % 3 == 0
    sample = steps.sample(5)
    fg, bg = dm.layers["foreground"], dm.layers["background"]
    assert torch.equal(sample["foreground"]["atlas"], fg.whole())
    h, w = bg.size
    expected = F.interpolate(bg.atlas, size=(h // 3, w // 3), mode="bilinear", antialias=True)
    assert torch.equal(sample["background"]["atlas"], expected)
    assert "atlas" not in steps.sample(4)["background"]


def test_no_whole_atlas_when_entire_atlas_every_is_0(dm, monkeypatch):
    monkeypatch.setattr(dm.sampler, "entire_atlas_every", 0)
    assert not any("atlas" in dm.sampler(step, step)["foreground"] for step in range(6))


def test_full_input_ablation_uses_whole_frames_and_alpha_boxes(synthetic_video, monkeypatch):
    """full_input=true (ablation=no_crops): the whole frame (background) or the whole alpha box (foreground),
    never flipped nor jittered."""
    datamodule = make_datamodule(synthetic_video, full_input=True)
    datamodule.setup()
    boundaries = datamodule.layers["foreground"].boundaries
    for seed in range(10):
        sample, boxes = draw(datamodule.sampler, monkeypatch, 0, seed)
        assert not sample["flip"]
        assert [box[1:] for box in boxes["background"]] == [(0, 0, 36, 64)] * 3
        assert [box[1:] for box in boxes["foreground"]] == [tuple(boundaries[f].tolist()) for f in sample["frames"]]
        for name in LAYERS:
            plain = [datamodule.sampler.layer_crop(name, *box) for box in boxes[name]]
            assert all(torch.equal(c, p) for c, p in zip(sample[name]["crops"], plain))
            v0, u0, h, w = sample[name]["atlas_box"]
            atlas = datamodule.layers[name].atlas[..., v0 : v0 + h, u0 : u0 + w]
            assert torch.equal(sample[name]["atlas_crop"], atlas)


# determinism ------------------------------------------------------------------------------------------------


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def differs(a: dict, b: dict) -> bool:
    try:
        assert_same(a, b)
    except AssertionError:
        return True
    return False


def test_samples_are_a_function_of_seed_and_step(dm, synthetic_video):
    steps = AtlasSteps(dm.sampler, seed=7, start=0, stop=20)
    first = steps.sample(3)
    assert first["step"] == 3
    assert first["seed"] == step_seed(7, 3, LOSS_STREAM)
    assert first["seed"] != step_seed(7, 3, DATA_STREAM)
    assert_same(steps.sample(3), first)
    assert differs(steps.sample(4), first)
    assert differs(AtlasSteps(dm.sampler, seed=8, start=0, stop=20).sample(3), first)

    fresh = make_datamodule(synthetic_video, entire_atlas_every=3)
    fresh.setup()
    assert_same(AtlasSteps(fresh.sampler, seed=7, start=0, stop=20).sample(3), first)
    # a resumed run (start=2) sees the same samples as the uninterrupted one
    resumed = list(AtlasSteps(fresh.sampler, seed=7, start=2, stop=4))
    assert [s["step"] for s in resumed] == [2, 3]
    assert_same(resumed[1], first)
    assert len(AtlasSteps(dm.sampler, 7, 2, 4)) == 2


# bad inputs -------------------------------------------------------------------------------------------------


def copy_frames(source: Path, target: Path, count: int = VIDEO_FRAMES) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir())[:count]:
        (target / path.name).write_bytes(path.read_bytes())
    return target


def setup_error(video, error=InputError, **overrides) -> str:
    datamodule = make_datamodule(video, **overrides)
    with pytest.raises(error) as exc:
        datamodule.setup()
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_too_few_frames(synthetic_video, tmp_path):
    frames = copy_frames(synthetic_video[1], tmp_path / "frames", count=4)
    message = setup_error(synthetic_video, frames_dir=str(frames))
    assert message.startswith(f"{frames} holds 4 frames (jpg/png) but num_frames=5")


def test_frames_of_different_sizes(synthetic_video, tmp_path):
    frames = copy_frames(synthetic_video[1], tmp_path / "frames")
    Image.new("RGB", (60, 30)).save(frames / "00003.png")
    message = setup_error(synthetic_video, frames_dir=str(frames))
    assert "00000.png is 64x36 but 00003.png is 60x30" in message


def test_unreadable_frame(synthetic_video, tmp_path):
    frames = copy_frames(synthetic_video[1], tmp_path / "frames")
    (frames / "00002.png").write_text("not a picture")
    message = setup_error(synthetic_video, frames_dir=str(frames))
    assert message.startswith(f"cannot read frame {frames / '00002.png'}")


def test_frames_dir_that_is_not_a_folder(synthetic_video):
    checkpoint = synthetic_video[0]
    message = setup_error(synthetic_video, frames_dir=str(checkpoint))
    assert message.startswith(f"frames_dir={checkpoint} is not a folder")


def test_missing_nla_checkpoint(synthetic_video, tmp_path):
    message = setup_error(synthetic_video, nla_checkpoint=str(tmp_path / "checkpoint"))
    assert message.startswith(f"nla_checkpoint={tmp_path / 'checkpoint'} does not exist")


def test_nla_checkpoint_missing_a_key(synthetic_video, tmp_path):
    checkpoint = synthetic_nla(VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH).checkpoint()
    del checkpoint["model_F_mapping2_state_dict"]
    torch.save(checkpoint, tmp_path / "checkpoint")
    message = setup_error(synthetic_video, nla_checkpoint=str(tmp_path / "checkpoint"))
    assert "lacks model_F_mapping2_state_dict (background mapping)" in message


def test_alpha_that_never_reaches_the_threshold(synthetic_video):
    message = setup_error(synthetic_video, mask_threshold=0.999)
    assert "data.mask_threshold=0.999 in frame 0" in message


def test_atlas_too_small_for_the_generator(synthetic_video):
    """At 20 atlas pixels per unit the background atlas is far below 3 x min_side."""
    message = setup_error(synthetic_video, grid_resolution=20)
    assert "raise data.grid_resolution" in message


@pytest.mark.parametrize("num_frames", [4, 0, 2.5])
def test_num_frames_below_five_is_a_config_error(synthetic_video, num_frames):
    with pytest.raises(ConfigError, match=f"num_frames={num_frames} is not valid"):
        make_datamodule(synthetic_video, num_frames=num_frames)


@pytest.mark.parametrize(
    "layers", [[], ["middle"], ["foreground", "foreground"], ["background", "foreground", "background"]]
)
def test_bad_edit_layers_are_a_config_error(synthetic_video, layers):
    with pytest.raises(ConfigError) as exc:
        make_datamodule(synthetic_video, edit_layers=layers)
    assert str(exc.value).startswith(f"edit_layers={layers} is not valid")


def test_frames_smaller_than_the_generator_input(synthetic_video):
    with pytest.raises(ConfigError, match="smaller than the generator's smallest input"):
        make_datamodule(synthetic_video, min_side=65)


def test_saved_frames_need_not_be_the_nla_size(synthetic_video, tmp_path):
    """Frames of another size are resized to (height, width) on load."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for path in sorted(synthetic_video[1].iterdir()):
        Image.open(path).resize((128, 72), Image.LANCZOS).save(frames / path.name)
    datamodule = make_datamodule(synthetic_video, frames_dir=str(frames), edit_layers=("foreground",))
    datamodule.setup()
    assert datamodule.video.shape == (VIDEO_FRAMES, 3, 36, 64)
