"""Shared fixtures: a tiny, CPU-only, offline configuration of the whole pipeline."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from text2live.config import ASSETS_DIR, CONF_DIR

DATA_DIR = Path(__file__).parent / "data"


@contextmanager
def torch_threads(n: int):
    """``n`` intra-op threads for the block."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_torch_thread():
    """One intra-op thread: test workers share two cores, and oversubscribed threads crawl."""
    return torch_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many small tensor tests: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with one_torch_thread():
        yield


# Overrides that shrink a run to seconds on a CPU: tiny CLIP, a 4-scale 16-channel generator, a 96 px image,
# 4 CLIP views. The method is unchanged; only sizes are.
TINY = [
    "clip=tiny",
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "generator.channels_down=16",
    "generator.channels_up=16",
    "generator.num_scales=4",
    "data.resize_input=96",
    "loss.n_aug=4",
    "steps=3",
    "log_images_freq=2",
    "checkpoint_every=2",
]


def compose_config(overrides: list[str], config_name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


@pytest.fixture(scope="session")
def reference() -> dict:
    """Values computed with the reference implementation (see tests/data/README.md)."""
    return torch.load(DATA_DIR / "text2live_reference_values.pt", weights_only=True)


@pytest.fixture(scope="session")
def cat_path() -> Path:
    return ASSETS_DIR / "cat.png"


@pytest.fixture
def small_cat(tmp_path: Path, cat_path: Path) -> Path:
    """The demo cat at 96 x 144 px."""
    path = tmp_path / "cat_small.png"
    Image.open(cat_path).convert("RGB").resize((144, 96), Image.LANCZOS).save(path)
    return path


@pytest.fixture
def tiny_cfg(tmp_path: Path, small_cat: Path):
    """A factory of tiny run configs: ``tiny_cfg(*extra_overrides, run="name")``."""

    def make(*extra: str, run: str = "run") -> DictConfig:
        base = [
            f"image_path={small_cat}",
            "comp_text=golden cat",
            "src_text=cat",
            "screen_text=golden",
            "bootstrap_text=cat",
            "loss.bootstrap_steps=2",
            f"run_dir={tmp_path / run}",
        ]
        return compose_config(base + TINY + list(extra))

    return make


# a synthetic video: the real NLA architectures with known maps (text2live.nla.synthetic_nla) -------------

VIDEO_FRAMES, VIDEO_HEIGHT, VIDEO_WIDTH = 5, 36, 64

# The whole tiny override list of a video run on the synthetic video: TINY without its image-data keys, plus
# the atlas data's sizes. Use it instead of TINY (not on top of it): `data.resize_input` is not a key of the
# atlas data, so TINY + VIDEO_TINY does not compose.
VIDEO_TINY = [
    *(o for o in TINY if not o.startswith("data.")),
    "data.height=36",
    "data.width=64",
    "data.grid_resolution=200",
    "data.mask_border=4",
    "data.chunk_size=4096",
    "loss.n_aug=2",
]


def write_synthetic_video(folder: Path, num_frames: int = VIDEO_FRAMES, seed: int = 0) -> tuple[Path, Path]:
    """An NLA checkpoint and frames rendered from it (alpha * foreground + (1 - alpha) * background).

    Returns (checkpoint path, frames folder).
    """
    from text2live.io import save_png
    from text2live.nla import synthetic_nla, video_maps
    from text2live.video_data import reconstruct

    nla = synthetic_nla(num_frames, VIDEO_HEIGHT, VIDEO_WIDTH, seed=seed)
    checkpoint = folder / "nla" / "checkpoint"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(nla.checkpoint(), checkpoint)
    maps = video_maps(nla, num_frames, VIDEO_HEIGHT, VIDEO_WIDTH)
    fg = reconstruct(nla, maps.uvs["foreground"], 4096)
    bg = reconstruct(nla, maps.uvs["background"], 4096)
    frames = maps.alpha * fg + (1 - maps.alpha) * bg
    for t in range(num_frames):
        save_png(frames[t], folder / "frames" / f"{t:05d}.png")
    return checkpoint, folder / "frames"


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory) -> tuple[Path, Path]:
    """(NLA checkpoint, frames folder) of a 5-frame 64 x 36 synthetic video, built once per session."""
    return write_synthetic_video(tmp_path_factory.mktemp("video"))


def video_overrides(video: tuple[Path, Path], run_dir: Path) -> list[str]:
    """A foreground edit of the synthetic ``video`` (checkpoint, frames) into ``run_dir``."""
    checkpoint, frames = video
    return [
        "experiment=video",
        f"nla_checkpoint={checkpoint}",
        f"frames_dir={frames}",
        f"num_frames={VIDEO_FRAMES}",
        "comp_text=golden swan",
        "src_text=swan",
        "screen_text=golden",
        f"run_dir={run_dir}",
    ]


@pytest.fixture
def tiny_video_cfg(tmp_path: Path, synthetic_video):
    """A factory of tiny video run configs: ``tiny_video_cfg(*extra_overrides, run="name")``."""

    def make(*extra: str, run: str = "run") -> DictConfig:
        return compose_config(video_overrides(synthetic_video, tmp_path / run) + VIDEO_TINY + list(extra))

    return make


# the command-line entry points, run in this process ----------------------------------------------------------


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one ``error:`` line the command ended with; fails if it printed a traceback or anything else."""
        assert "Traceback" not in self.stdout + self.stderr, self.stdout + self.stderr
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        return lines[0]


def run_cli(main, argv: list[str], capsys, monkeypatch) -> CliResult:
    """Run an entry point's ``main`` (``text2live.cli.train.main`` ...) with ``argv``, as its console script would.

    Use the subprocess form where the process itself matters (signals, exit of the interpreter, a lock held by
    another process); this one costs no interpreter start.
    """
    monkeypatch.setattr(sys, "argv", ["cli", *argv])
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)
