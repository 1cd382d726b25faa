"""The inputs of atlas training: frames, masks and flow from files or networks, NLA's consistency rule, the cache."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.optical_flow import raft_large, raft_small

from text2live.atlas import inputs
from text2live.atlas.inputs import VideoInputs, consistency_error, prepare_inputs
from text2live.errors import InputError, MissingWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

T, SRC_H, SRC_W = 4, 48, 64  # the source frames (48 and 64: multiples of H.264's 16-pixel blocks)
H, W = 24, 48  # the atlas resolution in these tests: y halves, x scales by 0.75
FORWARD = (4.0, 2.0)  # the source video translates by (dx, dy) = (4, 2) pixels per frame


def frame(t: int) -> np.ndarray:
    """Smooth colours (which a video codec keeps) moving by FORWARD per frame."""
    y, x = np.mgrid[0:SRC_H, 0:SRC_W].astype(np.float64)
    x, y = x - FORWARD[0] * t, y - FORWARD[1] * t
    rgb = [128 + 90 * np.sin(x / 9), 128 + 90 * np.cos(y / 7), 128 + 60 * np.sin((x + y) / 11)]
    return np.stack(rgb, axis=2).round().astype(np.uint8)


def write_video(root: Path) -> dict[str, Path]:
    """frames/00000.png ..., masks/ (PNG, JPEG, palette), flow/ in NLA's layout, all at SRC_H x SRC_W."""
    folders = {name: root / name for name in ("frames", "masks", "flow")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    mask = np.zeros((SRC_H, SRC_W), np.uint8)
    mask[8:32, 16:48] = 255
    for t in range(T):
        Image.fromarray(frame(t)).save(folders["frames"] / f"{t:05d}.png")
        if t == 1:
            Image.fromarray(mask).save(folders["masks"] / f"{t:05d}.jpg", quality=70)
        elif t == 2:
            palette = Image.fromarray((mask > 0).astype(np.uint8), mode="P")  # DAVIS: index 1 = the object
            palette.putpalette([0, 0, 0, 200, 0, 0])
            palette.save(folders["masks"] / f"{t:05d}.png")
        else:
            Image.fromarray(mask).save(folders["masks"] / f"{t:05d}.png")
    for t in range(T - 1):
        a, b = f"{t:05d}.png", f"{t + 1:05d}.png"
        np.save(folders["flow"] / f"{a}_{b}.npy", np.broadcast_to(np.float32(FORWARD), (SRC_H, SRC_W, 2)).copy())
        np.save(folders["flow"] / f"{b}_{a}.npy", -np.broadcast_to(np.float32(FORWARD), (SRC_H, SRC_W, 2)).copy())
    return folders


@pytest.fixture
def video(tmp_path: Path) -> dict[str, Path]:
    return write_video(tmp_path / "video")


def prepare(files: dict[str, Path], cache: Path, **overrides) -> VideoInputs:
    args = dict(
        video=None,
        frames_dir=str(files["frames"]),
        num_frames=None,
        width=W,
        height=H,
        masks_dir=str(files["masks"]),
        flow_dir=str(files["flow"]),
        cache_dir=cache,
        progress=False,
    )
    return prepare_inputs(**{**args, **overrides})


def one_line_error(kind, call, *needles: str) -> str:
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# frames -----------------------------------------------------------------------------------------------------


def test_frames_from_folder_are_resized_with_lanczos(video, tmp_path):
    got = prepare(video, tmp_path / "cache", num_frames=3)
    assert got.names == ["00000", "00001", "00002"]
    assert got.frames.shape == (3, 3, H, W) and got.frames.dtype == torch.float32
    expected = np.asarray(Image.fromarray(frame(2)).resize((W, H), Image.LANCZOS), dtype=np.float32) / 255
    assert torch.allclose(got.frames[2], torch.from_numpy(expected).permute(2, 0, 1))


def test_frames_from_mp4_match_the_folder(video, tmp_path):
    mp4 = tmp_path / "clip.mp4"
    imageio.mimwrite(mp4, [frame(t) for t in range(T)], fps=10, format="FFMPEG", quality=10)
    from_folder = prepare(video, tmp_path / "a")
    flow = tmp_path / "flow_by_stem"  # an MP4's frames are named 00000, 00001 ...
    flow.mkdir()
    for path in video["flow"].iterdir():
        (flow / path.name.replace(".png", "")).write_bytes(path.read_bytes())
    from_mp4 = prepare(video, tmp_path / "b", video=str(mp4), frames_dir=None, num_frames=T - 1, flow_dir=str(flow))
    assert from_mp4.names == ["00000", "00001", "00002"]
    assert from_mp4.frames.shape == (T - 1, 3, H, W)
    assert (from_mp4.frames - from_folder.frames[: T - 1]).abs().mean() < 0.02  # H.264 with 4:2:0 chroma


# masks ------------------------------------------------------------------------------------------------------


def test_masks_from_a_folder_any_format_nearest_resize(video, tmp_path):
    masks = prepare(video, tmp_path / "cache").masks
    expected = torch.zeros(1, H, W)
    expected[:, 4:16, 12:36] = 1  # rows 8..31 and columns 16..47 of the source, nearest-resized
    assert masks.shape == (T, 1, H, W) and masks.dtype == torch.float32
    for t in range(T):  # PNG 0/255, JPEG with compression noise, palette indices
        assert torch.equal(masks[t], expected), t


def fake_detector(outputs: list[list[tuple[str, float, int]]]):
    """A Mask R-CNN stand-in: per frame, detections (class, score, column where their mask starts)."""

    class Detector(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, images: list[torch.Tensor]) -> list[dict]:
            detections = outputs[self.calls]
            self.calls += 1
            h, w = images[0].shape[-2:]
            masks = torch.zeros(len(detections), 1, h, w)
            for k, (_, _, column) in enumerate(detections):
                masks[k, 0, :, column:] = 0.9
            labels = [inputs.COCO_CATEGORIES.index(name) for name, _, _ in detections]
            scores = [score for _, score, _ in detections]
            return [{"labels": torch.tensor(labels, dtype=torch.long), "scores": torch.tensor(scores), "masks": masks}]

    return Detector()


def test_mask_rcnn_picks_the_most_confident_instance_of_the_class():
    frames = torch.rand(3, 3, 8, 10)
    detections = [
        [("dog", 0.9, 1), ("person", 0.8, 2), ("cat", 0.3, 3)],
        [("person", 0.95, 4), ("person", 0.7, 5)],
        [("cat", 0.4, 6)],  # below the score threshold of 0.5: nothing
    ]

    def run(mask_object: str) -> list[int]:
        masks = inputs.mask_rcnn_masks(fake_detector(detections), frames, mask_object, progress=False)
        assert masks.shape == (3, 1, 8, 10) and masks.dtype == torch.bool
        return [int(m[0, 0].nonzero()[0]) if m.any() else -1 for m in masks]  # the column each mask starts at

    assert run("person") == [2, 4, -1]
    assert run("anything") == [1, 4, -1]
    message = one_line_error(InputError, lambda: run("horse"), "'horse'", "3 frames", "person, dog", "masks_dir=")
    assert "cat" not in message  # found only below the threshold


def test_mask_rcnn_with_random_weights_and_local_weights_file(tmp_path):
    """The one test that builds Mask R-CNN, made to detect at 64 px with no score threshold."""
    torch.manual_seed(0)
    model = inputs.mask_rcnn()
    model.transform.min_size, model.transform.max_size = (64,), 96
    model.roi_heads.score_thresh = 0.0
    masks = inputs.mask_rcnn_masks(model, torch.rand(2, 3, 48, 64), "anything", progress=False, min_score=0.0)
    assert masks.shape == (2, 1, 48, 64) and masks.dtype == torch.bool and masks.any()

    path = tmp_path / "maskrcnn.pth"
    torch.save(model.state_dict(), path)
    loaded = inputs._mask_model(str(path), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert loaded.backbone.body.bn1.eps == 0.0  # as torchvision sets it for the COCO weights


def test_unknown_coco_class_is_refused_before_any_work(video, tmp_path):
    one_line_error(
        InputError,
        lambda: prepare(video, tmp_path / "cache", masks_dir=None, mask_object="persn"),
        "'persn'",
        "person",
        "'anything'",
    )
    assert not (tmp_path / "cache").exists()


# flow -------------------------------------------------------------------------------------------------------


def test_flow_files_are_rescaled_and_checked_for_consistency(video, tmp_path):
    # The backward flow of the right half is wrong by 8 pixels: dx = +4 instead of -4.
    for t in range(T - 1):
        path = video["flow"] / f"{t + 1:05d}.png_{t:05d}.png.npy"
        flow = np.load(path)
        flow[:, 32:, 0] += 8
        np.save(path, flow)
    got = prepare(video, tmp_path / "cache")
    assert got.flow_forward.shape == got.flow_backward.shape == (T - 1, 2, H, W)
    # (4, 2) at 64x48 is (3, 1) at 48x24: x scales by 0.75 and y by 0.5.
    assert torch.allclose(got.flow_forward[:, 0], torch.tensor(3.0))
    assert torch.allclose(got.flow_forward[:, 1], torch.tensor(1.0))
    assert torch.allclose(got.flow_backward[:, 0, :, :24], torch.tensor(-3.0))
    assert torch.allclose(got.flow_backward[:, 0, :, 24:], torch.tensor(3.0))
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    # Forward: landing (x + 3, y + 1) must be in the frame and on the left half, where the backward flow agrees.
    forward_valid = (x + 3 <= 23) & (y + 1 <= H - 1)
    # Backward: the left half agrees where it lands in the frame; the right half never does.
    backward_valid = (x <= 23) & (x - 3 >= 0) & (y - 1 >= 0)
    assert got.flow_forward_valid.shape == (T - 1, 1, H, W) and got.flow_forward_valid.dtype == torch.bool
    assert torch.equal(got.flow_forward_valid[:, 0], forward_valid.expand(T - 1, H, W))
    assert torch.equal(got.flow_backward_valid[:, 0], backward_valid.expand(T - 1, H, W))


def test_consistency_error_by_hand():
    forward = torch.zeros(1, 2, 4, 5)
    forward[:, 0] = 1.0  # one pixel right
    backward = torch.zeros(1, 2, 4, 5)
    backward[:, 0] = -1.0
    backward[0, 1, 2, 3] = 0.5  # where pixel (row 2, column 2) lands, the way back is off by 0.5 in y
    error = consistency_error(forward, backward)[0, 0]
    expected = torch.zeros(4, 5)
    expected[2, 2] = 0.5
    expected[:, 4] = 1.0  # lands outside the frame, where the backward flow counts as zero
    assert torch.allclose(error, expected)


def test_flow_files_at_the_padded_size_of_nla_are_cropped(tmp_path):
    """NLA's raft_wrapper.py saves the flow of frames padded to a multiple of 8: here 36x60 -> 40x64."""
    video = {name: tmp_path / name for name in ("frames", "masks", "flow")}
    for folder in video.values():
        folder.mkdir()
    for t in range(2):
        Image.fromarray(frame(t)[:36, :60]).save(video["frames"] / f"f{t}.jpg")
        Image.fromarray(np.zeros((36, 60), np.uint8)).save(video["masks"] / f"f{t}.png")
    padded = np.full((40, 64, 2), 100.0, np.float32)  # 2 rows and 2 columns of padding on each side
    padded[2:38, 2:62] = np.arange(60, dtype=np.float32)[None, :, None]
    np.save(video["flow"] / "f0_f1.npy", padded)  # named by the stems: accepted too
    np.save(video["flow"] / "f1_f0.npy", -padded)
    got = prepare(video, tmp_path / "cache", width=60, height=36)
    assert torch.equal(got.flow_forward[0, 0], torch.arange(60.0).expand(36, 60))
    assert torch.equal(got.flow_backward[0, 1], -torch.arange(60.0).expand(36, 60))


def test_raft_pads_crops_and_orders_the_pair():
    class Difference(torch.nn.Module):
        """A RAFT stand-in whose 'flow' is image2 - image1 (channels 0 and 1)."""

        def forward(self, image1, image2, num_flow_updates):
            assert image1.shape[-2] % 8 == 0 and image1.shape[-1] % 8 == 0
            assert image1.min() >= -1 and image1.max() <= 1
            return [(image2 - image1)[:, :2]]

    frames = torch.rand(3, 3, 13, 21)
    forward, backward = inputs.raft_flow(Difference(), frames, progress=False)
    assert forward.shape == backward.shape == (2, 2, 13, 21)
    assert torch.allclose(forward, 2 * (frames[1:] - frames[:-1])[:, :2], atol=1e-6)  # [0, 1] -> [-1, 1]
    assert torch.allclose(backward, -forward)


@pytest.mark.parametrize("builder", [raft_small, raft_large])
def test_raft_with_random_weights(builder):
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 60, 90)  # not multiples of 8
    forward, backward = inputs.raft_flow(builder(weights=None), frames, progress=False, updates=2)
    assert forward.shape == backward.shape == (1, 2, 60, 90)
    assert torch.isfinite(forward).all() and torch.isfinite(backward).all()
    assert not torch.equal(forward, backward)


def test_local_flow_weights_are_loaded_and_checked(tmp_path):
    model = raft_large(weights=None)
    good, bad = tmp_path / "raft.pth", tmp_path / "other.pth"
    torch.save(model.state_dict(), good)
    torch.save({"weight": torch.zeros(3)}, bad)
    loaded = inputs._flow_model(str(good), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    one_line_error(InputError, lambda: inputs._flow_model(str(bad), progress=False), "flow_weights=", "raft_large")
    one_line_error(InputError, lambda: inputs._flow_model(str(tmp_path / "none.pth"), False), "does not exist")


# weights ----------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty torch hub and no network; returns the folder where the weights were looked for."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_missing_flow_weights_offline(video, tmp_path, offline):
    one_line_error(
        MissingWeightsError,
        lambda: prepare(video, tmp_path / "cache", flow_dir=None),
        "raft_large_C_T_V1-22a6c225.pth",
        str(offline),
        "flow_weights=<local .pth>",
        "flow_dir=",
    )


def test_missing_mask_weights_offline(video, tmp_path, offline):
    one_line_error(
        MissingWeightsError,
        lambda: prepare(video, tmp_path / "cache", masks_dir=None, mask_object="dog"),
        "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth",
        str(offline),
        "mask_weights=<local .pth>",
        "masks_dir=",
    )


# cache ------------------------------------------------------------------------------------------------------


def test_cache_is_reused_and_invalidated(video, tmp_path, monkeypatch):
    calls = []

    def fake_raft(model, frames, *, device, progress):
        calls.append(frames.shape)
        flow = torch.zeros(len(frames) - 1, 2, *frames.shape[-2:])
        return flow + len(calls), flow - len(calls)

    monkeypatch.setattr(inputs, "_flow_model", lambda weights, progress: torch.nn.Identity())
    monkeypatch.setattr(inputs, "raft_flow", fake_raft)
    cache = tmp_path / "cache"
    first = prepare(video, cache, flow_dir=None)
    assert (cache / inputs.CACHE_FILE).is_file() and len(calls) == 1
    again = prepare(video, cache, flow_dir=None)
    assert len(calls) == 1  # a resumed run does not compute the flow again
    for field in ("frames", "masks", "flow_forward", "flow_backward", "flow_forward_valid", "flow_backward_valid"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    assert again.names == first.names
    torch.load(cache / inputs.CACHE_FILE, weights_only=True)  # tensors, strings and lists only

    prepare(video, cache, flow_dir=None, width=32)
    assert len(calls) == 2 and calls[-1][-1] == 32  # another size: everything again
    prepare(video, cache, flow_dir=None, width=32, num_frames=3)
    assert len(calls) == 3 and calls[-1][0] == 3
    mask = video["masks"] / "00000.png"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    prepare(video, cache, flow_dir=None, width=32, num_frames=3)
    assert len(calls) == 3  # new masks, same flow
    frame0 = video["frames"] / "00000.png"
    os.utime(frame0, ns=(frame0.stat().st_atime_ns, frame0.stat().st_mtime_ns + 10**9))
    prepare(video, cache, flow_dir=None, width=32, num_frames=3)
    assert len(calls) == 4  # a changed frame: everything again

    (cache / inputs.CACHE_FILE).write_bytes(b"not a cache")
    prepare(video, cache, flow_dir=None, width=32, num_frames=3)
    assert len(calls) == 5


# bad inputs -------------------------------------------------------------------------------------------------


def test_frames_source_errors(video, tmp_path):
    cache = tmp_path / "cache"
    one_line_error(InputError, lambda: prepare(video, cache, video="x.mp4"), "video=", "frames_dir=")
    one_line_error(InputError, lambda: prepare(video, cache, frames_dir=None), "video=", "frames_dir=")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    one_line_error(InputError, lambda: prepare(video, cache, video=str(broken), frames_dir=None), "cannot decode")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(InputError, lambda: prepare(video, cache, frames_dir=str(empty)), "holds no frames")
    one_line_error(InputError, lambda: prepare(video, cache, num_frames=5), "holds 4 frames", "num_frames=5")
    one_line_error(InputError, lambda: prepare(video, cache, num_frames=1), "num_frames=1")
    single = tmp_path / "single"
    single.mkdir()
    Image.fromarray(frame(0)).save(single / "a.png")
    one_line_error(InputError, lambda: prepare(video, cache, frames_dir=str(single)), "at least 2 frames")
    Image.fromarray(frame(0)[:40]).save(video["frames"] / "00002.png")
    one_line_error(InputError, lambda: prepare(video, cache), "not all the same size", "00002.png")


def test_mask_file_errors(video, tmp_path):
    cache = tmp_path / "cache"
    (video["masks"] / "00003.png").unlink()
    one_line_error(InputError, lambda: prepare(video, cache), "no mask for frame 00003")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(video["masks"] / "00003.png")
    one_line_error(InputError, lambda: prepare(video, cache), "mask", "frame 00003", "aspect ratio")
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(video["masks"] / "00003.png")  # half size: fine
    assert prepare(video, cache).masks[3].sum() == 0


def test_flow_file_errors(video, tmp_path):
    cache = tmp_path / "cache"
    path = video["flow"] / "00002.png_00001.png.npy"
    path.unlink()
    one_line_error(
        InputError, lambda: prepare(video, cache), "no flow from frame 00002 to 00001", "00002.png_00001.png.npy"
    )
    np.save(path, np.zeros((SRC_H, SRC_W, 3), np.float32))
    one_line_error(InputError, lambda: prepare(video, cache), "frames 00001 and 00002", "(48, 64, 3)")
    np.save(path, np.zeros((SRC_H, SRC_H, 2), np.float32))
    one_line_error(InputError, lambda: prepare(video, cache), "frames 00001 and 00002", "shape")
    np.save(path, np.zeros((SRC_H // 2, SRC_W // 2, 2), np.float32))
    one_line_error(InputError, lambda: prepare(video, cache), "frames 00001 and 00002", "shape")
    np.save(path, np.zeros((SRC_H // 2, SRC_W // 2 + 8, 2), np.float32))
    np.save(video["flow"] / "00001.png_00002.png.npy", np.zeros((SRC_H // 2, SRC_W // 2 + 8, 2), np.float32))
    one_line_error(InputError, lambda: prepare(video, cache), "frames 00001 and 00002", "aspect ratio")
