"""A training step computes the same numbers as the step the project's fidelity was established with.

``tests/data/step_values.pt`` holds, for a few steps of a small image run and a small video run, every logged
loss term and the gradient of every generator parameter, computed with the per-view implementation that the
reference-value tests validated (one view, one augmentation, one CLIP call at a time). Any faster way of
computing a step must reproduce them to float32 rounding. ``python tests/test_step_fidelity.py`` rewrites the
file (only do that for a change that is meant to change the numbers).

Both are computed with one CPU thread. The thread count matters: the per-view implementation's own gradient
differs by up to 3e-4 (relative) between 1 and 2 threads, because PyTorch's resize kernel rounds differently per
thread count and the reference's hue change and clamps turn a last-bit difference into a different branch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, VIDEO_TINY, compose_config, torch_threads, video_overrides, write_synthetic_video

from text2live.build import build_system
from text2live.config import ASSETS_DIR

VALUES = Path(__file__).parent / "data" / "step_values.pt"
RTOL = 1e-5
THREADS = 1  # test workers share two cores: more threads per worker would crawl
# small settings, all terms on: 16 views per output, bootstrapping, the full image as a second output at step 0
IMAGE = ["steps=10", "loss.n_aug=16", "loss.bootstrap_steps=5", "bootstrap_text=cat"]
IMAGE_STEPS = (0, 1, 3)
VIDEO = ["steps=10", "loss.n_aug=6", "data.entire_atlas_every=3"]
VIDEO_STEPS = (0, 1, 3)


def image_config(run_dir: Path, *extra: str):
    prompts = ["comp_text=golden cat", "src_text=cat", "screen_text=golden"]
    image = f"image_path={ASSETS_DIR / 'cat.png'}"
    return compose_config([image, *prompts, *TINY, *IMAGE, f"run_dir={run_dir}", *extra])


def video_config(video: tuple[Path, Path], run_dir: Path):
    return compose_config([*video_overrides(video, run_dir), *VIDEO_TINY, *VIDEO])


def step_values(system, datamodule, steps) -> dict[str, dict[str, torch.Tensor]]:
    """``{"<step>": {"terms/<name>": value, "grad/<parameter>": gradient}}`` of each step, from the same weights."""
    logged: dict[str, torch.Tensor] = {}

    def capture(step, terms, extra):
        logged.update({name: value.detach().clone() for name, value in terms.items()})

    system.report_step = capture
    system.step_of = lambda batch: int(batch["step"])
    loader = datamodule.train_dataloader()
    dataset = loader.dataset
    values = {}
    for step in steps:
        system.zero_grad()
        logged.clear()
        total = system.training_step(dataset.sample(step), 0)
        total.backward()
        found = {f"terms/{name}": value for name, value in logged.items()}
        found.update(
            {f"grad/{name}": p.grad.detach().clone() for name, p in system.named_parameters() if p.grad is not None}
        )
        values[str(step)] = found
    return values


def compute(tmp: Path) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    with torch_threads(THREADS):
        system, datamodule = build_system(image_config(tmp / "image"))
        image = step_values(system, datamodule, IMAGE_STEPS)
        video = write_synthetic_video(tmp / "video")
        system, datamodule = build_system(video_config(video, tmp / "video_run"))
        return {"image": image, "video": step_values(system, datamodule, VIDEO_STEPS)}


def relative_error(new: torch.Tensor, old: torch.Tensor) -> float:
    return float((new - old).norm() / old.norm().clamp_min(1e-12))


@pytest.fixture(scope="module")
def values(tmp_path_factory) -> dict:
    return compute(tmp_path_factory.mktemp("fidelity"))


@pytest.fixture(scope="module")
def expected() -> dict:
    return torch.load(VALUES, weights_only=True)


def assert_same_step(new: dict, old: dict, label: str) -> None:
    """Each term to 1e-5 relative; the gradient as one vector to 1e-5 relative, and each parameter's gradient
    within 1e-5 of the whole gradient's norm (the biases of convolutions followed by BatchNorm have a gradient that
    is zero but for rounding, so their own relative error means nothing)."""
    assert set(new) == set(old), f"{label}: other terms or parameters"
    for key in (k for k in old if k.startswith("terms/")):
        error = relative_error(new[key], old[key])
        assert error <= RTOL, f"{label}: {key} differs by {error:.2e} (relative)"
    grads = [k for k in old if k.startswith("grad/")]
    old_all = torch.cat([old[k].flatten() for k in grads])
    new_all = torch.cat([new[k].flatten() for k in grads])
    assert relative_error(new_all, old_all) <= RTOL, f"{label}: the gradient differs"
    scale = old_all.norm()
    worst = max(grads, key=lambda k: float((new[k] - old[k]).norm()))
    error = float((new[worst] - old[worst]).norm() / scale)
    assert error <= RTOL, f"{label}: {worst} differs by {error:.2e} of the gradient's norm"


@pytest.mark.parametrize("kind", ["image", "video"])
def test_step_terms_and_gradients_equal_the_per_view_implementation(values, expected, kind):
    for step, old in expected[kind].items():
        assert_same_step(values[kind][step], old, f"{kind} step {step}")


# options that may change speed and memory, never the numbers (each against the stored image steps)
OPTIONS = ["clip.checkpoint_views=true"]


@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_for_speed_or_memory_changes_no_number(expected, tmp_path, option):
    with torch_threads(THREADS):
        system, datamodule = build_system(image_config(tmp_path, option))
        values = step_values(system, datamodule, IMAGE_STEPS[:2])
    for step, new in values.items():
        assert_same_step(new, expected["image"][step], f"{option}, step {step}")


def test_the_steps_exercise_every_term(expected):
    terms = {key for step in expected["image"].values() for key in step if key.startswith("terms/")}
    assert {"terms/bootstrap", "terms/structure", "terms/composition", "terms/direction", "terms/screen"} <= terms


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        torch.save(compute(Path(folder)), VALUES)
    print(f"wrote {VALUES}", file=sys.stderr)
