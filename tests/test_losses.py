"""The loss stack (SPEC section 3) on hand-computable inputs and a tiny CLIP."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.testing import assert_close

from text2live.clip_guide import ClipGuide, tiny_clip
from text2live.errors import ConfigError
from text2live.generator import render_layers
from text2live.losses import (
    LossStack,
    bootstrap_weight,
    cosine_distance,
    pick_rows,
    sparsity_terms,
    spherical_distance,
)
from text2live.views import ViewAugment, resize, resize_shorter

NO_AUGMENT = ViewAugment(flip_p=0.0, affine_p=0.0, perspective_p=0.0, jitter_p=0.0, grayscale_p=0.0)
SPEC_IMAGE_WEIGHTS = {"structure": 2.0, "composition": 1.0, "direction": 1.0, "sparsity": 6.0, "screen": 1.0}


# --- the term functions ----------------------------------------------------------------------------------


def test_spherical_distance_known_vectors() -> None:
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # orthogonal: ||x - y|| = sqrt(2), 2 * asin(sqrt(2) / 2)^2 = 2 * (pi / 4)^2 = pi^2 / 8
    assert spherical_distance(e0, e1).item() == pytest.approx(math.pi**2 / 8)
    assert spherical_distance(e0, e0).item() == pytest.approx(0.0, abs=1e-6)
    # opposite: 2 * asin(1)^2 = pi^2 / 2
    assert spherical_distance(e0, -e0).item() == pytest.approx(math.pi**2 / 2)


def test_spherical_distance_normalises_and_averages_rows() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 5.0]])
    y = torch.tensor([[6.0, 8.0]])  # broadcast over x's rows; same direction as row 0
    angle = math.acos(0.8)  # between (0, 1) and (0.6, 0.8); the arcsin form equals 2 * (angle / 2)^2
    assert spherical_distance(x, y).item() == pytest.approx((0.0 + 2 * (angle / 2) ** 2) / 2)


def test_cosine_distance_is_scaled_one_minus_cosine() -> None:
    x = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([[1.0, 1.0]])
    assert cosine_distance(x, y).item() == pytest.approx(1.2 * (1 - 1 / math.sqrt(2)))
    assert cosine_distance(x, y, scale=1.0).item() == pytest.approx(1 - 1 / math.sqrt(2))
    assert cosine_distance(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)


def test_sparsity_terms_on_constant_alphas() -> None:
    alphas = [torch.full((1, 1, 4, 6), 0.3), torch.full((1, 1, 8, 2), 0.7)]
    l1, l0 = sparsity_terms(alphas)
    assert l1.item() == pytest.approx(0.5)
    expected_l0 = ((2 / (1 + math.exp(-1.5)) - 1) + (2 / (1 + math.exp(-3.5)) - 1)) / 2
    assert l0.item() == pytest.approx(expected_l0)
    zero_l1, zero_l0 = sparsity_terms([torch.zeros(1, 1, 3, 3)])
    assert (zero_l1.item(), zero_l0.item()) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 9.99), (499, 5.0), (998, 0.01), (999, 0.0), (1000, 0.0), (5000, 0.0)],
)
def test_bootstrap_weight_linear(step: int, expected: float) -> None:
    # 10 * (1 - (t + 1) / T), and 0 from T on
    assert bootstrap_weight(step, 10.0, 1000, "linear") == pytest.approx(expected)


def test_bootstrap_weight_floor_applies_only_while_bootstrapping() -> None:
    assert bootstrap_weight(999, 10.0, 1000, "linear", minimum=0.5) == 0.5
    assert bootstrap_weight(0, 10.0, 1000, "linear", minimum=0.5) == pytest.approx(9.99)
    assert bootstrap_weight(1000, 10.0, 1000, "linear", minimum=0.5) == 0.0


def test_bootstrap_weight_exponential_and_none() -> None:
    assert bootstrap_weight(0, 10.0, 1000, "exponential") == pytest.approx(9.9)
    assert bootstrap_weight(99, 10.0, 1000, "exponential") == pytest.approx(10 * 0.99**100)
    assert bootstrap_weight(1000, 10.0, 1000, "exponential") == 0.0
    assert bootstrap_weight(0, 10.0, 3, "none") == 10.0
    assert bootstrap_weight(2, 10.0, 3, "none") == 10.0
    assert bootstrap_weight(3, 10.0, 3, "none") == 0.0
    assert bootstrap_weight(0, 0.0, 3, "none") == 0.0


def test_bootstrap_weight_unknown_schedule() -> None:
    with pytest.raises(ConfigError, match="cosine"):
        bootstrap_weight(0, 10.0, 1000, "cosine")


def test_pick_rows_ranges() -> None:
    g = torch.Generator().manual_seed(0)
    draws = [pick_rows(g, 4) for _ in range(300)]
    sizes = {len(d) for d in draws}
    values = torch.cat(draws)
    assert sizes == {1, 2, 3, 4}  # k ~ U{1..4}
    assert set(values.tolist()) == {0, 1, 2, 3}  # indices in [0, 4), with replacement
    assert pick_rows(torch.Generator().manual_seed(0), 1).tolist() == [0]
    a, b = pick_rows(torch.Generator().manual_seed(3), 14), pick_rows(torch.Generator().manual_seed(3), 14)
    assert torch.equal(a, b)


# --- the stack ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guide() -> ClipGuide:
    return ClipGuide(tiny_clip(), relevancy_num_layers=0)


def make_stack(guide: ClipGuide, **kwargs) -> LossStack:
    settings = {"bootstrap_text": "cat", "bootstrap_steps": 10, "n_aug": 2, **kwargs}
    return LossStack(guide, "cat", ["golden cat", "cat made of gold"], "golden", **settings)


def step_data(seed: int = 0, n: int = 1) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(seed)
    inputs = [torch.rand(1, 3, 64, 96) for _ in range(n)]
    outputs = [render_layers(torch.rand(1, 4, 64, 96), image) for image in inputs]
    return inputs, outputs


def test_text_embedding_rows(guide: ClipGuide) -> None:
    stack = make_stack(guide)
    assert stack.src_e.shape == (14, 64)
    assert stack.comp_e.shape == (28, 64)  # 14 templates x 2 prompts, prompt-major
    assert stack.screen_e.shape == (2, 64)
    assert stack.bootstrap_e.shape == (1, 64)  # raw text, no templates
    assert_close(stack.comp_e[14], guide.encode_text(["photo of cat made of gold."])[0])
    two_screens = LossStack(guide, "cat", "golden cat", ["golden", "gold"], n_aug=1, bootstrap_steps=0)
    assert two_screens.screen_e.shape == (4, 64)
    assert not hasattr(two_screens, "bootstrap_e")


def test_weights_are_the_spec_image_totals(guide: ClipGuide) -> None:
    stack = make_stack(guide, bootstrap_steps=1000)
    assert stack.weights(0) == pytest.approx({"bootstrap": 9.99, **SPEC_IMAGE_WEIGHTS})
    assert stack.weights(499) == pytest.approx({"bootstrap": 5.0, **SPEC_IMAGE_WEIGHTS})
    assert stack.weights(999) == SPEC_IMAGE_WEIGHTS  # the weight reached 0: the term is dropped
    assert stack.weights(1000) == SPEC_IMAGE_WEIGHTS
    assert (stack.lambda_alpha_l1, stack.lambda_alpha_l0) == (0.01, 0.01)


def test_weights_from_the_image_loss_config(guide: ClipGuide, tiny_cfg) -> None:
    cfg = tiny_cfg("loss.bootstrap_steps=1000", "loss.n_aug=16")
    stack = instantiate(cfg.loss, guide=guide)
    assert stack.weights(0) == pytest.approx({"bootstrap": 9.99, **SPEC_IMAGE_WEIGHTS})
    assert (stack.lambda_alpha_l1, stack.lambda_alpha_l0, stack.n_aug) == (0.01, 0.01, 16)
    assert stack.criterion is spherical_distance


def test_weights_drop_zero_weight_terms(guide: ClipGuide) -> None:
    stack = make_stack(guide, lambda_structure=0.0, lambda_screen=0.0, bootstrap_steps=0)
    assert stack.weights(0) == {"composition": 1.0, "direction": 1.0, "sparsity": 6.0}
    stack = make_stack(guide, lambda_composition=0.0, lambda_sparsity=0.0, lambda_bootstrap=0.0)
    assert stack.weights(0) == {"structure": 2.0, "screen": 1.0}


def test_forward_total_is_the_weighted_sum_of_terms(guide: ClipGuide) -> None:
    stack = make_stack(guide)
    inputs, outputs = step_data()
    terms = stack(inputs, outputs, 3, torch.Generator().manual_seed(0))
    weights = stack.weights(3)
    assert weights["bootstrap"] == pytest.approx(6.0)
    assert set(terms) == {*weights, "sparsity_l1", "sparsity_l0", "total"}
    expected = sum(weights[name] * terms[name].item() for name in weights)
    assert terms["total"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["sparsity"].item() == pytest.approx(
        0.01 * terms["sparsity_l1"].item() + 0.01 * terms["sparsity_l0"].item()
    )
    assert terms["sparsity_l1"].item() == pytest.approx(outputs[0]["alpha"].mean().item())


def test_direction_weight_follows_composition_unless_set(guide: ClipGuide) -> None:
    assert make_stack(guide, lambda_composition=0.5).weights(10) == pytest.approx(
        {**SPEC_IMAGE_WEIGHTS, "composition": 0.5, "direction": 0.5}
    )
    assert make_stack(guide, lambda_direction=3.0).weights(10) == {**SPEC_IMAGE_WEIGHTS, "direction": 3.0}
    no_direction = make_stack(guide, lambda_direction=0.0).weights(10)
    assert no_direction == {k: v for k, v in SPEC_IMAGE_WEIGHTS.items() if k != "direction"}
    only_direction = make_stack(guide, lambda_composition=0.0, lambda_direction=1.0).weights(10)
    assert only_direction == {k: v for k, v in SPEC_IMAGE_WEIGHTS.items() if k != "composition"}
    with pytest.raises(ConfigError, match="loss.lambda_direction=-1"):
        make_stack(guide, lambda_direction=-1.0)


def test_direction_weight_changes_only_its_share_of_the_total(guide: ClipGuide) -> None:
    """The same draws whatever the direction weight, as long as both CLIP terms are on."""
    inputs, outputs = step_data()
    default = make_stack(guide, bootstrap_steps=0)(inputs, outputs, 0, torch.Generator().manual_seed(4))
    heavy = make_stack(guide, bootstrap_steps=0, lambda_direction=3.0)(
        inputs, outputs, 0, torch.Generator().manual_seed(4)
    )
    assert set(default) == set(heavy)
    for name in set(default) - {"total"}:
        assert default[name].item() == heavy[name].item(), name
    extra = 2.0 * default["direction"].item()
    assert heavy["total"].item() == pytest.approx(default["total"].item() + extra, rel=1e-6)


@pytest.mark.parametrize(("off", "kept"), [("composition", "direction"), ("direction", "composition")])
def test_each_clip_text_term_can_be_ablated_alone(guide: ClipGuide, monkeypatch, off: str, kept: str) -> None:
    settings = {"lambda_composition": 1.0, "lambda_direction": 1.0, f"lambda_{off}": 0.0}
    stack = make_stack(guide, bootstrap_steps=0, lambda_structure=0.0, lambda_screen=0.0, **settings)
    method = {"composition": "clip_loss", "direction": "direction_loss"}[off]
    monkeypatch.setattr(stack, method, lambda *args: pytest.fail(f"the {off} term has weight 0"))
    inputs, outputs = step_data()
    terms = stack(inputs, outputs, 0, torch.Generator().manual_seed(0))
    assert set(terms) == {kept, "sparsity", "sparsity_l1", "sparsity_l0", "total"}
    expected = terms[kept].item() + 6.0 * terms["sparsity"].item()
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)


def test_zero_weight_terms_are_not_computed(guide: ClipGuide, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack(guide, lambda_structure=0.0, lambda_composition=0.0, lambda_screen=0.0, bootstrap_steps=0)

    def never(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    for name in ("structure_loss", "clip_loss", "direction_loss", "bootstrap_loss"):
        monkeypatch.setattr(stack, name, never)
    inputs, outputs = step_data()
    terms = stack(inputs, outputs, 0, torch.Generator().manual_seed(0))
    assert set(terms) == {"sparsity", "sparsity_l1", "sparsity_l0", "total"}
    assert terms["total"].item() == pytest.approx(6.0 * terms["sparsity"].item())


def test_clip_loss_by_hand(guide: ClipGuide) -> None:
    stack = make_stack(guide, n_aug=1, bootstrap_steps=0)
    stack.augment = NO_AUGMENT  # one view, the resized image itself
    _, outputs = step_data()
    image = outputs[0]["composite"]
    loss = stack.clip_loss([image], stack.comp_e, torch.Generator().manual_seed(5))

    rows = stack.comp_e[pick_rows(torch.Generator().manual_seed(5), 28)]  # the first draws of the step
    embedding = guide.encode_image(guide.normalize(resize_shorter(image, 224, 320)))
    expected = torch.stack([spherical_distance(embedding, row[None]) for row in rows]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_direction_loss_by_hand(guide: ClipGuide) -> None:
    stack = make_stack(guide, n_aug=1, bootstrap_steps=0)
    stack.augment = NO_AUGMENT
    inputs, outputs = step_data()
    composite = outputs[0]["composite"]
    loss = stack.direction_loss(inputs, [composite], torch.Generator().manual_seed(2))

    idx = pick_rows(torch.Generator().manual_seed(2), 14)
    delta = guide.encode_image(guide.normalize(resize_shorter(composite, 224, 320))) - guide.encode_image(
        guide.normalize(resize_shorter(inputs[0], 224, 320))
    )
    directions = stack.comp_e[idx] - stack.src_e[idx]
    expected = (1 - F.cosine_similarity(delta, directions, dim=-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_direction_loss_of_identical_views_is_one(guide: ClipGuide) -> None:
    # E(C) - E(I) = 0: cosine_similarity clamps the norm product, so cos = 0 and the loss is exactly 1.
    stack = make_stack(guide, n_aug=1, bootstrap_steps=0)
    stack.augment = NO_AUGMENT
    inputs, _ = step_data()
    loss = stack.direction_loss(inputs, inputs, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def _bootstrap_by_hand(guide: ClipGuide, stack: LossStack, alpha: torch.Tensor, image: torch.Tensor) -> float:
    relevancy = guide.relevancy(resize(image, (224, 224), True), stack.bootstrap_e)
    assert relevancy.amin().item() == pytest.approx(0.0) and relevancy.amax().item() == pytest.approx(1.0)
    return ((resize(alpha, (224, 224), True)[:, 0] - relevancy) ** 2).mean().item()


@pytest.mark.parametrize("sum_outputs", [False, True], ids=["reference-bug-3", "corrected"])
def test_bootstrap_over_two_outputs(guide: ClipGuide, sum_outputs: bool) -> None:
    stack = make_stack(guide, bootstrap_sum_outputs=sum_outputs)
    torch.manual_seed(0)
    inputs = [torch.rand(1, 3, 64, 96), torch.rand(1, 3, 96, 128)]
    alphas = [torch.zeros(1, 1, 64, 96), torch.ones(1, 1, 96, 128)]
    first, last = (_bootstrap_by_hand(guide, stack, a, i) for a, i in zip(alphas, inputs))
    assert abs(first - last) > 0.05  # mean(R^2) vs mean((1 - R)^2): the two outputs are distinguishable

    loss = stack.bootstrap_loss(alphas, inputs).item()
    expected = (first + last) / 2 if sum_outputs else last / 2
    assert loss == pytest.approx(expected, rel=1e-5)


def test_bootstrap_text_is_required_while_bootstrapping(guide: ClipGuide) -> None:
    with pytest.raises(ConfigError, match="bootstrap_text"):
        make_stack(guide, bootstrap_text=None, bootstrap_steps=10)
    with pytest.raises(ConfigError, match="bootstrap_text"):
        make_stack(guide, bootstrap_text="", bootstrap_steps=10)
    assert "bootstrap" not in make_stack(guide, bootstrap_text=None, bootstrap_steps=0).weights(0)


def test_invalid_settings_raise_config_error(guide: ClipGuide) -> None:
    with pytest.raises(ConfigError, match="text_criterion"):
        make_stack(guide, text_criterion="l2")
    with pytest.raises(ConfigError, match="n_aug"):
        make_stack(guide, n_aug=0)
    with pytest.raises(ConfigError, match="bootstrap_schedule"):
        make_stack(guide, bootstrap_schedule="cosine", bootstrap_steps=10)


def test_same_seed_same_values_other_seed_other_clip_terms(guide: ClipGuide) -> None:
    stack = make_stack(guide, n_aug=3)
    inputs, outputs = step_data()
    a = stack(inputs, outputs, 0, torch.Generator().manual_seed(7))
    b = stack(inputs, outputs, 0, torch.Generator().manual_seed(7))
    c = stack(inputs, outputs, 0, torch.Generator().manual_seed(8))
    assert set(a) == set(b) == set(c)
    for name in a:
        assert a[name].item() == b[name].item(), name
    for name in ("composition", "direction", "screen"):
        assert a[name].item() != pytest.approx(c[name].item(), rel=1e-4), name
    for name in ("structure", "sparsity", "bootstrap"):  # deterministic terms do not depend on the seed
        assert a[name].item() == pytest.approx(c[name].item(), rel=1e-6), name
