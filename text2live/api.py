"""Text2LIVE from Python (notebooks, scripts): edit an image in one call, re-render a finished run.

    from text2live import api

    result = api.edit_image("cat.png", comp_text="golden cat", src_text="cat", screen_text="golden",
                            bootstrap_text="cat", steps=300)
    result.composite            # [3, H, W] in [0, 1]; also .edit, .alpha, .edit_on_greenscreen, .rgba
    result.metrics              # CLIP score, preservation ... (``evaluate=False`` skips them)

    api.edit_image(experiment="golden_cat", run_dir="outputs/golden_cat/seed0")   # keep the run folder
    api.render_run("outputs/golden_cat/seed0", image="other_cat.jpg")             # a finished run, another image

Keyword settings are the command line's keys: a config group takes an option name (``clip="vit_b16"``,
``experiment="golden_cat"``), any other key a value; nested keys are spelled with dots through a dictionary
(``**{"loss.lambda_structure": 3.0}``) or with double underscores (``loss__lambda_structure=3.0``).
``overrides=[...]`` takes command-line overrides as strings. Errors are :class:`text2live.errors.Text2LiveError`
with the same one-sentence messages as the commands.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from text2live import runs
from text2live.config import CONF_DIR
from text2live.errors import ConfigError

log = logging.getLogger("text2live")


@dataclass
class EditResult:
    """The layers of an edited image, each [C, H, W] in [0, 1] on the CPU."""

    edit: torch.Tensor  # RGB of the edit layer
    alpha: torch.Tensor  # its opacity, 1 channel
    composite: torch.Tensor  # (1 - alpha) * input + alpha * edit
    edit_on_greenscreen: torch.Tensor
    image_path: str
    run_dir: Path | None = None  # None: the run was trained in a temporary folder, now removed
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def rgba(self) -> torch.Tensor:
        """The edit layer with its alpha, [4, H, W]."""
        return torch.cat([self.edit, self.alpha])


@dataclass
class VideoResult:
    """A re-rendered video run: the edited frames and each edited layer's visible RGBA frames, [T, C, H, W]."""

    frames: torch.Tensor
    layers: dict[str, torch.Tensor]
    run_dir: Path


def compose(overrides: Sequence[str] = (), config_name: str = "train", **settings: Any) -> DictConfig:
    """The config the command line would compose from ``overrides`` and keyword ``settings``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    groups, values = [], {}
    for key, value in settings.items():
        key = key.replace("__", ".")
        if (CONF_DIR / key.replace(".", "/")).is_dir():
            groups.append(f"{key}={value}")
        else:
            values[key] = value
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR), job_name="text2live"):
            cfg = hydra_compose(config_name, overrides=[*groups, *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        reason = " ".join(str(exc).split("Config search path")[0].split())
        raise ConfigError(f"the config cannot be composed ({reason}): check the overrides and settings") from None
    for key, value in values.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node.keys():  # noqa: SIM118 (`in node` misses ??? keys)
            raise ConfigError(f"unknown config key '{key}': `t2l-{config_name} --help` lists the keys")
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def edit_image(
    image: str | Path | None = None,
    *,
    run_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    config: DictConfig | None = None,
    **settings: Any,
) -> EditResult:
    """Train an edit of ``image`` and return its layers.

    ``config``: a composed config to start from (:func:`compose`, or a run's ``config.yaml``); otherwise the
    config is composed from ``overrides`` and ``settings``. ``run_dir``: where the run is written and kept (a
    finished run there is not trained again, an unfinished one resumes); by default a temporary folder that is
    removed once the layers are read.
    """
    from text2live.build import is_video
    from text2live.render import image_run_layers
    from text2live.training import train

    cfg = config.copy() if config is not None else compose(overrides, **settings)
    if config is not None and (overrides or settings):
        raise ConfigError("pass either config= or overrides/settings, not both: compose() merges them")
    if image is not None:
        with open_dict(cfg):
            cfg.image_path = str(image)
    if is_video(cfg):
        raise ConfigError("this config edits a video: use t2l-train (or text2live.training.train) for videos")
    with _run_folder(run_dir) as folder:
        with open_dict(cfg):
            cfg.run_dir = str(folder)
        with _log_to(folder / "train.log"):
            train(cfg)
        layers, path = image_run_layers(folder)
        metrics_file = folder / runs.METRICS_FILE
        metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() else {}
        return EditResult(
            **{name: layers[name][0] for name in ("edit", "alpha", "composite", "edit_on_greenscreen")},
            image_path=path,
            run_dir=None if run_dir is None else folder,
            metrics=metrics,
        )


def render_run(run_dir: str | Path, image: str | Path | None = None) -> EditResult | VideoResult:
    """The layers of a finished (or checkpointed) run: an image run's of its image or of ``image``; a video
    run's edited frames and layers."""
    from text2live.build import is_video
    from text2live.render import image_run_layers, render_video_frames

    run_dir = Path(run_dir)
    if is_video(runs.load_config(run_dir)):
        if image is not None:
            raise ConfigError(f"{run_dir} is a video run: it re-renders its own video; drop image=")
        frames, layers = render_video_frames(run_dir)
        return VideoResult(frames=frames, layers=layers, run_dir=run_dir)
    layers, path = image_run_layers(run_dir, None if image is None else str(image))
    metrics_file = run_dir / runs.METRICS_FILE
    metrics = json.loads(metrics_file.read_text())["metrics"] if metrics_file.is_file() and image is None else {}
    return EditResult(
        **{name: layers[name][0] for name in ("edit", "alpha", "composite", "edit_on_greenscreen")},
        image_path=path,
        run_dir=run_dir,
        metrics=metrics,
    )


@contextmanager
def _run_folder(run_dir: str | Path | None) -> Iterator[Path]:
    if run_dir is not None:
        yield Path(run_dir)
        return
    with tempfile.TemporaryDirectory(prefix="text2live-") as folder:
        yield Path(folder) / "run"


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """The run's messages go to its ``train.log``, as with ``t2l-train``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()
