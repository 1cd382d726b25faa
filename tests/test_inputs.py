"""Bad inputs fail with one clear sentence and leave nothing that looks finished; odd images are converted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, compose_config
from PIL import Image

from text2live import runs
from text2live.build import build_system
from text2live.errors import ConfigError, InputError, NonFiniteLossError
from text2live.io import load_image
from text2live.losses import LossStack
from text2live.render import load_generator
from text2live.training import train

PROMPTS = ["comp_text=golden cat", "src_text=cat", "screen_text=golden"]


def assert_not_finished(run_dir: Path) -> None:
    assert not (run_dir / runs.DONE_FILE).exists()
    assert not (run_dir / "edit.png").exists()
    assert not (run_dir / runs.CHECKPOINT_DIR / runs.FINAL_CHECKPOINT).exists()


def one_sentence(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# bad inputs, in process -------------------------------------------------------------------------------


def test_missing_image_is_an_input_error(tiny_cfg, tmp_path):
    missing = tmp_path / "no_such_cat.png"
    with pytest.raises(InputError) as exc:
        train(tiny_cfg(f"image_path={missing}"))
    message = one_sentence(exc)
    assert f"image_path={missing} does not exist" in message
    assert_not_finished(tmp_path / "run")


def test_unreadable_image_is_an_input_error(tiny_cfg, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture\n")
    with pytest.raises(InputError) as exc:
        train(tiny_cfg(f"image_path={fake}"))
    assert f"cannot read {fake} as an image" in one_sentence(exc)
    assert_not_finished(tmp_path / "run")


@pytest.mark.parametrize("side", [12, 20])
def test_image_below_the_generator_minimum_is_an_input_error(tiny_cfg, tmp_path, side):
    """12 px is below 2**4 + 1 = 17 outright; 20 px passes, but its smallest training crop (13 px) does not."""
    small = tmp_path / "small.png"
    Image.new("RGB", (side, side), (200, 100, 50)).save(small)
    with pytest.raises(InputError) as exc:
        train(tiny_cfg(f"image_path={small}", "data.resize_input=-1"))
    message = one_sentence(exc)
    assert f"is {side}x{side} pixels" in message
    assert "the generator needs at least 17" in message
    assert_not_finished(tmp_path / "run")


def test_resize_input_rescues_a_small_image(tmp_path, tiny_cfg):
    """The same 20 px image is accepted once resized to 96 px (and its minimum lowered): the generator check is
    on what the generator gets."""
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 30), (200, 100, 50)).save(small)
    _, datamodule = build_system(tiny_cfg(f"image_path={small}", "data.resize_input=96", "data.min_input_side=20"))
    assert tuple(datamodule.image.shape) == (1, 3, 144, 96)


@pytest.mark.parametrize(
    ("override", "key"),
    [("comp_text=''", "comp_text"), ("src_text='   '", "src_text"), ("screen_text=[golden,'']", "screen_text")],
)
def test_empty_prompt_is_a_config_error(tiny_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError) as exc:
        train(tiny_cfg(override))
    assert one_sentence(exc).startswith(f"{key} is empty")
    assert not (tmp_path / "run").exists()


def test_missing_prompt_is_a_config_error(small_cat, tmp_path):
    cfg = compose_config([f"image_path={small_cat}", "src_text=cat", "screen_text=golden", f"run_dir={tmp_path / 'r'}"])
    with pytest.raises(ConfigError) as exc:
        train(cfg)
    assert one_sentence(exc) == (
        "comp_text is not set: pass comp_text=... on the command line (or choose an experiment= that sets it)"
    )
    assert not (tmp_path / "r").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    """The structure term turns NaN in step 3 (its third call); the step-2 checkpoint stays loadable."""
    original = LossStack.structure_loss
    calls = []

    def structure_loss(self, inputs, composites):
        calls.append(len(calls))
        loss = original(self, inputs, composites)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(LossStack, "structure_loss", structure_loss)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as exc:
        train(tiny_cfg())
    assert exc.value.step == 3  # counted from 1, as TensorBoard and the snapshots count
    assert exc.value.terms == ["structure"]
    message = one_sentence(exc)
    assert "the loss term(s) structure became non-finite at step 3" in message
    assert exc.value.exit_code == 3
    assert_not_finished(run_dir)

    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    generator, _ = load_generator(run_dir)
    assert all(torch.isfinite(p).all() for p in generator.parameters())
    with torch.no_grad():
        out = generator(torch.rand(1, 3, 40, 40))
    assert torch.isfinite(out).all()


# image conversion -------------------------------------------------------------------------------------


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 128], [255, 64]], dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png")
    assert t.shape == (3, 2, 2)
    assert t.dtype == torch.float32
    for c in range(3):
        torch.testing.assert_close(t[c], torch.from_numpy(gray / 255.0).float())


def test_palette_becomes_its_colours_and_transparent_entries_white(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 10, 200, 30])
    img.putdata([0, 2, 1])
    img.save(tmp_path / "opaque.png")
    img.save(tmp_path / "transparent.png", transparency=1)
    red, green = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([10, 200, 30]) / 255.0
    t = load_image(tmp_path / "opaque.png")
    torch.testing.assert_close(t[:, 0].T, torch.stack([red, green, torch.tensor([0.0, 0.0, 1.0])]))
    t = load_image(tmp_path / "transparent.png")
    torch.testing.assert_close(t[:, 0].T, torch.stack([red, green, torch.ones(3)]))


def test_rgba_is_composited_over_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (3, 1, 3)
    torch.testing.assert_close(t[:, 0, 0], torch.ones(3))  # fully transparent: white, whatever its colour
    torch.testing.assert_close(t[:, 0, 1], torch.tensor([0.0, 0.0, 1.0]))  # opaque keeps its colour
    torch.testing.assert_close(t[:, 0, 2], torch.full((3,), 1 - 128 / 255), atol=1.5 / 255, rtol=0)


def test_grayscale_with_alpha_is_composited_over_white(tmp_path):
    la = np.array([[[0, 0], [0, 255], [100, 255]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    t = load_image(tmp_path / "la.png")
    torch.testing.assert_close(t[:, 0], torch.tensor([[1.0, 0.0, 100 / 255]] * 3))


def test_sixteen_bit_grayscale_is_scaled_to_unit_range(tmp_path):
    values = np.array([[0, 32768, 65535, 1000]] * 2, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    t = load_image(tmp_path / "g16.png")
    assert t.shape == (3, 2, 4)
    torch.testing.assert_close(t[0, 0], torch.tensor([0.0, 32768 / 65535, 1.0, 1000 / 65535]))
    assert t[0, 0, 1].item() == pytest.approx(0.5, abs=1e-4)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])


def test_sixteen_bit_grayscale_is_scaled_the_same_when_resized(tmp_path):
    values = np.array([[0, 32768, 65535, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    t = load_image(tmp_path / "g16.png", resize_shorter=8)
    assert t.shape == (3, 8, 8)
    assert t.min().item() == 0.0
    assert t.max().item() == pytest.approx(1.0, abs=1e-6)


def test_dark_sixteen_bit_image_keeps_its_brightness_when_resized(tmp_path):
    Image.fromarray(np.full((4, 6), 200, dtype=np.uint16)).save(tmp_path / "dark16.png")
    unresized = load_image(tmp_path / "dark16.png")
    resized = load_image(tmp_path / "dark16.png", resize_shorter=8)
    assert unresized[0, 0, 0].item() == pytest.approx(200 / 65535)
    assert resized[0, 0, 0].item() == pytest.approx(200 / 65535, rel=1e-3)


def test_cmyk_is_converted(tmp_path):
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    torch.testing.assert_close(load_image(tmp_path / "c.jpg"), torch.ones(3, 4, 4))


def test_exif_orientation_is_applied(tmp_path):
    """Stored 40 x 20 (left half red, right half blue) with Orientation 6 (rotate 90 clockwise to display)."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    t = load_image(tmp_path / "rotated.jpg")
    assert t.shape == (3, 40, 20)  # H and W swapped relative to the stored pixels
    red, blue = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(t[:, 2:16].mean((1, 2)), red, atol=0.03, rtol=0)  # the left half is now on top
    torch.testing.assert_close(t[:, 24:38].mean((1, 2)), blue, atol=0.03, rtol=0)


@pytest.mark.parametrize(("size", "expected"), [((60, 40), (20, 30)), ((40, 60), (30, 20)), ((30, 20), (20, 30))])
def test_resize_shorter_side_as_pil_bilinear(tmp_path, size, expected):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    t = load_image(tmp_path / "x.png", resize_shorter=20)
    assert tuple(t.shape) == (3, *expected)
    reference = np.asarray(Image.fromarray(pixels).resize(expected[::-1], Image.BILINEAR), dtype=np.float32) / 255
    torch.testing.assert_close(t, torch.from_numpy(reference).permute(2, 0, 1))
    untouched = load_image(tmp_path / "x.png", resize_shorter=-1)
    torch.testing.assert_close(untouched, torch.from_numpy(pixels / np.float32(255)).permute(2, 0, 1))


# the command line -------------------------------------------------------------------------------------

TINY_CLI = [*TINY, "steps=2"]


def run_cli(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_missing_image(tmp_path):
    missing = tmp_path / "nope.png"
    run_dir = tmp_path / "run"
    result = run_cli(
        "text2live.cli.train", *TINY_CLI, *PROMPTS, f"image_path={missing}", f"run_dir={run_dir}", cwd=tmp_path
    )
    assert result.returncode == InputError.exit_code
    assert error_line(result) == f"error: image_path={missing} does not exist: pass the path of an image file"
    assert_not_finished(run_dir)


def test_cli_missing_prompt(tmp_path, small_cat):
    run_dir = tmp_path / "run"
    args = [*TINY_CLI, f"image_path={small_cat}", "src_text=cat", "screen_text=golden", f"run_dir={run_dir}"]
    result = run_cli("text2live.cli.train", *args, cwd=tmp_path)
    assert result.returncode == ConfigError.exit_code
    assert error_line(result).startswith("error: comp_text is not set")
    assert_not_finished(run_dir)


def test_cli_render_of_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli("text2live.cli.render", f"run_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == InputError.exit_code
    assert error_line(result) == (
        f"error: {tmp_path} is not a text2live run folder (no config.yaml): pass run_dir=<run folder>"
    )


@pytest.fixture(scope="module")
def unknown_key_result(tmp_path_factory) -> subprocess.CompletedProcess:
    tmp = tmp_path_factory.mktemp("unknown_key")
    return run_cli(
        "text2live.cli.train", *TINY_CLI, *PROMPTS, "image_path=x.png", f"run_dir={tmp / 'run'}", "foo=1", cwd=tmp
    )


def test_cli_unknown_key_is_refused(unknown_key_result):
    assert unknown_key_result.returncode != 0
    assert "Traceback" not in unknown_key_result.stderr
    assert "'foo'" in unknown_key_result.stderr
    assert "+foo=1" in unknown_key_result.stderr  # Hydra's hint for adding a key on purpose


def test_cli_unknown_key_gets_an_error_line(unknown_key_result):
    assert "foo" in error_line(unknown_key_result)
