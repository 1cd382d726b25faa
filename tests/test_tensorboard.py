"""What a run leaves in TensorBoard: the final result as images, and one step numbering for every series.

A step is the number of optimisation steps done (1 .. steps), as in ``steps/<step>/`` and the checkpoints: the
losses and the learning rate of the n-th optimisation step, the images of the generator after it, and the
metrics of the finished run (at ``steps``) all line up.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, compose_config, one_torch_thread
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from text2live.config import ASSETS_DIR
from text2live.training import train

IMAGE_TAG = "edit/input|edit|alpha|greenscreen|composite"
LR0, DECAY = 0.0025, 0.99


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def scalar_steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Scalars(tag)]


def image_steps(accumulator: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in accumulator.Images(tag)]


def decoded(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A tiny run (conftest's ``tiny_cfg`` recipe) of 3 steps with log_images_freq=50: no snapshot at all."""
    folder = tmp_path_factory.mktemp("tb")
    image = folder / "cat_small.png"
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96), Image.LANCZOS).save(image)
    prompts = ["comp_text=golden cat", "src_text=cat", "screen_text=golden", "bootstrap_text=cat"]
    inputs = [f"image_path={image}", *prompts, "loss.bootstrap_steps=2", f"run_dir={folder / 'run'}"]
    return train(compose_config([*inputs, *TINY, "steps=3", "log_images_freq=50", "checkpoint_every=3"]))


def test_the_final_image_result_is_logged_without_any_snapshot(image_run):
    """log_images_freq > steps: no steps/ folder, but the final layers are in TensorBoard at step 3, and they
    are the run's final outputs (the composite tile is composite.png)."""
    assert not (image_run / "steps").exists()
    logged = events(image_run)
    assert logged.Tags()["images"] == [IMAGE_TAG]
    (final,) = logged.Images(IMAGE_TAG)
    assert final.step == 3
    grid = decoded(final)
    assert grid.shape == (96 + 2 * 4, 5 * (144 + 4) + 4, 3)  # input, edit, alpha, greenscreen, composite
    left = 4 + 4 * (144 + 4)
    composite = grid[4 : 4 + 96, left : left + 144]
    saved = np.asarray(Image.open(image_run / "composite.png"), dtype=np.int16)
    assert np.abs(composite - saved).max() <= 1  # TensorBoard truncates to 8 bits, the PNG rounds


def test_losses_lr_images_and_metrics_share_the_step_numbering(image_run):
    logged = events(image_run)
    for tag in ("train/loss/total", "train/loss/structure", "train/lr", "train/bootstrap_weight"):
        assert scalar_steps(logged, tag) == [1, 2, 3], tag
    assert scalar_steps(logged, "train/loss/bootstrap") == [1]  # computed at the first step only
    assert [e.value for e in logged.Scalars("train/lr")] == pytest.approx([LR0, LR0 * DECAY, LR0 * DECAY**2])
    assert scalar_steps(logged, "eval/clip_score") == [3]
    last = {scalar_steps(logged, "train/loss/total")[-1], image_steps(logged, IMAGE_TAG)[-1]}
    assert last == {scalar_steps(logged, "eval/clip_score")[-1]} == {3}


def test_a_snapshot_at_the_last_step_is_not_logged_twice(tiny_cfg):
    """log_images_freq=1: images at steps 1 and 2, as steps/1 and steps/2; the end adds no second step 2."""
    run_dir = train(tiny_cfg("steps=2", "log_images_freq=1", "checkpoint_every=2", "evaluate=false"))
    assert sorted(p.name for p in (run_dir / "steps").iterdir()) == ["1", "2"]
    logged = events(run_dir)
    assert image_steps(logged, IMAGE_TAG) == [1, 2]
    assert scalar_steps(logged, "train/loss/total") == [1, 2]


def test_the_final_video_result_is_logged_without_any_snapshot(tiny_video_cfg):
    run_dir = train(tiny_video_cfg("steps=2", "log_images_freq=50", "checkpoint_every=2"))
    assert not (run_dir / "steps").exists()
    logged = events(run_dir)
    atlas_tag = "video/foreground_atlas/input|edit|alpha|greenscreen|composite"
    assert sorted(logged.Tags()["images"]) == sorted(["video/frames", atlas_tag])
    assert image_steps(logged, "video/frames") == image_steps(logged, atlas_tag) == [2]
    for tag in ("train/loss/total", "train/loss/foreground/total", "train/lr"):
        assert scalar_steps(logged, tag) == [1, 2], tag
    assert scalar_steps(logged, "eval/frame_consistency") == [2]
