"""Tests left out of the default run: full-size settings (slow), real CLIP weights (weights), CUDA (gpu).

python -m pytest -m slow        python -m pytest -m weights        python -m pytest -m gpu
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config
from PIL import Image

from text2live.clip_guide import ClipGuide, load_clip_model, weights_path
from text2live.io import load_image
from text2live.training import train
from text2live.views import resize


@pytest.mark.slow
def test_default_generator_on_the_full_size_demo(tmp_path) -> None:
    """The default 7-scale generator on the 512 px demo image, two steps (tiny CLIP, CPU)."""
    keep = ("clip=", "trainer=", "trainer.enable_")
    cfg = compose_config(
        ["experiment=golden_cat", f"run_dir={tmp_path / 'run'}", "steps=2", "checkpoint_every=2", "log_images_freq=0"]
        + [o for o in TINY if o.startswith(keep)]
    )
    run_dir = train(cfg)
    assert (run_dir / "DONE").is_file()
    assert Image.open(run_dir / "composite.png").size == (769, 512)  # 451 x 300 px, shorter side resized to 512


@pytest.mark.weights
def test_real_vit_b32_matches_clip_and_tells_a_cat_from_a_dog(cat_path) -> None:
    path = weights_path("ViT-B/32")
    if not path.is_file():
        pytest.skip(f"needs OpenAI's ViT-B/32 weights at {path}")
    model = load_clip_model("ViT-B/32")
    guide = ClipGuide(model)
    image = resize(load_image(cat_path)[None], (224, 224), legacy=False)
    with torch.no_grad():
        ours = guide.encode_image(guide.normalize(image))
        theirs = model.encode_image(guide.normalize(image)).float()
        text = guide.encode_text(["a photo of a cat", "a photo of a dog"])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)  # same forward at CLIP's own resolution
    similarity = torch.nn.functional.cosine_similarity(ours, text)
    assert similarity[0] > similarity[1]


@pytest.mark.gpu
def test_tiny_run_on_cuda_uses_fp16_clip(tiny_cfg) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = tiny_cfg("trainer=default", "trainer.accelerator=gpu")
    run_dir = train(cfg)
    assert (run_dir / "DONE").is_file()
    checkpoint = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
