"""Resizing and the random CLIP views (SPEC section 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch.testing import assert_close
from torchvision.transforms import InterpolationMode

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


# the batched views against torchvision, view by view --------------------------------------------------------------


def _hard_image(n: int = 3, h: int = 48, w: int = 64) -> torch.Tensor:
    """Images with the cases where the branches of the colour changes meet: grey pixels, two channels tied for the
    maximum or the minimum, values clamped to exactly 0 and 1."""
    torch.manual_seed(3)
    x = torch.rand(n, 3, h, w)
    x[:, :, :6] = x[:, :1, :6]
    x[:, 1, 6:12] = x[:, 0, 6:12]
    x[:, 2, 12:18] = x[:, 1, 12:18]
    x[:, 0, 18:24] = x[:, 2, 18:24]
    return (x * 1.4 - 0.2).clamp(0, 1)


def _reference_and_ours(reference, ours, x: torch.Tensor):
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_a, out_b = reference(a), ours(b)
    weights = torch.randn_like(out_a)
    (out_a * weights).sum().backward()
    (out_b * weights).sum().backward()
    return out_a, out_b, a.grad, b.grad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("name", "factors"),
    [
        ("brightness", [0.9, 1.07, 1.1]),
        ("contrast", [0.9, 1.07, 1.1]),
        ("saturation", [0.9, 1.07, 1.1]),
        ("hue", [-0.1, 0.05, 0.1]),
        ("hue", [-0.5, 0.0, 0.5]),
    ],
)
def test_colour_changes_equal_torchvision_in_value_and_gradient(name, factors):
    factors = factors * 3  # nine images: batched reductions must sum as torchvision's reduction of one image
    tv = {
        "brightness": TF.adjust_brightness,
        "contrast": TF.adjust_contrast,
        "saturation": TF.adjust_saturation,
        "hue": TF.adjust_hue,
    }[name]
    ours = getattr(views, f"adjust_{name}")
    x = _hard_image(9)

    def reference(images):  # torchvision, one image and one factor at a time
        return torch.cat([tv(image[None], factor) for image, factor in zip(images, factors, strict=True)])

    out_tv, out, grad_tv, grad = _reference_and_ours(reference, lambda images: ours(images, factors), x)
    assert torch.equal(out, out_tv)  # the same bits
    if name == "hue":  # a hand-written backward: float32 rounding of the same derivative
        assert _relative(grad, grad_tv) < 1e-6
    else:
        assert torch.equal(grad, grad_tv)


def test_a_mixed_blend_batch_equals_each_change_on_its_own():
    x = _hard_image()
    ops, factors = [0, 1, 2], [1.05, 0.93, 1.08]
    changes = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)

    def reference(images):
        return torch.cat([changes[op](image[None], f) for image, op, f in zip(images, ops, factors, strict=True)])

    out_tv, out, grad_tv, grad = _reference_and_ours(reference, lambda v: views.adjust_blends(v, ops, factors), x)
    assert torch.equal(out, out_tv)
    assert _relative(grad, grad_tv) < 1e-6  # the gradients of the unused targets add exact zeros, in another order


def test_greyscale_equals_torchvision_in_value_and_gradient():
    x = _hard_image()

    def reference(images):
        return TF.rgb_to_grayscale(images, num_output_channels=3)

    out_tv, out, grad_tv, grad = _reference_and_ours(reference, lambda v: views.grayscale(v).expand(v.shape), x)
    assert torch.equal(out, out_tv) and torch.equal(grad, grad_tv)
    with torch.no_grad():
        assert torch.equal(views.grayscale(x), TF.rgb_to_grayscale(x))


@pytest.mark.parametrize("legacy", [True, False])
def test_crops_equal_slicing_and_resizing_each_in_value_and_gradient(legacy: bool):
    x = _hard_image(1, 60, 80)
    boxes = [(0, 0, 60, 80), (5, 9, 40, 52), (0, 0, 60, 80), (20, 30, 40, 50), (5, 9, 40, 52)]
    flips = [False, True, True, False, False]
    shape = (60, 80)  # the whole image keeps its shape: a copy, not a resize

    def reference(image):
        out = []
        for (top, left, h, w), flip in zip(boxes, flips, strict=True):
            view = resize(image[..., top : top + h, left : left + w], shape, legacy)
            out.append(view.flip(-1) if flip else view)
        return torch.cat(out)

    out_ref, out, grad_ref, grad = _reference_and_ours(
        reference, lambda image: torch.cat(views.crops(image, boxes, flips, shape, legacy)), x
    )
    assert torch.equal(out, out_ref)
    assert _relative(grad, grad_ref) < 1e-6  # the crops' gradients are added in another order
    with torch.no_grad():
        assert torch.equal(torch.cat(views.crops(x, boxes, flips, shape, legacy)), out_ref)


def test_the_hue_change_without_a_graph_gives_the_same_values():
    x = _hard_image()
    with torch.no_grad():
        assert torch.equal(views.adjust_hue(x, [0.07] * 3), TF.adjust_hue(x, 0.07))


def test_warps_equal_torchvision_in_value_and_gradient():
    x = _hard_image(2, 40, 56)
    shape = (40, 56)
    affine = [(7.5, 3, -2), (-14.0, -5, 4)]
    ends = [[[3, 2], [50, 1], [54, 37], [1, 38]], [[0, 6], [55, 0], [48, 39], [7, 33]]]

    def affine_tv(images):
        return torch.cat(
            [
                TF.affine(image[None], a, [dx, dy], 1.0, [0.0, 0.0], InterpolationMode.BILINEAR, [1.0, 1.0, 1.0])
                for image, (a, dx, dy) in zip(images, affine, strict=True)
            ]
        )

    def perspective_tv(images):
        start = [[0, 0], [55, 0], [55, 39], [0, 39]]
        return torch.cat(
            [
                TF.perspective(image[None], start, end, InterpolationMode.BILINEAR, [0.5, 0.5, 0.5])
                for image, end in zip(images, ends, strict=True)
            ]
        )

    cases = [
        (affine_tv, lambda v: views.warp(v, views._affine_grids(affine, shape, v), 1.0)),
        (perspective_tv, lambda v: views.warp(v, views._perspective_grids(ends, shape, v), 0.5)),
    ]
    for reference, ours in cases:
        out_tv, out, grad_tv, grad = _reference_and_ours(reference, ours, x)
        assert torch.equal(out, out_tv)
        assert _relative(grad, grad_tv) < 1e-6


def _torchvision_view(x: torch.Tensor, p: views.ViewParams, shape, fill: float) -> torch.Tensor:
    """One view built the reference's way: crop, resize, then torchvision's functions one by one."""
    if p.box is not None:
        top, left, h, w = p.box
        x = x[..., top : top + h, left : left + w]
    x = resize(x, shape)
    if p.flip:
        x = x.flip(-1)
    fills = [fill] * 3
    if p.affine is not None:
        angle, dx, dy = p.affine
        x = TF.affine(x, angle, [dx, dy], 1.0, [0.0, 0.0], InterpolationMode.BILINEAR, fills)
    if p.perspective is not None:
        start = [[0, 0], [shape[1] - 1, 0], [shape[1] - 1, shape[0] - 1], [0, shape[0] - 1]]
        x = TF.perspective(x, start, p.perspective, InterpolationMode.BILINEAR, fills)
    if p.jitter is not None:
        order, *factors = p.jitter
        changes = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
        for op in order:
            x = changes[op](x, factors[op])
    if p.gray:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return x


@pytest.mark.parametrize("fill", [1.0, 0.3])
def test_a_step_of_views_equals_the_views_built_one_by_one_with_torchvision(fill: float):
    torch.manual_seed(5)
    images = [torch.rand(1, 3, 60, 80), torch.rand(1, 3, 60, 80)]
    plan = views.ViewPlan(torch.Generator().manual_seed(11), 16, ViewAugment(fill=fill), legacy=True)
    ids = [plan.add(image) for image in images]
    (group,) = plan.groups()
    built = plan.render(group).split(16)
    drawn = [p for i in ids for p in plan.requests[i][2]]
    assert {p.jitter is not None for p in drawn} == {True, False}  # every kind of view occurs
    assert any(p.affine and p.perspective and p.flip for p in drawn)
    for i, image in zip(ids, images, strict=True):
        _, shape, params = plan.requests[i]
        expected = torch.cat([_torchvision_view(image, p, shape, fill) for p in params])
        assert torch.equal(built[i], expected)


def test_a_step_of_views_passes_back_the_gradient_of_the_views_built_one_by_one_with_torchvision():
    torch.manual_seed(6)
    images = [torch.rand(1, 3, 60, 80, requires_grad=True) for _ in range(2)]
    plan = views.ViewPlan(torch.Generator().manual_seed(12), 16, ViewAugment(), legacy=True)
    ids = [plan.add(image) for image in images]
    (group,) = plan.groups()
    built = plan.render(group)
    assert {p.jitter[0].index(3) for i in ids for p in plan.requests[i][2] if p.jitter} == {0, 1, 2, 3}
    copies = [image.detach().clone().requires_grad_(True) for image in images]
    expected = torch.cat(
        [_torchvision_view(copy, p, plan.requests[i][1], 1.0) for i, copy in zip(ids, copies, strict=True)
         for p in plan.requests[i][2]]
    )  # fmt: skip
    assert torch.equal(built, expected)
    weights = torch.randn_like(built)
    (built * weights).sum().backward()
    (expected * weights).sum().backward()
    for image, copy in zip(images, copies, strict=True):
        assert _relative(image.grad, copy.grad) < 1e-6


def test_a_plan_draws_in_the_order_of_its_images_and_groups_by_shape_and_gradient():
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    small, large = torch.rand(1, 3, 60, 80), torch.rand(1, 3, 90, 120).requires_grad_(True)
    plan = views.ViewPlan(g1, 4, ViewAugment())
    plan.add(small), plan.add(large), plan.add(small)
    expected = [views.draw_views(g2, tuple(x.shape[-2:]), 4, ViewAugment()) for x in (small, large, small)]
    assert [(shape, params) for _, shape, params in plan.requests] == expected
    assert sorted(plan.groups()) == [[0, 2], [1]]  # the views of both 60 x 80 images are built together
    assert plan.render([0, 2]).shape == (8, 3, 224, 298)


def test_small_tensors_reach_the_device_with_their_values():
    t = views.device_tensor([[1.5, 2.0], [3.0, -1.0]], torch.float32, torch.device("cpu"))
    assert t.dtype == torch.float32 and t.tolist() == [[1.5, 2.0], [3.0, -1.0]]
    rows = torch.tensor([3, 1])
    assert views.to_device(rows, torch.device("cpu")) is rows
