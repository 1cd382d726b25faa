"""The frozen CLIP wrapper: prompts, loading (offline), precision, relevancy and the ``build_guide`` factory."""

from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

import text2live.clip_guide as clip_guide
from text2live.clip_guide import (
    SCREEN_TEMPLATES,
    TEMPLATES,
    ClipGuide,
    build_guide,
    compose_prompts,
    load_clip_model,
    tiny_clip,
)
from text2live.errors import ConfigError, InputError, MissingWeightsError
from text2live.views import resize

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import clip
    import clip.clip

# _read_state_dict tries torch.jit.load first, which is deprecated in current torch.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

SPEC_TEMPLATES = (
    "photo of {}.",
    "high quality photo of {}.",
    "a photo of {}.",
    "the photo of {}.",
    "image of {}.",
    "an image of {}.",
    "high quality image of {}.",
    "a high quality image of {}.",
    "the {}.",
    "a {}.",
    "{}.",
    "{}",
    "{}!",
    "{}...",
)


def test_templates_are_the_spec_ones() -> None:
    assert TEMPLATES == SPEC_TEMPLATES
    assert SCREEN_TEMPLATES == ("{} over a green screen.", "{} in front of a green screen.")


def test_compose_prompts_is_prompt_major() -> None:
    rows = compose_prompts(["golden cat", "cat made of gold"], TEMPLATES)
    assert len(rows) == 28
    assert rows[0] == "photo of golden cat."
    assert rows[13] == "golden cat..."
    assert rows[14] == "photo of cat made of gold."
    assert rows[25] == "cat made of gold"
    assert rows == [t.format(p) for p in ("golden cat", "cat made of gold") for t in SPEC_TEMPLATES]
    assert compose_prompts("golden", SCREEN_TEMPLATES) == [
        "golden over a green screen.",
        "golden in front of a green screen.",
    ]


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return tiny_clip()


def test_relevancy_num_layers_must_leave_a_block(tiny: torch.nn.Module) -> None:
    assert len(tiny.visual.transformer.resblocks) == 2
    ClipGuide(tiny, relevancy_num_layers=0)  # block 1 is used
    with pytest.raises(ConfigError, match="relevancy_num_layers=1"):
        ClipGuide(tiny, relevancy_num_layers=1)
    with pytest.raises(ConfigError, match="at most 0"):
        ClipGuide(tiny, relevancy_num_layers=10)


def test_unknown_precision_is_a_config_error(tiny: torch.nn.Module) -> None:
    with pytest.raises(ConfigError, match="precision"):
        ClipGuide(tiny, precision="bf16", relevancy_num_layers=0)


def test_relevancy_of_the_cat_is_a_normalised_map(tiny: torch.nn.Module, cat_path: Path) -> None:
    guide = ClipGuide(tiny, relevancy_num_layers=0)
    array = np.asarray(Image.open(cat_path).convert("RGB"), dtype=np.float32) / 255
    image = resize(torch.from_numpy(array).permute(2, 0, 1)[None], (224, 224))
    relevancy = guide.relevancy(image, guide.relevancy_text("cat"))
    assert relevancy.shape == (1, 224, 224)
    assert relevancy.amin().item() == pytest.approx(0.0, abs=1e-6)
    assert relevancy.amax().item() == pytest.approx(1.0, abs=1e-6)
    assert relevancy.std().item() > 0.05  # a map, not a constant


def test_load_clip_model_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_clip_model("ViT-B/32", checkpoint=str(tmp_path / "missing.pt"))


def test_load_clip_model_unknown_name() -> None:
    with pytest.raises(ConfigError, match="ViT-B/32"):
        load_clip_model("ViT-X/99")


def test_load_clip_model_offline_names_the_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, root: str) -> str:
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(clip.clip, "_download", offline)
    with pytest.raises(MissingWeightsError) as info:
        load_clip_model("ViT-B/32", download_root=str(tmp_path))
    message = str(info.value)
    assert "ViT-B-32.pt" in message
    assert str(tmp_path) in message
    assert "clip.checkpoint=" in message
    assert "offline" in message


def test_unreadable_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_clip_model("x", checkpoint=str(path))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="visual.conv1.weight"):
        load_clip_model("x", checkpoint=str(tmp_path / "other.pt"))


def _fp16_exact_tiny_clip() -> torch.nn.Module:
    """A tiny CLIP whose weights are exact in float16, as OpenAI's released weights are."""
    model = tiny_clip()
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    return model


def _embeddings(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(clip.tokenize(["a golden cat", "cat"]))


def test_load_clip_model_from_a_state_dict_file(tmp_path: Path) -> None:
    model = _fp16_exact_tiny_clip()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded = load_clip_model("x", checkpoint=str(path))
    assert loaded.visual.conv1.weight.dtype == torch.float32
    for ours, theirs in zip(_embeddings(loaded), _embeddings(model)):
        assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_load_clip_model_keeps_float32_weights_exact(tmp_path: Path) -> None:
    model = tiny_clip()  # default tiny: one text head per 64 channels, so the head count is inferred right
    path = tmp_path / "tiny_fp32.pt"
    torch.save(model.state_dict(), path)
    loaded = load_clip_model("x", checkpoint=str(path))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name  # no rounding through float16
    for ours, theirs in zip(_embeddings(loaded), _embeddings(model)):
        assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_load_clip_model_from_a_torchscript_archive(tmp_path: Path) -> None:
    model = _fp16_exact_tiny_clip()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated; OpenAI's archives are traced modules
        traced = torch.jit.trace(model, (torch.rand(1, 3, 224, 224), clip.tokenize(["cat"])), check_trace=False)
    path = tmp_path / "tiny_jit.pt"
    traced.save(str(path))
    loaded = load_clip_model("x", checkpoint=str(path))
    for ours, theirs in zip(_embeddings(loaded), _embeddings(model)):
        assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_place_on_cpu_settles_precision() -> None:
    auto = ClipGuide(tiny_clip(), relevancy_num_layers=0).place("cpu")
    assert auto.dtype == torch.float32  # auto: fp16 only on CUDA, as the reference
    half = ClipGuide(tiny_clip(), tiny_clip(seed=1), precision="fp16", relevancy_num_layers=0).place("cpu")
    assert half.dtype == torch.float16
    assert half.relevancy_model.visual.conv1.weight.dtype == torch.float16
    fp32 = ClipGuide(tiny_clip(), precision="fp32", relevancy_num_layers=0).place("cpu")
    assert fp32.dtype == torch.float32


def test_build_guide_tiny() -> None:
    guide = build_guide(name="tiny", relevancy_name=None, relevancy_num_layers=0)
    assert isinstance(guide, ClipGuide)
    assert guide.relevancy_model is None
    assert len(guide.model.visual.transformer.resblocks) == 2
    assert (guide.precision, guide.legacy_resize, guide.swap_pos_embed_hw) == ("auto", True, True)
    assert not guide.model.training and not any(p.requires_grad for p in guide.parameters())
    guide.train()  # an owner switching to training mode does not unfreeze CLIP
    assert not guide.training and not guide.model.training
    reference = tiny_clip()
    assert_close(guide.model.visual.conv1.weight, reference.visual.conv1.weight)  # seeded: the same model


@pytest.fixture
def recorded_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def fake_load(name: str, checkpoint: str | None = None, download_root: str | None = None):
        calls.append((name, checkpoint, download_root))
        return tiny_clip(seed=len(calls))

    monkeypatch.setattr(clip_guide, "load_clip_model", fake_load)
    return calls


def test_build_guide_loads_a_second_model_for_another_relevancy_name(recorded_loads: list[tuple]) -> None:
    guide = build_guide(
        name="ViT-B/16", checkpoint="b16.pt", download_root="/cache", relevancy_name="ViT-B/32", relevancy_num_layers=0
    )
    assert recorded_loads == [("ViT-B/16", "b16.pt", "/cache"), ("ViT-B/32", None, "/cache")]
    assert guide.relevancy_model is not None and guide.relevancy_model is not guide.model


def test_build_guide_reuses_the_model_when_relevancy_name_is_the_same(recorded_loads: list[tuple]) -> None:
    guide = build_guide(name="ViT-B/32", relevancy_name="ViT-B/32", relevancy_num_layers=0)
    assert recorded_loads == [("ViT-B/32", None, None)]
    assert guide.relevancy_model is None
    guide = build_guide(name="ViT-B/32", relevancy_name=None, relevancy_num_layers=0)
    assert len(recorded_loads) == 2 and guide.relevancy_model is None


def test_views_embed_as_clip_embeds_their_normalisation_in_value_and_gradient() -> None:
    """``encode_views`` folds the normalisation into a patch embedding computed as a matrix product; CLIP's own
    forward (a strided convolution of the normalised images) gives the same numbers to float32 rounding."""
    model = tiny_clip()
    guide = ClipGuide(model, relevancy_num_layers=0, swap_pos_embed_hw=False).place("cpu")
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # CLIP's own size: no resampling
    ours_in, theirs_in = images.clone().requires_grad_(True), images.clone().requires_grad_(True)
    ours = guide.encode_views(ours_in)
    theirs = model.encode_image(guide.normalize(theirs_in)).float()
    weights = torch.randn_like(ours)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert float((ours_in.grad - theirs_in.grad).norm() / theirs_in.grad.norm()) < 1e-5
    # a size that leaves rows and columns outside the last whole patch: their gradient is zero
    odd = torch.rand(2, 3, 230, 250, requires_grad=True)
    guide.encode_views(odd).sum().backward()
    assert model.visual.conv1.kernel_size[0] == 32  # 7 x 7 whole patches of 230 x 250
    assert odd.grad[..., 224:, :].abs().max() == 0 and odd.grad[..., 224:].abs().max() == 0
    assert odd.grad[..., :224, :224].abs().max() > 0
