"""Input guards that run before anything heavy: image size and shape, memory, prompt length.

An image too small to mean anything, one with an extreme aspect ratio, or one whose working size (after
``data.resize_input``) would not fit the device's memory is refused by ``ImageDataModule.setup`` (before
CLIP is loaded) with one sentence that names the override; a prompt longer than CLIP's context is cut with a
warning instead of a crash. The available memory is injected (``text2live.data.available_memory``), so the
memory tests do not depend on the machine that runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from PIL import Image

import text2live.clip_guide as clip_guide
import text2live.data as data
from text2live import runs
from text2live.build import instantiate
from text2live.clip_guide import SCREEN_TEMPLATES, TEMPLATES, PromptTruncatedWarning, compose_prompts
from text2live.data import ImageDataModule
from text2live.errors import ConfigError, InputError
from text2live.training import train  # instantiate unwraps a target's Text2LiveError as t2l-train does

GIB = 2**30
PROMPTS = ["comp_text=golden cat", "src_text=cat", "screen_text=golden"]


def write_image(folder: Path, width: int, height: int, name: str = "input.png") -> Path:
    path = folder / name
    Image.new("RGB", (width, height), (180, 120, 60)).save(path)
    return path


def datamodule(image: Path, *overrides: str) -> ImageDataModule:
    cfg = compose_config([f"image_path={image}", *PROMPTS, *TINY, *overrides])
    return instantiate(cfg.data)


def refusal(image: Path, *overrides: str) -> str:
    """The one-sentence message of the InputError that ``setup`` raises."""
    with pytest.raises(InputError) as exc:
        datamodule(image, *overrides).setup("fit")
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture
def memory(monkeypatch):
    """Sets the memory the check sees: ``memory(24 * GIB)``; plenty (1 TiB) unless a test says otherwise."""

    def set_available(available: int | None, where: str = "on the test machine") -> None:
        monkeypatch.setattr(data, "available_memory", lambda: (available, where))

    set_available(2**40)
    return set_available


# 1. too small to mean anything ---------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(1, 1), (31, 40), (200, 20)])
def test_image_below_min_input_side_is_refused(tmp_path, memory, width, height):
    """Resizing would enlarge them to 96 px and more; what they show is too small to edit."""
    image = write_image(tmp_path, width, height)
    message = refusal(image, "data.max_aspect_ratio=20")
    assert message.startswith(f"{image} is {width}x{height} px, too small to edit")
    assert "below data.min_input_side=32" in message
    assert f"use a larger image, or set data.min_input_side={min(width, height)} to allow it" in message


def test_min_input_side_is_configurable(tmp_path, memory):
    image = write_image(tmp_path, 20, 30)
    dm = datamodule(image, "data.min_input_side=20")
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 144, 96)
    dm = datamodule(write_image(tmp_path, 32, 48, "just_enough.png"))
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 144, 96)


# 2. extreme aspect ratio -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "ratio", "allow"), [(450, 100, "4.5", "4.5"), (100, 5000, "50.0", "50")])
def test_extreme_aspect_ratio_is_refused(tmp_path, memory, width, height, ratio, allow):
    image = write_image(tmp_path, width, height)
    message = refusal(image)
    assert message.startswith(f"{image} is {width}x{height} px, an aspect ratio of {ratio}")
    assert "above data.max_aspect_ratio=4" in message
    assert f"crop the image, or set data.max_aspect_ratio={allow} to allow it" in message


def test_aspect_ratio_at_the_limit_or_allowed_passes(tmp_path, memory):
    dm = datamodule(write_image(tmp_path, 400, 100))  # exactly 4
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 96, 384)
    dm = datamodule(write_image(tmp_path, 100, 450, "tall.png"), "data.max_aspect_ratio=4.5")
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 432, 96)


@pytest.mark.parametrize("override", ["data.max_aspect_ratio=0.5", "data.min_input_side=0"])
def test_guard_settings_out_of_range_are_config_errors(tmp_path, override):
    with pytest.raises(ConfigError) as exc:
        datamodule(write_image(tmp_path, 96, 144), override)
    assert str(exc.value).startswith(override.split("=")[0])


# 3. working size too large for the device's memory ----------------------------------------------------------


def test_estimate_grows_with_the_working_size_and_counts_crop_and_image():
    crops = data.ImageCrops()
    small, large = data.estimate_step_memory(512, 768, crops, 75), data.estimate_step_memory(1024, 1536, crops, 75)
    assert 8 * GIB < small < 14 * GIB  # measured: 13.2 GB (12.3 GiB) on the default method
    assert large - data.STEP_FIXED_BYTES == pytest.approx(4 * (small - data.STEP_FIXED_BYTES), rel=0.01)
    crop_only = data.estimate_step_memory(512, 768, crops, 0)
    full_only = data.estimate_step_memory(512, 768, None, 0)
    assert full_only < crop_only < small


def test_working_size_too_large_for_memory_is_refused(tmp_path, memory):
    """100x5000 becomes 512x25600 with the default resize: hundreds of GB, on a 24 GB machine."""
    memory(22 * GIB, "of RAM is available")
    image = write_image(tmp_path, 5000, 100)
    message = refusal(image, "data.resize_input=512", "data.max_aspect_ratio=60")
    assert message.startswith(f"training on {image} at its working size 25600x512 px needs an estimated ")
    assert "GiB but only 22.0 GiB of RAM is available" in message
    assert "data.resize_input=" in message and "data.check_memory=false to skip this check" in message


def test_refusal_suggests_a_resize_input_that_fits(tmp_path, memory):
    memory(10 * GIB)
    image = write_image(tmp_path, 1536, 1024)
    message = refusal(image, "data.resize_input=1024")
    suggested = int(message.split("set data.resize_input=")[1].split()[0])
    assert 129 <= suggested < 1024 and suggested % 16 == 0
    size = (suggested, suggested * 3 // 2)
    assert data.estimate_step_memory(*size, data.ImageCrops(), 75) <= 10 * GIB


@pytest.mark.parametrize("available_gb", [24, 16])
def test_default_working_size_fits_24_and_16_gb(tmp_path, memory, available_gb):
    """512x768 (the examples' working size) passes with what a 24 or 16 GB machine has free (~90%)."""
    memory(int(available_gb * 1e9 * 0.9))
    dm = datamodule(write_image(tmp_path, 600, 400), "data.resize_input=512")
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 512, 768)


def test_check_memory_false_skips_the_check(tmp_path, memory):
    memory(1 * GIB)
    image = write_image(tmp_path, 96, 144)
    assert "data.check_memory=false" in refusal(image)
    dm = datamodule(image, "data.check_memory=false")
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 144, 96)


def test_available_memory_reads_meminfo_then_sysconf(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683584 kB\nMemFree:  1000 kB\nMemAvailable:   23205952 kB\n")
    assert data.ram_available(meminfo) == 23205952 * 1024
    meminfo.write_text("MemTotal:       24683584 kB\nMemFree:  1000 kB\n")  # old kernels: no MemAvailable
    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_AVPHYS_PAGES": 3, "SC_PAGE_SIZE": 4096}[name])
    assert data.ram_available(meminfo) == 3 * 4096
    assert data.ram_available(tmp_path / "missing") == 3 * 4096


def test_available_memory_is_the_gpu_when_cuda_is_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (5 * GIB, 80 * GIB))
    assert data.available_memory() == (5 * GIB, "is free on cuda:0")

    def no_report(device=None):
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_report)
    assert data.available_memory() == (None, "is free on cuda:0")  # unknown: the check is skipped
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(data, "ram_available", lambda path=None: 7 * GIB)
    assert data.available_memory() == (7 * GIB, "of RAM is available")


def test_unknown_available_memory_skips_the_check(tmp_path, memory):
    memory(None)
    dm = datamodule(write_image(tmp_path, 96, 144))
    dm.setup("fit")
    assert tuple(dm.image.shape) == (1, 3, 144, 96)


# the command line, as the user meets it --------------------------------------------------------------------

CLI = [
    "clip=tiny",
    "trainer=cpu",
    "generator.channels_down=16",
    "generator.channels_up=16",
    "generator.num_scales=4",
    "loss.n_aug=4",
    "steps=2",
    *PROMPTS,
]


def run_train(image: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    t2l_train = Path(sys.executable).with_name("t2l-train")
    command = [str(t2l_train)] if t2l_train.is_file() else [sys.executable, "-m", "text2live.cli.train"]
    args = [*command, f"image_path={image}", *CLI, f"run_dir={run_dir}", *extra]
    return subprocess.run(args, cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=120)


def refused_line(result: subprocess.CompletedProcess, run_dir: Path) -> str:
    """Exit code 2, exactly one non-empty stderr line (``error: ...``), no traceback, nothing finished."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert not (run_dir / runs.DONE_FILE).exists()
    assert not (run_dir / "composite.png").exists()
    return lines[0]


def test_cli_refuses_a_one_pixel_image(tmp_path):
    image, run_dir = write_image(tmp_path, 1, 1), tmp_path / "run"
    line = refused_line(run_train(image, run_dir), run_dir)
    assert line.startswith(f"error: {image} is 1x1 px, too small to edit")
    assert "set data.min_input_side=1 to allow it" in line


def test_cli_refuses_an_extreme_aspect_ratio(tmp_path):
    image, run_dir = write_image(tmp_path, 5000, 100), tmp_path / "run"
    line = refused_line(run_train(image, run_dir), run_dir)
    assert line.startswith(f"error: {image} is 5000x100 px, an aspect ratio of 50.0")
    assert "set data.max_aspect_ratio=50 to allow it" in line


def test_cli_refuses_a_working_size_larger_than_memory(tmp_path):
    """32x8000 allowed as to shape becomes 128000x512: the estimate (~1 TB) exceeds the machine's RAM."""
    estimate = data.estimate_step_memory(512, 128000, data.ImageCrops(), 75)
    if data.ram_available() >= estimate:
        pytest.skip(f"this machine has more than {estimate / GIB:.0f} GiB of RAM available")
    image, run_dir = write_image(tmp_path, 8000, 32), tmp_path / "run"
    line = refused_line(run_train(image, run_dir, "data.max_aspect_ratio=300"), run_dir)
    assert line.startswith(f"error: training on {image} at its working size 128000x512 px needs an estimated ")
    assert "of RAM is available" in line and "data.check_memory=false" in line


# 5. prompts longer than CLIP's context ---------------------------------------------------------------------

LONG = " ".join(f"word{i}" for i in range(60))  # about 120 BPE tokens


@pytest.fixture
def guide(monkeypatch):
    monkeypatch.setattr(clip_guide, "_WARNED_PROMPTS", set())
    return instantiate(compose_config(["clip=tiny"]).clip)


def test_long_prompt_is_cut_with_one_warning(guide):
    with pytest.warns(PromptTruncatedWarning) as record:
        rows = guide.text_embeddings(["golden cat", LONG], TEMPLATES)
    assert len(record) == 1  # once for the prompt, not once per template
    message = str(record[0].message)
    assert message.startswith(f'the prompt "{LONG[:30]}')
    assert "longer than CLIP's 77 tokens" in message
    # the longest template, "a high quality image of {}.", leaves the prompt 75 - 6 = 69 tokens: "word0" to
    # "word9" take 2 each, "word10" to "word25" 3 each (and one of "word26"'s)
    assert 'in "a high quality image of {}."), so CLIP reads it cut after "... word23 word24 word25"' in message
    kept = " ".join(LONG.split()[:26])
    tokenize = clip_guide.clip.tokenize
    assert tokenize(f"a high quality image of {kept}.")[0, -1] == 0  # fits: the context is not full
    assert torch.equal(
        tokenize(f"a high quality image of {kept} word26.", truncate=True),
        tokenize(f"a high quality image of {LONG}.", truncate=True),
    )
    # the cut is clip.tokenize's (truncate=True), so the embeddings are those of the cut text
    assert torch.equal(rows, guide.encode_text(compose_prompts(["golden cat", LONG], TEMPLATES)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide.text_embeddings(LONG, SCREEN_TEMPLATES)  # already reported: no second warning
        guide.relevancy_text([LONG])


def test_relevancy_prompt_too_long_is_cut_with_a_warning(guide):
    with pytest.warns(PromptTruncatedWarning, match='cut after "... word25 word26 word27"'):
        guide.relevancy_text([LONG + " more words"])


def test_a_run_with_a_long_prompt_finishes(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(clip_guide, "_WARNED_PROMPTS", set())
    with pytest.warns(PromptTruncatedWarning, match='the prompt "word0 word1'):
        run_dir = train(tiny_cfg(f"comp_text={LONG}", "steps=1", "evaluate=false"))
    assert (run_dir / runs.DONE_FILE).exists() and (run_dir / "composite.png").exists()


def test_normal_prompts_give_no_warning(guide):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide.text_embeddings(["golden cat", "cat made of gold"], TEMPLATES)
        guide.text_embeddings("golden", SCREEN_TEMPLATES)
        guide.relevancy_text("cat")


# 6. the config keys ------------------------------------------------------------------------------------------


def test_guard_keys_are_in_the_image_data_config(small_cat):
    cfg = compose_config([f"image_path={small_cat}", *PROMPTS])
    assert (cfg.data.min_input_side, cfg.data.max_aspect_ratio, cfg.data.check_memory) == (32, 4.0, True)
    dm = datamodule(small_cat, "data.min_input_side=8", "data.max_aspect_ratio=2.5", "data.check_memory=false")
    assert (dm.min_input_side, dm.max_aspect_ratio, dm.check_memory) == (8, 2.5, False)
