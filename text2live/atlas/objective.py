"""The Neural Layered Atlas objective (Kasten et al. 2021), term by term as NLA's ``train.py`` and
``loss_utils.py`` compute it (SPEC section 8).

A step sees random video pixels ``(x, y, t)`` with their colour, colour derivatives, mask and optical flow. The
two mapping networks send a pixel to a foreground and a background atlas point, the atlas network colours both,
and the alpha network blends them. The terms:

- ``rgb``: squared colour error of the blend; ``gradient``: squared error of its one-pixel x and y differences;
- ``sparsity``: squared colour of the foreground where alpha says background (the foreground stays dark there);
- ``rigidity_<layer>``: the mapping's Jacobian (finite differences over ``derivative_amount`` pixels) stays a
  rotation: ``|J^T J| + |(J^T J + 0.001 I)^-1|`` (Frobenius norms); ``global_rigidity_<layer>``: the same over
  ``global_derivative_amount_<layer>`` pixels, for the first ``stop_global_rigidity`` steps only;
- ``flow_<layer>``: a pixel and the pixel the optical flow moves it to in the next (previous) frame map to the same
  atlas point, in pixels, weighted by the layer's alpha; only flow that passed the forward-backward check counts;
- ``alpha_flow``: the same for the alpha values;
- ``alpha_bootstrap``: binary cross-entropy of alpha against the masks, for the first ``stop_bootstrapping`` steps.

Distances in the atlas are converted to frame pixels by ``max(W, H) / 2 / uv_mapping_scale``: the mappings are
pre-trained to ``uv = uv_mapping_scale * (x, y)`` in NLA's normalised coordinates. All the network evaluations of
a step are batched: each network runs once on every point the step needs.
"""

from __future__ import annotations

import math

import torch

from text2live.errors import ConfigError
from text2live.nla import NeuralAtlases

LAYERS = ("foreground", "background")
# A mapping's raw output u in [-1, 1]^2 is the atlas point 0.5 u + shift: the foreground atlas is [0, 1]^2 of the
# shared atlas network's input, the background atlas [-1, 0]^2.
ATLAS_SHIFT = {"foreground": 0.5, "background": -0.5}


def squash_alpha(raw: torch.Tensor) -> torch.Tensor:
    """NLA's alpha from the alpha network's tanh output: in [0.001, 0.991], so that its logarithms stay finite."""
    return 0.99 * (0.5 * (raw + 1.0)) + 0.001


def rigidity(
    uv: torch.Tensor, uv_up: torch.Tensor, uv_left: torch.Tensor, pixels_per_unit: float, amount: float
) -> torch.Tensor:
    """Per point: ``|J^T J|_F + |(J^T J + 0.001 I)^-1|_F`` of the mapping's Jacobian ``J`` in frame pixels.

    ``uv_up`` and ``uv_left`` are the mapping at ``(x, y - amount)`` and ``(x - amount, y)``; ``pixels_per_unit``
    converts atlas distances to pixels (``max(W, H) / 2 / uv_mapping_scale``).
    """
    scale = pixels_per_unit / amount
    d_dx = (uv - uv_left) * scale  # (du/dx, dv/dx)
    d_dy = (uv - uv_up) * scale  # (du/dy, dv/dy)
    jacobian = torch.stack([torch.stack([d_dx[:, 0], d_dy[:, 0]], 1), torch.stack([d_dx[:, 1], d_dy[:, 1]], 1)], 1)
    jtj = jacobian.transpose(1, 2) @ jacobian
    a, b = jtj[:, 0, 0] + 0.001, jtj[:, 0, 1]
    c, d = jtj[:, 1, 0], jtj[:, 1, 1] + 0.001
    inverse = torch.stack([torch.stack([d, -b], 1), torch.stack([-c, a], 1)], 1) / (a * d - b * c)[:, None, None]
    return jtj.square().sum((1, 2)).sqrt() + inverse.square().sum((1, 2)).sqrt()


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ``valid`` entries (0 when there is none)."""
    return (values * valid).sum() / valid.sum().clamp(min=1)


def flow_consistency(
    uv: torch.Tensor,
    uv_next: torch.Tensor,
    uv_previous: torch.Tensor,
    forward_valid: torch.Tensor,
    backward_valid: torch.Tensor,
    weight: torch.Tensor,
    pixels_per_unit: float,
) -> torch.Tensor:
    """Half the mean alpha-weighted atlas distance (in pixels) to the next frame's match, plus half that to the
    previous frame's, each over the points whose flow is valid."""
    next_error = (uv_next - uv).norm(dim=1) * pixels_per_unit * weight
    previous_error = (uv_previous - uv).norm(dim=1) * pixels_per_unit * weight
    return 0.5 * masked_mean(previous_error, backward_valid) + 0.5 * masked_mean(next_error, forward_valid)


class Points:
    """Named blocks of pixel points (x, y, t) that one network evaluates in a single call."""

    def __init__(self) -> None:
        self.blocks: dict[str, torch.Tensor] = {}

    def add(self, name: str, points: torch.Tensor) -> None:
        self.blocks[name] = points

    def evaluate(self, network: torch.nn.Module, nla: NeuralAtlases) -> dict[str, torch.Tensor]:
        out = network(nla.normalize(torch.cat(list(self.blocks.values()))))
        return dict(zip(self.blocks, out.split([len(b) for b in self.blocks.values()])))


class NLAObjective:
    """The weighted NLA loss of a step; every weight is NLA's default (``config/config.json``), 0 turns a term off.

    Args:
        lambda_*: the weight of each term (``rgb_coeff``, ``sparsity_coeff``, ``gradient_loss_coeff``,
            ``rigidity_coeff`` for both layers, ``global_rigidity_coeff_fg/bg``, ``optical_flow_coeff`` for both
            layers, ``alpha_flow_factor``, ``alpha_bootstrapping_factor``).
        stop_bootstrapping: the bootstrap term counts at steps 0 .. this one (``stop_bootstrapping_iteration``).
        stop_global_rigidity: the global rigidity terms count at steps 0 .. this one.
        derivative_amount: the finite-difference step of the local rigidity, in pixels.
        global_derivative_amount_foreground, global_derivative_amount_background: that of the global rigidity.
        uv_mapping_scale: the atlas scale the mappings are pre-trained to (atlas distance -> pixels).
    """

    def __init__(
        self,
        lambda_rgb: float = 5000.0,
        lambda_sparsity: float = 1000.0,
        lambda_gradient: float = 1000.0,
        lambda_rigidity_foreground: float = 1.0,
        lambda_rigidity_background: float = 1.0,
        lambda_global_rigidity_foreground: float = 5.0,
        lambda_global_rigidity_background: float = 50.0,
        lambda_flow_foreground: float = 5.0,
        lambda_flow_background: float = 5.0,
        lambda_alpha_flow: float = 49.0,
        lambda_alpha_bootstrap: float = 2000.0,
        stop_bootstrapping: int = 10000,
        stop_global_rigidity: int = 5000,
        derivative_amount: float = 1.0,
        global_derivative_amount_foreground: float = 100.0,
        global_derivative_amount_background: float = 100.0,
        uv_mapping_scale: float = 0.8,
    ) -> None:
        self.lambdas = {
            "rgb": lambda_rgb,
            "sparsity": lambda_sparsity,
            "gradient": lambda_gradient,
            "rigidity_foreground": lambda_rigidity_foreground,
            "rigidity_background": lambda_rigidity_background,
            "global_rigidity_foreground": lambda_global_rigidity_foreground,
            "global_rigidity_background": lambda_global_rigidity_background,
            "flow_foreground": lambda_flow_foreground,
            "flow_background": lambda_flow_background,
            "alpha_flow": lambda_alpha_flow,
            "alpha_bootstrap": lambda_alpha_bootstrap,
        }
        for name, value in self.lambdas.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"loss.lambda_{name}={value!r} is not valid: loss weights are finite and >= 0 (0 turns a term off)"
                )
        for key, value in (
            ("derivative_amount", derivative_amount),
            ("global_derivative_amount_foreground", global_derivative_amount_foreground),
            ("global_derivative_amount_background", global_derivative_amount_background),
            ("uv_mapping_scale", uv_mapping_scale),
        ):
            if not (isinstance(value, (int, float)) and value > 0):
                raise ConfigError(f"loss.{key}={value!r} is not valid: use a number > 0")
        self.stop_bootstrapping = stop_bootstrapping
        self.stop_global_rigidity = stop_global_rigidity
        self.derivative_amount = derivative_amount
        self.global_amounts = {
            "foreground": global_derivative_amount_foreground,
            "background": global_derivative_amount_background,
        }
        self.uv_mapping_scale = uv_mapping_scale

    def weights(self, step: int) -> dict[str, float]:
        """The weight of every term computed at ``step`` (0-based), scheduled terms included while they last."""
        weights = dict(self.lambdas)
        if step > self.stop_bootstrapping:
            weights.pop("alpha_bootstrap")
        if step > self.stop_global_rigidity:
            weights.pop("global_rigidity_foreground")
            weights.pop("global_rigidity_background")
        return {name: w for name, w in weights.items() if w > 0}

    def pixels_per_unit(self, nla: NeuralAtlases) -> float:
        """Frame pixels per unit of a mapping's raw output."""
        return max(nla.width, nla.height) / 2 / self.uv_mapping_scale

    def __call__(
        self, nla: NeuralAtlases, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The terms computed at ``step`` by name (unweighted) with ``total`` (the weighted sum), and the
        outputs at the batch's points: ``alpha`` ([N, 1]) and ``rgb`` ([N, 3], the blend of the two layers).

        ``batch``: ``xyt`` ([N, 3] pixel coordinates), ``rgb``, ``rgb_dx``, ``rgb_dy`` ([N, 3]), ``mask``
        ([N, 1]), ``flow_forward``, ``flow_backward`` ([N, 2], pixels) and ``forward_valid``, ``backward_valid``
        ([N] bool; the flow of an invalid point is 0).
        """
        weights = self.weights(step)
        xyt = batch["xyt"]
        per_pixel = self.pixels_per_unit(nla)

        def shifted(dx: float, dy: float) -> torch.Tensor:
            return xyt + xyt.new_tensor([dx, dy, 0.0])

        def flowed(flow: torch.Tensor, dt: float) -> torch.Tensor:
            return xyt + torch.cat([flow, torch.full_like(flow[:, :1], dt)], dim=1)

        gradient = "gradient" in weights
        neighbours = {"x+1": shifted(1.0, 0.0), "y+1": shifted(0.0, 1.0)} if gradient else {}
        matches = {"next": flowed(batch["flow_forward"], 1.0), "previous": flowed(batch["flow_backward"], -1.0)}

        uvs = {}
        for layer, mapping in zip(LAYERS, (nla.foreground_mapping, nla.background_mapping)):
            points = Points()
            points.add("base", xyt)
            if f"rigidity_{layer}" in weights:
                points.add("up", shifted(0.0, -self.derivative_amount))
                points.add("left", shifted(-self.derivative_amount, 0.0))
            if f"global_rigidity_{layer}" in weights:
                amount = self.global_amounts[layer]
                points.add("global_up", shifted(0.0, -amount))
                points.add("global_left", shifted(-amount, 0.0))
            for name, p in neighbours.items():
                points.add(name, p)
            if f"flow_{layer}" in weights:
                for name, p in matches.items():
                    points.add(name, p)
            uvs[layer] = points.evaluate(mapping, nla)

        alpha_points = Points()
        alpha_points.add("base", xyt)
        for name, p in neighbours.items():
            alpha_points.add(name, p)
        if "alpha_flow" in weights:
            for name, p in matches.items():
                alpha_points.add(name, p)
        alphas = {name: squash_alpha(a) for name, a in alpha_points.evaluate(nla.alpha, nla).items()}

        # one atlas call colours both layers at every point that needs a colour
        keys = [(layer, name) for layer in LAYERS for name in ("base", *neighbours)]
        atlas_in = [0.5 * uvs[layer][name] + ATLAS_SHIFT[layer] for layer, name in keys]
        atlas_out = 0.5 * (nla.atlas(torch.cat(atlas_in)) + 1.0)
        colours = dict(zip(keys, atlas_out.split([len(x) for x in atlas_in])))

        def blend(name: str) -> torch.Tensor:
            a = alphas[name]
            return colours[("foreground", name)] * a + colours[("background", name)] * (1 - a)

        alpha = alphas["base"]
        rgb = blend("base")
        terms: dict[str, torch.Tensor] = {}
        if "rgb" in weights:
            terms["rgb"] = (rgb - batch["rgb"]).square().sum(1).mean()
        if "sparsity" in weights:
            terms["sparsity"] = (colours[("foreground", "base")] * (1 - alpha)).square().sum(1).mean()
        if gradient:
            dx, dy = blend("x+1") - rgb, blend("y+1") - rgb
            terms["gradient"] = ((batch["rgb_dx"] - dx).square().sum(1) + (batch["rgb_dy"] - dy).square().sum(1)).mean()
        for layer in LAYERS:
            uv = uvs[layer]
            if f"rigidity_{layer}" in weights:
                terms[f"rigidity_{layer}"] = rigidity(
                    uv["base"], uv["up"], uv["left"], per_pixel, self.derivative_amount
                ).mean()
            if f"global_rigidity_{layer}" in weights:
                terms[f"global_rigidity_{layer}"] = rigidity(
                    uv["base"], uv["global_up"], uv["global_left"], per_pixel, self.global_amounts[layer]
                ).mean()
            if f"flow_{layer}" in weights:
                weight = alpha[:, 0] if layer == "foreground" else 1 - alpha[:, 0]
                terms[f"flow_{layer}"] = flow_consistency(
                    uv["base"],
                    uv["next"],
                    uv["previous"],
                    batch["forward_valid"],
                    batch["backward_valid"],
                    weight,
                    per_pixel,
                )
        if "alpha_flow" in weights:
            a = alpha[:, 0]
            terms["alpha_flow"] = 0.5 * masked_mean((a - alphas["next"][:, 0]).abs(), batch["forward_valid"]) + (
                0.5 * masked_mean((alphas["previous"][:, 0] - a).abs(), batch["backward_valid"])
            )
        if "alpha_bootstrap" in weights:
            mask = batch["mask"]
            terms["alpha_bootstrap"] = (-mask * alpha.log() - (1 - mask) * (1 - alpha).log()).mean()
        terms["total"] = sum((weights[name] * terms[name] for name in terms), xyt.new_zeros(()))
        return terms, {"alpha": alpha, "rgb": rgb}
