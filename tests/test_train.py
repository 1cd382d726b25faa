"""End-to-end runs of ``train`` (tiny config, CPU): the run folder, its logs, resumption, determinism, rendering."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY, compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from text2live import runs
from text2live.config import ASSETS_DIR
from text2live.errors import ConfigError, InputError
from text2live.generator import SkipGenerator
from text2live.io import load_image
from text2live.render import render
from text2live.system import ImageEditSystem
from text2live.training import train

OUTPUTS = ("edit.png", "alpha.png", "edit_on_greenscreen.png", "composite.png", "layer_rgba.png")
LR0, DECAY = 0.0025, 0.99


def make_cfg(image: Path, run_dir: Path, *extra: str):
    base = [
        f"image_path={image}",
        "comp_text=golden cat",
        "src_text=cat",
        "screen_text=golden",
        "bootstrap_text=cat",
        "loss.bootstrap_steps=2",
        f"run_dir={run_dir}",
    ]
    return compose_config(base + TINY + list(extra))


def pngs(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in OUTPUTS}


def generator_weights(run_dir: Path, name: str = runs.FINAL_CHECKPOINT) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / runs.CHECKPOINT_DIR / name, map_location="cpu", weights_only=True)["state_dict"]


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def scalars(run_dir: Path) -> tuple[EventAccumulator, dict[str, list[tuple[int, float]]]]:
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events, {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def cat96(workdir: Path) -> Path:
    """The demo cat at 96 x 144 px (the same recipe as conftest's ``small_cat``, shared by this module's runs)."""
    path = workdir / "cat96.png"
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def finished(workdir: Path, cat96: Path) -> Path:
    """A finished 3-step run (images and checkpoints every 2 steps)."""
    return train(make_cfg(cat96, workdir / "main"))


# the run folder ---------------------------------------------------------------------------------------


def test_run_folder_holds_every_output(finished, cat96):
    top = {p.name for p in finished.iterdir()}
    assert {"config.yaml", "git_revision.txt", "tb", "steps", "checkpoints", "DONE", *OUTPUTS} <= top
    assert (finished / "DONE").read_text() == "3 steps\n"
    assert sorted(p.name for p in (finished / "steps").iterdir()) == ["2"]  # every log_images_freq=2 steps
    assert sorted(p.name for p in (finished / "steps" / "2").iterdir()) == sorted(OUTPUTS)
    assert sorted(p.name for p in (finished / "checkpoints").iterdir()) == ["final.ckpt", "last.ckpt"]
    assert not list(finished.rglob("*.part"))

    done = (finished / "DONE").stat().st_mtime_ns
    written = [p for p in finished.rglob("*") if p.is_file() and "render" not in p.relative_to(finished).parts]
    assert all(p.stat().st_mtime_ns <= done for p in written)  # DONE is written last

    revision = (finished / "git_revision.txt").read_text()
    assert re.fullmatch(r"([0-9a-f]{40}(-dirty)?|unknown)\n", revision)


def test_config_yaml_is_resolved(finished, cat96):
    text = (finished / "config.yaml").read_text()
    assert "${" not in text and "???" not in text
    saved = OmegaConf.load(finished / "config.yaml")
    expected = OmegaConf.to_container(make_cfg(cat96, finished), resolve=True)
    assert OmegaConf.to_container(saved) == expected
    assert saved.loss.comp_text == "golden cat"
    assert saved.data.image_path == str(cat96)
    assert saved.data.min_side == 17  # 2 ** num_scales + 1 with num_scales=4
    assert saved.logger.save_dir == str(finished)


def test_final_images_are_consistent(finished, cat96):
    edit = np.asarray(Image.open(finished / "edit.png"))
    alpha = np.asarray(Image.open(finished / "alpha.png"))
    rgba = Image.open(finished / "layer_rgba.png")
    assert edit.shape == (96, 144, 3) and alpha.shape == (96, 144)
    assert rgba.mode == "RGBA" and rgba.size == (144, 96)
    layer = np.asarray(rgba)
    assert np.array_equal(layer[..., :3], edit)
    assert np.array_equal(layer[..., 3], alpha)

    image = load_image(cat96, 96).permute(1, 2, 0).numpy()
    a, e = alpha[..., None] / 255.0, edit / 255.0
    composite = np.asarray(Image.open(finished / "composite.png")) / 255.0
    np.testing.assert_allclose(composite, (1 - a) * image + a * e, atol=2.5 / 255)
    greenscreen = np.asarray(Image.open(finished / "edit_on_greenscreen.png")) / 255.0
    np.testing.assert_allclose(greenscreen, (1 - a) * np.array([0, 177, 64]) / 255 + a * e, atol=2.5 / 255)


def test_checkpoints_hold_the_generator_only(finished):
    expected = {f"generator.{k}" for k in SkipGenerator(16, 16, 4, 4).state_dict()}
    for name, step in ((runs.LAST_CHECKPOINT, 2), (runs.FINAL_CHECKPOINT, 3)):
        checkpoint = torch.load(finished / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert checkpoint["global_step"] == step
        assert set(checkpoint["state_dict"]) == expected  # no frozen CLIP, no text embeddings
        assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    last, final = generator_weights(finished, runs.LAST_CHECKPOINT), generator_weights(finished)
    assert any(not torch.equal(last[k], final[k]) for k in final if k.endswith("weight"))


def test_tensorboard_logs_losses_lr_and_images(finished):
    events_files = list((finished / "tb").glob("events.out.tfevents.*"))
    assert len(events_files) == 2  # training, then the end-of-run evaluation (metrics and hparams)
    events, logged = scalars(finished)
    for tag in ("train/loss/structure", "train/loss/total", "train/lr", "train/bootstrap_weight"):
        assert [step for step, _ in logged[tag]] == [1, 2, 3], tag  # completed steps, as snapshots and metrics

    # linear bootstrap schedule: 10 * (1 - (t + 1) / 2) for t < bootstrap_steps=2, then off
    assert [w for _, w in logged["train/bootstrap_weight"]] == [5.0, 0.0, 0.0]
    value = {tag: dict(points) for tag, points in logged.items()}
    for t in (1, 2, 3):
        terms = {name: value[f"train/loss/{name}"][t] for name in ("structure", "composition", "direction", "screen")}
        sparsity = value["train/loss/sparsity"][t]
        l1, l0 = value["train/loss/sparsity_l1"][t], value["train/loss/sparsity_l0"][t]
        assert sparsity == pytest.approx(0.01 * l1 + 0.01 * l0)
        total = 2 * terms["structure"] + terms["composition"] + terms["direction"] + 6 * sparsity + terms["screen"]
        if value["train/bootstrap_weight"][t] > 0:
            total += value["train/bootstrap_weight"][t] * value["train/loss/bootstrap"][t]
        assert value["train/loss/total"][t] == pytest.approx(total, rel=1e-5)

    (image_tag,) = events.Tags()["images"]
    images = events.Images(image_tag)
    assert [event.step for event in images] == [2, 3]  # the step-2 snapshot, then the final result
    # one row of 5 tiles (input, edit, alpha, green screen, composite) of 144 x 96 with 4 px padding
    assert all((event.width, event.height) == (5 * (144 + 4) + 4, 96 + 2 * 4) for event in images)


def test_a_term_that_is_not_computed_is_not_logged(finished):
    _, logged = scalars(finished)
    assert [step for step, _ in logged["train/loss/bootstrap"]] == [1]


def test_learning_rate_decays_per_step(finished):
    _, logged = scalars(finished)
    for step, lr in logged["train/lr"]:  # logged at the number of completed steps: the rate of step (step - 1)
        assert lr == pytest.approx(LR0 * DECAY ** (step - 1), rel=1e-6)
    for name, step in ((runs.LAST_CHECKPOINT, 2), (runs.FINAL_CHECKPOINT, 3)):
        checkpoint = torch.load(finished / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(LR0 * DECAY**step, rel=1e-12)


@pytest.mark.parametrize("optim", ["madgrad", "adam"])
def test_learning_rate_schedule_has_a_floor(optim):
    cfg = compose_config(["clip=tiny", f"optim={optim}"])
    system = ImageEditSystem(
        SkipGenerator(4, 4, 0, 1), None, instantiate(cfg.optim.optimizer), cfg.optim.lr_decay, cfg.optim.min_lr
    )
    config = system.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(700):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [max(1e-5, LR0 * DECAY**t) for t in range(700)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[549] > 1e-5 and lrs[550] == pytest.approx(1e-5)  # 0.0025 * 0.99**550 < 1e-5


# re-running -------------------------------------------------------------------------------------------


def test_finished_run_is_not_redone(finished, cat96):
    before = snapshot(finished)
    assert train(make_cfg(cat96, finished)) == finished
    # presentation keys (image and checkpoint frequency) may change; the run is still finished
    assert train(make_cfg(cat96, finished, "log_images_freq=1", "checkpoint_every=1")) == finished
    assert snapshot(finished) == before


@pytest.mark.parametrize(
    ("override", "named"),
    [("seed=1", "seed: 0 -> 1"), ("loss.lambda_structure=3.0", "loss.lambda_structure: 2.0 -> 3.0")],
)
def test_a_different_config_is_refused(finished, cat96, override, named):
    before = snapshot(finished)
    with pytest.raises(ConfigError) as exc:
        train(make_cfg(cat96, finished, override))
    assert named in str(exc.value)
    assert str(exc.value).startswith(f"{finished} already holds a different run")
    assert snapshot(finished) == before


# determinism and resumption ---------------------------------------------------------------------------


def test_same_seed_same_run_other_seed_other_run(finished, workdir, cat96):
    again = train(make_cfg(cat96, workdir / "again"))
    assert pngs(again) == pngs(finished)
    assert pngs(again / "steps" / "2") == pngs(finished / "steps" / "2")
    final, final_again = generator_weights(finished), generator_weights(again)
    assert all(torch.equal(final[k], final_again[k]) for k in final)
    assert scalars(again)[1]["train/loss/total"] == scalars(finished)[1]["train/loss/total"]

    other = train(make_cfg(cat96, workdir / "seed1", "seed=1"))
    assert all(pngs(other)[name] != pngs(finished)[name] for name in OUTPUTS)
    final_other = generator_weights(other)
    assert not all(torch.equal(final[k], final_other[k]) for k in final)


class Interrupted(Exception):
    """Stands in for a crash or a killed job."""


class StepRecorder(pl.Callback):
    """The global step at the start of every optimisation step this trainer runs."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append(trainer.global_step)


class InterruptAt(pl.Callback):
    """Raise before optimisation step ``step`` (after the checkpoint of the steps before it was written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Interrupted(f"stopped before step {self.step}")


def test_an_interrupted_run_resumes_to_the_same_result(workdir, cat96):
    run = partial(make_cfg, cat96)
    uninterrupted = train(run(workdir / "whole", "steps=4"))

    resumed = workdir / "resumed"
    with pytest.raises(Interrupted):
        train(run(resumed, "steps=4"), callbacks=[InterruptAt(3)])
    assert not (resumed / "DONE").exists()
    assert not (resumed / "edit.png").exists()
    last = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert not (resumed / "steps" / "4").exists()
    step2_written = snapshot(resumed / "steps" / "2")

    recorder = StepRecorder()
    assert train(run(resumed, "steps=4"), callbacks=[recorder]) == resumed
    assert recorder.steps == [2, 3]  # continued from the step-2 checkpoint, not from scratch
    assert snapshot(resumed / "steps" / "2") == step2_written
    assert (resumed / "DONE").read_text() == "4 steps\n"
    assert pngs(resumed) == pngs(uninterrupted)
    for step in ("2", "4"):
        assert pngs(resumed / "steps" / step) == pngs(uninterrupted / "steps" / step)
    final, final_resumed = generator_weights(uninterrupted), generator_weights(resumed)
    assert final.keys() == final_resumed.keys()
    assert all(torch.equal(final[k], final_resumed[k]) for k in final)

    _, logged = scalars(uninterrupted)
    _, logged_resumed = scalars(resumed)
    assert dict(logged_resumed["train/loss/total"]) == dict(logged["train/loss/total"])


# rendering --------------------------------------------------------------------------------------------


def test_render_reproduces_the_run_outputs(finished, tmp_path, cat96):
    out = render(finished, out_dir=tmp_path / "again")
    assert out == tmp_path / "again"
    assert pngs(out) == pngs(finished)
    default = render(finished)
    assert default == finished / "render" / cat96.stem
    assert pngs(default) == pngs(finished)


def test_render_edits_another_image(finished, tmp_path):
    other = tmp_path / "wide.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (50, 100, 3), dtype=np.uint8)).save(other)
    out = render(finished, image_path=str(other), out_dir=tmp_path / "wide")
    edit = np.asarray(Image.open(out / "edit.png")) / 255.0
    alpha = np.asarray(Image.open(out / "alpha.png"))[..., None] / 255.0
    assert edit.shape == (96, 192, 3)  # the run's resize_input=96 applies to the new image too
    image = load_image(other, 96).permute(1, 2, 0).numpy()
    composite = np.asarray(Image.open(out / "composite.png")) / 255.0
    np.testing.assert_allclose(composite, (1 - alpha) * image + alpha * edit, atol=2.5 / 255)
    rgba = np.asarray(Image.open(out / "layer_rgba.png"))
    assert rgba.shape == (96, 192, 4)


def test_render_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(InputError, match="is not a text2live run folder"):
        render(tmp_path)
