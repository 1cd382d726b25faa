"""Every option of every config group composes and instantiates (the way a schema would catch a typo)."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import clip
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY, VIDEO_FRAMES, VIDEO_TINY, compose_config
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from text2live.build import build_system
from text2live.clip_guide import ClipGuide, build_guide
from text2live.config import CONF_DIR
from text2live.data import ImageDataModule
from text2live.errors import InputError
from text2live.generator import SkipGenerator
from text2live.losses import LossStack
from text2live.system import ImageEditSystem
from text2live.video_data import AtlasCrops, AtlasDataModule
from text2live.video_system import VideoEditSystem


def config_options(conf_dir: Path) -> list[tuple[str, str]]:
    """(group, option) for every YAML file of every group folder of ``conf_dir`` that t2l-train uses.

    ``atlas_*`` groups belong to t2l-atlas's config (``atlas.yaml``; tests/test_atlas_training.py composes them).
    """
    groups = sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and not p.name.startswith("atlas_"))
    return [(group, p.stem) for group in groups for p in sorted((conf_dir / group).glob("*.yaml"))]


GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and not p.name.startswith("atlas_"))
OPTIONS = config_options(CONF_DIR)
# the reference's examples whose photos are not shipped (they live under data_dir)
NOT_SHIPPED = {"golden_horse": "images/horse.jpg", "ice_cake": "images/cake.jpeg"}


# options that need a video's inputs (the synthetic one), and the experiment that provides its keys
VIDEO_OPTIONS = {("data", "atlas"), ("experiment", "video")}
VIDEO_EXAMPLES = {
    p.stem: p.stem.split("_")[0]
    for p in (CONF_DIR / "experiment").glob("*.yaml")
    if p.stem.split("_")[0] in ("blackswan", "car-turn", "libby", "lucia")
}


def compose_at(conf_dir: Path, overrides: list[str]) -> DictConfig:
    """conftest's ``compose_config`` from another config folder (a copy of ``conf/`` with a file added)."""
    if conf_dir == CONF_DIR:
        return compose_config(overrides)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def compose_option(
    group: str, option: str, tmp_path: Path, small_cat: Path, video=None, conf_dir: Path = CONF_DIR
) -> DictConfig:
    """TINY with ``group=option`` instead of TINY's own choices for that group (those could be other keys)."""
    if (group, option) in VIDEO_OPTIONS or option in VIDEO_EXAMPLES:
        tiny = VIDEO_TINY  # made for these options
    else:
        tiny = [o for o in TINY if not o.startswith((f"{group}=", f"{group}."))]
    inputs = [f"image_path={small_cat}", "comp_text=golden cat", "src_text=cat", "screen_text=golden"]
    if (group, option) in VIDEO_OPTIONS:
        checkpoint, frames = video
        inputs = [
            "experiment=video",
            f"nla_checkpoint={checkpoint}",
            f"frames_dir={frames}",
            f"num_frames={VIDEO_FRAMES}",
            *inputs[1:],
        ]
    elif group == "experiment":
        inputs = []  # the experiment sets them
    elif group == "sweep":
        inputs = []  # a sweep chooses its experiment
    where = [f"run_dir={tmp_path / 'run'}", f"data_dir={tmp_path / 'data'}"]
    choice = f"+{group}={option}" if group == "sweep" else f"{group}={option}"  # sweeps are added: +sweep=fur
    return compose_at(conf_dir, [*tiny, *inputs, *where, choice])


@pytest.fixture(scope="module")
def tiny_guide() -> ClipGuide:
    return instantiate(compose_config(["clip=tiny"]).clip)


def downloads_weights(clip_cfg: DictConfig) -> bool:
    names = {clip_cfg.get("name"), clip_cfg.get("relevancy_name")}
    return not clip_cfg.get("checkpoint") and bool(names & set(clip.available_models()))


# the checks of each group -----------------------------------------------------------------------------


def check_generator(cfg: DictConfig, **_) -> None:
    generator = instantiate(cfg.generator)
    assert isinstance(generator, SkipGenerator)
    assert generator.min_side == 2**cfg.generator.num_scales + 1 == cfg.data.min_side
    if cfg.generator == compose_config([]).generator:  # the reference's architecture
        assert sum(p.numel() for p in generator.parameters()) == 3_115_548


def check_clip(cfg: DictConfig, **_) -> None:
    target = get_method(cfg.clip._target_)
    assert callable(target)
    accepted = set(inspect.signature(target).parameters)
    assert set(cfg.clip) - {"_target_"} <= accepted
    if downloads_weights(cfg.clip):
        assert target is build_guide
        for key in ("name", "relevancy_name"):
            assert cfg.clip[key] in (None, *clip.available_models()), f"clip.{key}={cfg.clip[key]!r}"
        return
    guide = instantiate(cfg.clip)
    assert isinstance(guide, ClipGuide)
    assert guide.swap_pos_embed_hw == cfg.clip.swap_pos_embed_hw
    assert guide.relevancy_num_layers == cfg.clip.relevancy_num_layers
    assert (guide.relevancy_model is None) == (cfg.clip.relevancy_name in (None, cfg.clip.name))
    if cfg.clip.get("tiny"):
        visual = guide.model.visual
        assert len(visual.transformer.resblocks) == cfg.clip.tiny.vision_layers
        assert visual.conv1.out_channels == cfg.clip.tiny.vision_width
        assert visual.proj.shape == (cfg.clip.tiny.vision_width, cfg.clip.tiny.embed_dim)
    assert not any(p.requires_grad for p in guide.parameters())


def check_loss(cfg: DictConfig, guide: ClipGuide, **_) -> None:
    losses = instantiate(cfg.loss, guide=guide)
    assert isinstance(losses, LossStack)
    for key, value in cfg.loss.items():
        if key == "lambda_direction" and value is None:  # null: the composition term's weight
            value = cfg.loss.lambda_composition
        if key.startswith("lambda_") or key in ("n_aug", "bootstrap_steps", "bootstrap_sum_outputs"):
            assert getattr(losses, key) == value, key
    assert losses.weights(10**6)["direction"] == losses.lambda_direction
    assert losses.src_e.shape[0] == 14 and losses.comp_e.shape[0] == 14  # one row per template
    assert losses.screen_e.shape[0] == 2  # the two green-screen templates


def check_data(cfg: DictConfig, **_) -> None:
    datamodule = instantiate(cfg.data)
    if isinstance(datamodule, AtlasDataModule):
        assert isinstance(datamodule.crops, AtlasCrops)
        for key, value in cfg.data.crops.items():
            if key != "_target_":
                assert getattr(datamodule.crops, key) == value, key
        datamodule.setup("fit")
        assert tuple(datamodule.video.shape) == (VIDEO_FRAMES, 3, cfg.data.height, cfg.data.width)
        assert list(datamodule.layers) == list(cfg.edit_layers) == ["foreground"]
        assert datamodule.steps == cfg.steps == 3 and datamodule.min_side == 17
        return
    assert isinstance(datamodule, ImageDataModule)
    datamodule.setup("fit")
    size = cfg.data.resize_input
    assert tuple(datamodule.image.shape) == (1, 3, size, size * 3 // 2)  # the 96 x 144 cat, shorter side resized
    assert datamodule.steps == cfg.steps == 3
    assert datamodule.min_side == 17  # TINY's 4 generator scales


def check_optim(cfg: DictConfig, **_) -> None:
    optim = instantiate(cfg.optim)
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = optim.optimizer(params)
    assert type(optimizer) is get_class(cfg.optim.optimizer._target_)
    assert optimizer.param_groups[0]["lr"] == cfg.optim.optimizer.lr
    assert 0 < cfg.optim.lr_decay <= 1
    assert 0 <= cfg.optim.min_lr < cfg.optim.optimizer.lr


def check_trainer(cfg: DictConfig, **_) -> None:
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, pl.Trainer)
    assert trainer.max_steps == cfg.steps == 3
    assert trainer.log_every_n_steps == 1
    if not torch.cuda.is_available():
        assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def check_logger(cfg: DictConfig, tmp_path: Path, **_) -> None:
    logger = instantiate(cfg.logger)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir) == tmp_path / "run" / "tb"


def check_fidelity(cfg: DictConfig, guide: ClipGuide, **_) -> None:
    check_clip(cfg)
    losses = instantiate(cfg.loss, guide=guide)
    assert losses.bootstrap_sum_outputs == cfg.loss.bootstrap_sum_outputs


def check_experiment(cfg: DictConfig, tmp_path: Path, option: str, **_) -> None:
    assert cfg.name == option
    if option == "video":
        system, _ = build_system(cfg)
        assert isinstance(system, VideoEditSystem) and list(system.generators) == ["foreground"]
        return
    if option in VIDEO_EXAMPLES:
        video = VIDEO_EXAMPLES[option]
        frames = tmp_path / "data" / "videos" / video
        assert cfg.frames_dir == str(frames)
        assert cfg.nla_checkpoint == str(tmp_path / "data" / "pretrained_nla_models" / video / "checkpoint")
        assert cfg.num_frames == {"blackswan": 50, "libby": 49, "car-turn": 70, "lucia": 70}[video]
        plain = compose_config([f"experiment={option}"])  # the example's own settings, without TINY
        assert plain.steps == (1500 if option == "car-turn_nighttime" else 3000)
        assert (plain.loss.n_aug, plain.optim.lr_decay, plain.log_images_freq) == (6, 0.999, 500)
        assert plain.clip.name == "ViT-B/32" and plain.data.grid_resolution == 2000
        with pytest.raises(InputError) as exc:
            build_system(cfg)
        assert f"frames_dir={frames} is not a folder" in str(exc.value)
        return
    if option in NOT_SHIPPED:
        missing = tmp_path / "data" / NOT_SHIPPED[option]
        assert cfg.image_path == str(missing)
        with pytest.raises(InputError) as exc:
            build_system(cfg)
        assert f"image_path={missing} does not exist" in str(exc.value)
        return
    if option == "study":  # the base of the study subjects: a subject must be chosen
        assert OmegaConf.is_missing(cfg, "subject") and OmegaConf.is_missing(cfg, "image_path")
        return
    if option.startswith("study_"):
        assert cfg.comp_text == f"{cfg.edit} {cfg.subject}" and cfg.screen_text == cfg.edit
        assert Path(cfg.image_path).is_file() and cfg.image_path == cfg.study_images[option.removeprefix("study_")]
    system, datamodule = build_system(cfg)
    assert isinstance(system, ImageEditSystem)
    assert min(datamodule.image.shape[-2:]) == 96
    prompts = cfg.comp_text if isinstance(cfg.comp_text, str) else list(cfg.comp_text)
    rows = 14 * (1 if isinstance(prompts, str) else len(prompts))
    assert system.losses.comp_e.shape[0] == rows


def ablation_settings(option: str, conf_dir: Path = CONF_DIR) -> dict:
    """The dotted keys the file of an ablation sets, with their values."""
    return flat(OmegaConf.load(conf_dir / "ablation" / f"{option}.yaml"))


def check_ablation(cfg: DictConfig, option: str, guide: ClipGuide, conf_dir: Path = CONF_DIR, **_) -> None:
    """An ablation changes the full method exactly where its file says, and each change is a change."""
    full = compose_at(conf_dir, ["experiment=golden_horse"])  # bootstraps, so every ablation removes something
    ablated = compose_at(conf_dir, ["experiment=golden_horse", f"ablation={option}"])
    settings = ablation_settings(option, conf_dir)
    before, after = flat(full), flat(ablated)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == set(settings), f"conf/ablation/{option}.yaml must start with '# @package _global_'"
    for key, value in settings.items():
        assert OmegaConf.select(ablated, key) == value != OmegaConf.select(full, key), key
    weights = instantiate(cfg.loss, guide=guide).weights(0)
    instantiate(cfg.data)
    for key, value in settings.items():
        if key.startswith("loss.lambda_") and value == 0:
            assert key.removeprefix("loss.lambda_") not in weights, key  # a term with weight 0 is not computed
    if option == "no_crops":
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        datamodule.trainer = None
        sample = next(iter(datamodule.train_dataloader()))
        assert torch.equal(sample["crop"], datamodule.image) and "image" not in sample


def test_the_shipped_ablations_remove_what_their_names_say():
    expected = {
        "none": {},
        "no_bootstrap": {"loss.bootstrap_steps": 0},
        "no_sparsity": {"loss.lambda_sparsity": 0.0},
        "no_structure": {"loss.lambda_structure": 0.0},
        "no_screen": {"loss.lambda_screen": 0.0},
        "no_direction": {"loss.lambda_direction": 0.0},
        "no_crops": {"data.full_input": True},
    }
    assert {name: ablation_settings(name) for name in expected} == expected


def test_a_new_ablation_is_one_file(tmp_path, small_cat, tiny_guide):
    """README's recipe: a file added to conf/ablation/ is an option every config check picks up and passes."""
    conf_dir = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf_dir)
    recipe = "# @package _global_\n# Ablation: half the structure term, no screen term.\n"
    (conf_dir / "ablation" / "half_structure.yaml").write_text(
        recipe + "loss:\n  lambda_structure: 1.0\n  lambda_screen: 0.0\n"
    )
    assert ("ablation", "half_structure") in config_options(conf_dir)
    cfg = compose_option("ablation", "half_structure", tmp_path, small_cat, conf_dir=conf_dir)
    assert (cfg.loss.lambda_structure, cfg.loss.lambda_screen) == (1.0, 0.0)
    CHECKS["ablation"](cfg, option="half_structure", guide=tiny_guide, conf_dir=conf_dir)

    # without the package line the keys land under `ablation.` and change nothing: the check says so
    (conf_dir / "ablation" / "headless.yaml").write_text("loss:\n  lambda_structure: 0.0\n")
    cfg = compose_option("ablation", "headless", tmp_path, small_cat, conf_dir=conf_dir)
    with pytest.raises(AssertionError, match="must start with '# @package _global_'"):
        check_ablation(cfg, option="headless", guide=tiny_guide, conf_dir=conf_dir)


def check_sweep(cfg: DictConfig, option: str, **_) -> None:
    """A sweep composes, names its folder, and every value of its grid composes into a buildable run."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("train", overrides=[f"+sweep={option}"], return_hydra_config=True)
    assert full.hydra.sweep.dir == f"outputs/sweeps/{option}"
    params = {key: str(values).split(",") for key, values in full.hydra.sweeper.params.items()}
    assert params["seed"] == ["0", "1", "2"]  # seed repeats for every cell
    assert "experiment" in params and len(params) >= 3
    if option == "faces":
        assert cfg.loss.lambda_structure == 8.0
    first = [f"{key}={values[0]}" for key, values in params.items()]
    last = [f"{key}={values[-1]}" for key, values in params.items()]
    tiny = [o for o in TINY if not o.startswith("seed")]
    for cell in (first, last):
        run = compose_config([*tiny, f"+sweep={option}", *cell])
        build_system(run)


CHECKS = {
    "generator": check_generator,
    "clip": check_clip,
    "loss": check_loss,
    "data": check_data,
    "optim": check_optim,
    "trainer": check_trainer,
    "logger": check_logger,
    "fidelity": check_fidelity,
    "experiment": check_experiment,
    "ablation": check_ablation,
    "sweep": check_sweep,
}


def check_other(cfg: DictConfig, group: str, **_) -> None:
    """A group without a dedicated check: whatever it configures with a ``_target_`` instantiates."""
    node = cfg.get(group)
    if isinstance(node, DictConfig) and "_target_" in node:
        assert instantiate(node) is not None


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(group, option, tmp_path, small_cat, tiny_guide, synthetic_video):
    cfg = compose_option(group, option, tmp_path, small_cat, synthetic_video)
    CHECKS.get(group, check_other)(cfg, guide=tiny_guide, tmp_path=tmp_path, option=option, group=group)


def test_the_method_groups_all_have_options():
    options = {group: [o for g, o in OPTIONS if g == group] for group in GROUPS}
    assert set(CHECKS) <= set(GROUPS)
    assert all(options[group] for group in CHECKS)


def flat(cfg: DictConfig) -> dict:
    out = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out


def test_fidelity_corrected_flips_exactly_the_reference_bugs():
    default, corrected = flat(compose_config([])), flat(compose_config(["fidelity=corrected"]))
    assert default == flat(compose_config(["fidelity=reference"]))
    changed = {k for k in default.keys() | corrected.keys() if default.get(k) != corrected.get(k)}
    assert changed == {
        "clip.swap_pos_embed_hw",
        "clip.relevancy_name",
        "loss.bootstrap_sum_outputs",
        "video.mask_structure_input",
        "video.alpha_once",
    }
    assert (default["video.mask_structure_input"], default["video.alpha_once"]) == (False, False)
    assert (corrected["video.mask_structure_input"], corrected["video.alpha_once"]) == (True, True)
    assert (default["clip.swap_pos_embed_hw"], corrected["clip.swap_pos_embed_hw"]) == (True, False)
    assert (default["clip.relevancy_name"], corrected["clip.relevancy_name"]) == ("ViT-B/32", None)
    assert (default["loss.bootstrap_sum_outputs"], corrected["loss.bootstrap_sum_outputs"]) == (False, True)


def test_train_defaults_leave_the_inputs_to_the_user():
    cfg = compose_config([])
    for key in ("image_path", "comp_text", "src_text", "screen_text"):
        assert OmegaConf.is_missing(cfg, key)
    assert cfg.clip.name == "ViT-B/32" and cfg.optim.optimizer._target_ == "text2live.optim.MADGRAD"
    assert cfg.steps == 1000 and cfg.seed == 0
    assert cfg.run_dir == "outputs/adhoc/seed0"


def test_render_config_composes():
    cfg = compose_config(["run_dir=outputs/golden_cat/seed0"], config_name="render")
    assert cfg.run_dir == "outputs/golden_cat/seed0"
    assert cfg.image_path is None and cfg.out_dir is None
    assert OmegaConf.is_missing(compose_config([], config_name="render"), "run_dir")


def test_train_help_lists_the_groups():
    result = subprocess.run(
        [sys.executable, "-m", "text2live.cli.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "t2l-train" in result.stdout
    for word in ("experiment", "clip", "golden_cat", "tiny", "fidelity", "corrected"):
        assert word in result.stdout, word
