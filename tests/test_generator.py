"""The edit-layer generator (SPEC section 1): rendering formulas, sizes, batch-statistics norm, colours."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from text2live.generator import BatchStatNorm2d, DecorrelatedColors, SkipGenerator, render_layers


def test_render_layers_composite_and_greenscreen() -> None:
    edit = torch.tensor([0.2, 0.6, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    alpha = torch.tensor([0.0, 0.25]).view(1, 1, 1, 2)
    rgba = torch.cat([edit, alpha], dim=1)
    background = torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1).expand(1, 3, 1, 2)

    out = render_layers(rgba, background)

    assert_close(out["edit"], edit)
    assert_close(out["alpha"], alpha)
    # composite = (1 - a) * I + a * edit: a = 0 is the input, a = 0.25 mixes one quarter of the edit.
    composite = torch.tensor([[1.0, 0.75 * 1.0 + 0.25 * 0.2], [0.0, 0.25 * 0.6], [0.5, 0.75 * 0.5 + 0.25 * 1.0]])
    assert_close(out["composite"][0, :, 0], composite)
    # greenscreen = a * edit + (1 - a) * (0, 177, 64) / 255
    green = torch.tensor([0.0, 177 / 255, 64 / 255])
    greenscreen = torch.stack([green, 0.25 * edit[0, :, 0, 0] + 0.75 * green], dim=1)
    assert_close(out["edit_on_greenscreen"][0, :, 0], greenscreen)


def test_render_layers_without_background_has_no_composite() -> None:
    out = render_layers(torch.full((1, 4, 2, 2), 1.0))
    assert set(out) == {"edit", "alpha", "edit_on_greenscreen"}
    assert_close(out["edit_on_greenscreen"], torch.ones(1, 3, 2, 2))  # opaque: the edit itself


@pytest.mark.parametrize("num_scales", [3, 7])
def test_min_side_is_two_to_the_scales_plus_one(num_scales: int) -> None:
    assert SkipGenerator(4, 4, 2, num_scales).min_side == 2**num_scales + 1


def test_min_side_input_works_and_smaller_fails() -> None:
    torch.manual_seed(0)
    generator = SkipGenerator(4, 4, 2, 3)
    side = generator.min_side
    assert side == 9
    out = generator(torch.rand(1, 3, side, side))
    assert out.shape == (1, 4, side, side)
    assert ((out >= 0) & (out <= 1)).all()
    for shape in [(side - 1, side), (side, side - 1), (side - 1, side - 1)]:
        with pytest.raises((RuntimeError, ValueError)):
            generator(torch.rand(1, 3, *shape))


@pytest.mark.parametrize("shape", [(9, 11), (13, 17), (21, 10)])
def test_odd_sizes_give_output_of_input_size(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    out = SkipGenerator(4, 4, 2, 3)(torch.rand(1, 3, *shape))
    assert out.shape == (1, 4, *shape)


def test_batch_stat_norm_uses_batch_statistics_in_eval_mode() -> None:
    torch.manual_seed(0)
    norm = BatchStatNorm2d(2).eval()
    x = torch.randn(3, 2, 4, 5) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + torch.tensor([5.0, -3.0]).view(1, 2, 1, 1)

    out = norm(x)

    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    assert_close(out, (x - mean) / torch.sqrt(var + norm.eps))
    # A plain BatchNorm in eval mode would use the (initial) running statistics: x / sqrt(1 + eps).
    assert not torch.allclose(out, torch.nn.BatchNorm2d(2).eval()(x))


def test_batch_stat_norm_keeps_running_stats_in_eval_and_tracks_them_in_train() -> None:
    torch.manual_seed(0)
    norm = BatchStatNorm2d(2)
    x = torch.randn(2, 2, 3, 3) + 4.0

    norm.eval()
    norm(x)
    assert_close(norm.running_mean, torch.zeros(2))
    assert_close(norm.running_var, torch.ones(2))
    assert norm.num_batches_tracked.item() == 0

    norm.train()
    norm(x)
    assert_close(norm.running_mean, 0.1 * x.mean(dim=(0, 2, 3)))
    assert_close(norm.running_var, 0.9 + 0.1 * x.var(dim=(0, 2, 3), unbiased=True))
    assert norm.num_batches_tracked.item() == 1


def test_decorrelated_colors_matrix_matches_spec() -> None:
    matrix = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    matrix[:, 0] /= 1.6
    matrix /= matrix.norm(dim=0).max()
    layer = DecorrelatedColors()
    assert_close(layer.colcorr_t, matrix.T)
    # The first column (norm 0.4620 / 1.6) is the largest, so it ends with unit norm and the rest shrink less.
    first_norm = (0.26**2 + 0.27**2 + 0.27**2) ** 0.5
    norms = layer.colcorr_t.norm(dim=1)
    assert norms.tolist() == pytest.approx([1.0, 0.09 * 2**0.5 * 1.6 / first_norm, 0.0038**0.5 * 1.6 / first_norm])
    assert layer.colcorr_t[0, 0].item() == pytest.approx(0.26 / first_norm)  # 0.5628
    assert layer.colcorr_t[1, 0].item() == pytest.approx(0.09 * 1.6 / first_norm)  # 0.3117


def test_decorrelated_colors_maps_logits_by_the_matrix_and_passes_alpha() -> None:
    layer = DecorrelatedColors()
    matrix = layer.colcorr_t.T
    x = torch.zeros(1, 4, 1, 4)
    for c in range(3):
        x[0, c, 0, c] = 1.0  # pixel c holds the unit logit of channel c
    x[0, 3] = torch.tensor([0.5, -1.0, 2.0, 7.0])
    out = layer(x)
    for c in range(3):
        assert_close(out[0, :3, 0, c], matrix[:, c])  # rgb = M @ logits
    assert_close(out[0, :3, 0, 3], torch.zeros(3))
    assert_close(out[0, 3], x[0, 3])
