"""Shared fixtures: a tiny, CPU-only, offline configuration of the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from text2live.config import ASSETS_DIR, CONF_DIR

DATA_DIR = Path(__file__).parent / "data"

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
