"""Resizing and the random CLIP views (SPEC section 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from text2live import views
from text2live.views import ViewAugment, clip_views, resize, resize_shorter, resized_shape

NO_AUGMENT = {"flip_p": 0.0, "affine_p": 0.0, "perspective_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}


@pytest.mark.parametrize(
    ("hw", "max_size", "expected"),
    [
        ((160, 240), 320, (213, 320)),  # 336 > 320: capped, shorter side int(320 * 224 / 336)
        ((160, 240), 380, (224, 336)),  # 336 <= 380: not capped
        ((160, 240), None, (224, 336)),
        ((240, 160), 320, (320, 213)),  # portrait
        ((240, 160), 380, (336, 224)),
        ((512, 768), 320, (213, 320)),  # downscaling follows the same rule
        ((100, 100), 320, (224, 224)),
        ((300, 451), 380, (224, 336)),  # int(224 * 451 / 300) = 336
    ],
)
def test_resized_shape(hw: tuple[int, int], max_size: int | None, expected: tuple[int, int]) -> None:
    assert resized_shape(*hw, 224, max_size) == expected


def test_resize_shorter_legacy_returns_input_when_shorter_side_already_matches() -> None:
    x = torch.rand(1, 3, 224, 500)
    assert resize_shorter(x, 224, 320, legacy=True) is x  # torchvision 0.11 ignored the cap here
    assert resize_shorter(x, 224, 320, legacy=False).shape == (1, 3, 143, 320)  # int(320 * 224 / 500)


def test_resize_shorter_resizes_to_the_capped_shape() -> None:
    x = torch.rand(1, 3, 160, 240)
    assert resize_shorter(x, 224, 320, legacy=True).shape == (1, 3, 213, 320)
    assert resize_shorter(x, 224, 380, legacy=True).shape == (1, 3, 224, 336)


def test_resize_legacy_is_bilinear_without_antialiasing() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 96)
    legacy = resize(x, (16, 24), legacy=True)
    modern = resize(x, (16, 24), legacy=False)
    assert_close(legacy, F.interpolate(x, size=(16, 24), mode="bilinear", align_corners=False, antialias=False))
    assert_close(modern, F.interpolate(x, size=(16, 24), mode="bilinear", align_corners=False, antialias=True))
    assert (legacy - modern).abs().max() > 1e-2


def _image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(1, 3, 64, 96)


def test_clip_views_count_and_shape() -> None:
    out = clip_views(_image(), 5, torch.Generator().manual_seed(0), ViewAugment())
    assert out.shape == (5, 3, 213, 320)  # 64 x 96 -> 224 x 336 -> capped at 320


def test_clip_views_first_view_is_the_resized_image_without_augmentation() -> None:
    x = _image()
    out = clip_views(x, 3, torch.Generator().manual_seed(0), ViewAugment(**NO_AUGMENT))
    assert_close(out[:1], resize(x, (213, 320), legacy=True))
    assert not torch.allclose(out[1:2], out[:1])  # views 2.. are random crops


def test_clip_views_are_deterministic_for_a_seed_and_differ_for_another() -> None:
    x = _image()
    a = clip_views(x, 4, torch.Generator().manual_seed(1), ViewAugment())
    b = clip_views(x, 4, torch.Generator().manual_seed(1), ViewAugment())
    c = clip_views(x, 4, torch.Generator().manual_seed(2), ViewAugment())
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2


def test_clip_views_let_gradients_reach_the_input() -> None:
    x = _image().requires_grad_(True)
    out = clip_views(x, 4, torch.Generator().manual_seed(0), ViewAugment())
    for i in range(len(out)):  # every view, the random crops included, is differentiable
        (grad,) = torch.autograd.grad(out[i].mean(), x, retain_graph=True)
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0, i


def test_view_augment_with_zero_probabilities_is_identity() -> None:
    x = _image()
    assert torch.equal(ViewAugment(**NO_AUGMENT)(x, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("fill", [0.0, 1.0])
def test_affine_rotation_fills_corners_with_fill_value(fill: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # Force the largest draws: a 45 degree rotation (translation 0), so every corner leaves the image.
    monkeypatch.setattr(views, "rand_uniform", lambda g, low, high: high)
    augment = ViewAugment(**{**NO_AUGMENT, "affine_p": 1.0}, degrees=45.0, translate=0.0, fill=fill)
    x = torch.full((1, 3, 64, 96), 0.5)
    out = augment(x, torch.Generator().manual_seed(0))
    corners = out[..., [0, 0, -1, -1], [0, -1, 0, -1]]
    assert_close(corners, torch.full_like(corners, fill))
    assert out[0, :, 32, 48].tolist() == pytest.approx([0.5, 0.5, 0.5])  # the centre is untouched
