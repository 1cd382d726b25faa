"""Training moves the edit layer toward what its loss asks for (tiny CLIP, small generator, a few dozen steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image

from text2live.build import build_system
from text2live.training import train
from text2live.views import resize

ONLY_BOOTSTRAP = [
    "loss.bootstrap_steps=1000",
    "loss.bootstrap_schedule=none",
    "loss.lambda_structure=0",
    "loss.lambda_composition=0",
    "loss.lambda_sparsity=0",
    "loss.lambda_screen=0",
]
ONLY_SPARSITY = [
    "loss.bootstrap_steps=0",
    "loss.lambda_structure=0",
    "loss.lambda_composition=0",
    "loss.lambda_screen=0",
]


def _alpha_png(run_dir) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(run_dir / "alpha.png"), dtype=np.float32) / 255.0)[None, None]


def _initial_alpha(cfg) -> torch.Tensor:
    system, datamodule = build_system(cfg)  # seeded: the generator the run starts from
    return system.render(datamodule.image)["alpha"]


def test_bootstrap_pulls_alpha_toward_the_relevancy_map(tiny_cfg) -> None:
    cfg = tiny_cfg(*ONLY_BOOTSTRAP, "steps=25", "log_images_freq=0", "checkpoint_every=25")
    before = _initial_alpha(cfg)
    run_dir = train(cfg)

    guide = instantiate(cfg.clip)
    system, datamodule = build_system(cfg)
    image = datamodule.image
    target = guide.relevancy(resize(image, (224, 224)), guide.relevancy_text("cat"))

    def error(alpha: torch.Tensor) -> float:
        return F.mse_loss(resize(alpha, (224, 224))[:, 0], target).item()

    start, end = error(before), error(_alpha_png(run_dir))
    assert end < 0.4 * start, (start, end)


def test_sparsity_alone_drives_alpha_toward_zero(tiny_cfg) -> None:
    cfg = tiny_cfg(*ONLY_SPARSITY, "steps=40", "log_images_freq=0", "checkpoint_every=40")
    before = _initial_alpha(cfg).mean().item()
    after = _alpha_png(train(cfg)).mean().item()
    assert before == pytest.approx(0.5, abs=0.1)  # sigmoid of near-zero logits at initialisation
    assert after < before - 0.1, (before, after)
