"""From a composed config to a trainable system: checks of the config, the DataModule and the LightningModule."""

from __future__ import annotations

import re

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from text2live import runs, speed
from text2live.errors import ConfigError, Text2LiveError
from text2live.system import EditSystem, ImageEditSystem
from text2live.video_data import AtlasDataModule, check_edit_layers
from text2live.video_system import VideoEditSystem

PROMPT_KEYS = ("comp_text", "src_text", "screen_text")


def is_video(cfg: dict | DictConfig) -> bool:
    """Whether a config (or a run's saved config) edits a video (an NLA atlas) rather than an image."""
    return str(cfg["data"].get("_target_", "")).endswith("AtlasDataModule")


def check_prompts(cfg: dict) -> None:
    if not is_video(cfg):
        blocks = [("", cfg)]
    else:
        layers = check_edit_layers(cfg.get("edit_layers"))
        blocks = [(f"{layer}.", cfg[layer]) for layer in layers]
    for prefix, block in blocks:
        for key in PROMPT_KEYS:
            value = block.get(key)
            prompts = [value] if isinstance(value, str) else value
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                hint = f' (or {prefix}{key}="<text>" for this layer only)' if prefix else ""
                raise ConfigError(f'{prefix}{key} is empty: pass {key}="<text>" (a string or a list of strings){hint}')


def check_config(plain: dict) -> None:
    """The prompts and run settings of a resolved config can be used; raises a one-sentence ConfigError if not."""
    check_prompts(plain)
    check_run_settings(plain)


def resolve_config(cfg: DictConfig) -> dict:
    """The fully resolved config as plain containers; a missing mandatory value becomes a ConfigError."""
    try:
        return runs.resolved(cfg)
    except MissingMandatoryValue as exc:
        key = exc.full_key or "a value"
        raise ConfigError(
            f"{key} is not set: pass {key}=... on the command line (or choose an experiment= that sets it)"
        ) from None
    except OmegaConfBaseException as exc:
        missing = re.search(r"Missing mandatory value: ([\w.]+)", str(exc))
        if missing:
            key = missing.group(1)
            hint = "on the command line (or choose an experiment= that sets it)"
            raise ConfigError(f"{key} is not set: pass {key}=... {hint}") from None
        key = getattr(exc, "full_key", None) or "the config"
        reason = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"{key} has a value that cannot be used ({reason}): check the value given for {key}"
        ) from None


def check_run_settings(cfg: dict) -> None:
    for key, minimum in (("seed", 0), ("steps", 1), ("checkpoint_every", 1), ("log_images_freq", 0)):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key}={value!r} is not valid: use an integer >= {minimum}")
    if cfg.setdefault("resume_from", "last") not in ("last", "previous"):
        raise ConfigError(f"resume_from={cfg.get('resume_from')!r} is not valid: use last or previous")


def instantiate(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate`` whose failures read as one sentence about the config group at fault."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as exc:
        if isinstance(exc.__cause__, Text2LiveError):
            raise exc.__cause__ from None
        key = node._get_full_key(None) or "config"
        reason = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise ConfigError(
            f"{key} cannot be built from its config ({reason}): check the values given for {key}.*"
        ) from None


def _optimizer(cfg: DictConfig, generator: torch.nn.Module):
    optimizer = instantiate(cfg.optim.optimizer)
    try:
        optimizer(generator.parameters())  # fail now, not after CLIP is loaded and training has started
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optim.optimizer cannot be built ({exc}): check optim.optimizer.*") from None
    return optimizer


def build_system(cfg: DictConfig) -> tuple[EditSystem, pl.LightningDataModule]:
    """Instantiate the DataModule (the image or video is loaded and checked here) and the LightningModule."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    if isinstance(datamodule, AtlasDataModule):
        system = _build_video_system(cfg, datamodule)
        speed.apply_options(cfg, system)
        return system, datamodule
    generator = instantiate(cfg.generator)
    datamodule.setup("fit")
    guide = instantiate(cfg.clip)
    losses = instantiate(cfg.loss, guide=guide)
    optimizer = _optimizer(cfg, generator)
    system = ImageEditSystem(generator, losses, optimizer, lr_decay=cfg.optim.lr_decay, min_lr=cfg.optim.min_lr)
    speed.apply_options(cfg, system)
    return system, datamodule


def _build_video_system(cfg: DictConfig, datamodule: AtlasDataModule) -> VideoEditSystem:
    """One generator and one loss stack per edited layer; the stacks share one CLIP.

    Bootstrapping applies to the layers that name a ``bootstrap_text``.
    """
    layers = list(cfg.edit_layers)
    generators = {layer: instantiate(cfg.generator) for layer in layers}
    bootstrapping = cfg.loss.bootstrap_steps > 0 and cfg.loss.lambda_bootstrap > 0
    if bootstrapping and not any(cfg[layer].bootstrap_text for layer in layers):
        raise ConfigError(
            "bootstrapping is on (loss.bootstrap_steps > 0) but no edited layer has a bootstrap_text: set "
            "bootstrap_text=<the object to edit> (or <layer>.bootstrap_text) or loss.bootstrap_steps=0"
        )
    guide = instantiate(cfg.clip)
    losses = {}
    for layer in layers:
        prompts = {key: cfg[layer][key] for key in (*PROMPT_KEYS, "bootstrap_text")}
        if not prompts["bootstrap_text"]:
            prompts["bootstrap_steps"] = 0
        losses[layer] = instantiate(cfg.loss, guide=guide, **prompts)
    optimizer = _optimizer(cfg, torch.nn.ModuleList(generators.values()))
    datamodule.setup("fit")  # last: evaluating the NLA maps is the slow part
    video = cfg.video
    return VideoEditSystem(
        generators,
        losses,
        optimizer,
        lr_decay=cfg.optim.lr_decay,
        min_lr=cfg.optim.min_lr,
        multiply_foreground_alpha=video.multiply_foreground_alpha,
        mask_structure_input=video.mask_structure_input,
        alpha_once=video.alpha_once,
        align_corners=video.align_corners,
        fps=video.fps,
    )
