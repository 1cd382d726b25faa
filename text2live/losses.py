"""The Text2LIVE loss stack (SPEC section 3): each term a small function, the stack weights and sums them.

Terms are averaged over the list of outputs of the step (the augmented crop, plus the full image every
``source_image_every`` steps). A term whose weight is 0 is not computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from text2live.clip_guide import SCREEN_TEMPLATES, TEMPLATES, ClipGuide
from text2live.draws import Draws
from text2live.errors import ConfigError
from text2live.views import ViewAugment, ViewPlan, resize, to_device

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def spherical_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``2 * arcsin(||x^ - y^|| / 2) ** 2`` (x^, y^ unit vectors); y broadcasts."""
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2).mean()


def cosine_distance(x: torch.Tensor, y: torch.Tensor, scale: float = 1.2) -> torch.Tensor:
    """``scale * (1 - mean cosine similarity)``; the reference scales by 1.2."""
    return scale * (1 - F.cosine_similarity(x, y, dim=-1).mean())


TEXT_CRITERIA: dict[str, Criterion] = {"spherical": spherical_distance, "cosine": cosine_distance}


def sparsity_terms(alphas: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 (mean alpha) and pseudo-L0 (mean of ``2 * sigmoid(5 * alpha) - 1``), each averaged over outputs."""
    l1 = sum(a.mean() for a in alphas) / len(alphas)
    l0 = sum(((torch.sigmoid(a * 5.0) - 0.5) * 2.0).mean() for a in alphas) / len(alphas)
    return l1, l0


def pick_rows(g: torch.Generator | Draws, n_rows: int) -> torch.Tensor:
    """``k ~ U{1..n_rows}`` row indices drawn with replacement."""
    if isinstance(g, Draws):
        return torch.tensor(g.randints(n_rows, g.randint(1, n_rows + 1)), dtype=torch.int64)
    k = int(torch.randint(1, n_rows + 1, (1,), generator=g).item())
    return torch.randint(n_rows, (k,), generator=g)


BOOTSTRAP_SCHEDULES = ("linear", "exponential", "none")


def check_bootstrap_schedule(schedule: str) -> None:
    if schedule not in BOOTSTRAP_SCHEDULES:
        raise ConfigError(f"loss.bootstrap_schedule={schedule!r} is not one of {', '.join(BOOTSTRAP_SCHEDULES)}")


def bootstrap_weight(step: int, weight: float, steps: int, schedule: str = "linear", minimum: float = 0.0) -> float:
    """Weight of the bootstrap term at 0-based ``step`` (0 from ``steps`` on)."""
    check_bootstrap_schedule(schedule)
    if step >= steps or weight <= 0:
        return 0.0
    if schedule == "linear":
        value = weight * (1 - (step + 1) / steps)
    elif schedule == "exponential":
        value = weight * 0.99 ** (step + 1)
    else:
        value = weight
    return max(value, minimum)


class LossStack(nn.Module):
    """All loss terms of one step; returns the named terms and their weighted total.

    Args:
        guide: the frozen CLIP guidance.
        src_text, comp_text, screen_text: prompts (a string or a list) for the source, the composite and the
            edit layer over a green screen.
        bootstrap_text: the prompt of the relevancy map (no templates); required while bootstrapping.
        lambda_*: weights of the terms (0 disables a term).
        lambda_direction: weight of the direction term; ``None`` (the default) gives it ``lambda_composition``.
        lambda_alpha_l1, lambda_alpha_l0: mix of the two sparsity penalties inside the sparsity term.
        bootstrap_steps: the bootstrap term is active for steps < this (the reference's bootstrap_epoch).
        bootstrap_schedule: linear | exponential | none, floored at ``lambda_bootstrap_min``.
        bootstrap_sum_outputs: sum the bootstrap loss over the step's outputs before dividing by their number;
            ``false`` keeps only the last output's loss (the reference's bug 3).
        text_criterion: spherical | cosine.
        n_aug: CLIP views per output.
        view_fill: fill value of the affine and perspective view augmentations.
    """

    def __init__(
        self,
        guide: ClipGuide,
        src_text: str | Sequence[str],
        comp_text: str | Sequence[str],
        screen_text: str | Sequence[str],
        bootstrap_text: str | Sequence[str] | None = None,
        lambda_structure: float = 2.0,
        lambda_composition: float = 1.0,
        lambda_direction: float | None = None,
        lambda_sparsity: float = 6.0,
        lambda_alpha_l1: float = 0.01,
        lambda_alpha_l0: float = 0.01,
        lambda_screen: float = 1.0,
        lambda_bootstrap: float = 10.0,
        bootstrap_steps: int = 1000,
        bootstrap_schedule: str = "linear",
        lambda_bootstrap_min: float = 0.0,
        bootstrap_sum_outputs: bool = False,
        text_criterion: str = "spherical",
        n_aug: int = 16,
        view_fill: float = 1.0,
    ) -> None:
        super().__init__()
        if text_criterion not in TEXT_CRITERIA:
            raise ConfigError(f"loss.text_criterion={text_criterion!r} is not one of {', '.join(TEXT_CRITERIA)}")
        if lambda_direction is None:
            lambda_direction = lambda_composition
        weights = {
            "lambda_structure": lambda_structure,
            "lambda_composition": lambda_composition,
            "lambda_direction": lambda_direction,
            "lambda_sparsity": lambda_sparsity,
            "lambda_alpha_l1": lambda_alpha_l1,
            "lambda_alpha_l0": lambda_alpha_l0,
            "lambda_screen": lambda_screen,
            "lambda_bootstrap": lambda_bootstrap,
            "lambda_bootstrap_min": lambda_bootstrap_min,
        }
        for key, value in weights.items():
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"loss.{key}={value} is not valid: loss weights are finite and >= 0 (0 turns a term off)"
                )
        if n_aug < 1:
            raise ConfigError(f"loss.n_aug must be at least 1, got {n_aug}")
        self.guide = guide
        self.lambda_structure = lambda_structure
        self.lambda_composition = lambda_composition
        self.lambda_direction = lambda_direction
        self.lambda_sparsity = lambda_sparsity
        self.lambda_alpha_l1 = lambda_alpha_l1
        self.lambda_alpha_l0 = lambda_alpha_l0
        self.lambda_screen = lambda_screen
        self.lambda_bootstrap = lambda_bootstrap
        self.bootstrap_steps = bootstrap_steps
        self.bootstrap_schedule = bootstrap_schedule
        self.lambda_bootstrap_min = lambda_bootstrap_min
        self.bootstrap_sum_outputs = bootstrap_sum_outputs
        self.criterion = TEXT_CRITERIA[text_criterion]
        self.n_aug = n_aug
        self.augment = ViewAugment(fill=view_fill)
        check_bootstrap_schedule(bootstrap_schedule)
        if self.bootstraps and not bootstrap_text:
            raise ConfigError(
                "bootstrapping is on (loss.bootstrap_steps > 0) but bootstrap_text is empty: set bootstrap_text="
                "<the object to edit> or loss.bootstrap_steps=0"
            )
        # Text embeddings never change: computed once, kept out of checkpoints.
        self.register_buffer("src_e", guide.text_embeddings(src_text, TEMPLATES), persistent=False)
        self.register_buffer("comp_e", guide.text_embeddings(comp_text, TEMPLATES), persistent=False)
        self.register_buffer("screen_e", guide.text_embeddings(screen_text, SCREEN_TEMPLATES), persistent=False)
        if self.bootstraps:
            self.register_buffer("bootstrap_e", guide.relevancy_text(bootstrap_text), persistent=False)

    @property
    def bootstraps(self) -> bool:
        return self.bootstrap_steps > 0 and self.lambda_bootstrap > 0

    def weights(self, step: int) -> dict[str, float]:
        """The weight of every term at ``step``; terms with weight 0 are left out."""
        weights = {
            "bootstrap": bootstrap_weight(
                step, self.lambda_bootstrap, self.bootstrap_steps, self.bootstrap_schedule, self.lambda_bootstrap_min
            ),
            "structure": self.lambda_structure,
            "composition": self.lambda_composition,
            "direction": self.lambda_direction,
            "sparsity": self.lambda_sparsity,
            "screen": self.lambda_screen,
        }
        return {name: w for name, w in weights.items() if w > 0}

    def forward(
        self, inputs: Sequence[torch.Tensor], outputs: Sequence[dict[str, torch.Tensor]], step: int, g: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Terms for the step's ``inputs`` ([1, 3, H, W] each) and their rendered ``outputs``.

        Returns every computed term by name, the two sparsity components (``sparsity_l1``, ``sparsity_l0``,
        for logging) and ``total``, the weighted sum. Random draws (text rows, CLIP views) come from ``g``
        in a fixed order.
        """
        weights = self.weights(step)
        composites = [o["composite"] for o in outputs]
        screens = [o["edit_on_greenscreen"] for o in outputs]
        # the random draws first, in the reference's order (text rows, then each image's views, term by term);
        # then all views at once
        with Draws(g) as draws:
            plan = ViewPlan(draws, self.n_aug, self.augment, self.guide.legacy_resize)
            if "composition" in weights:
                composition = self._draw_text_term(draws, plan, composites, self.comp_e)
            if "direction" in weights:
                direction = self._draw_direction_term(draws, plan, inputs, composites)
            if "screen" in weights:
                screen = self._draw_text_term(draws, plan, screens, self.screen_e)
        embeddings = self.guide.embed_plan(plan)

        terms: dict[str, torch.Tensor] = {}
        if "bootstrap" in weights:
            terms["bootstrap"] = self.bootstrap_loss([o["alpha"] for o in outputs], inputs)
        if "structure" in weights:
            terms["structure"] = self.structure_loss(inputs, composites)
        if "composition" in weights:
            terms["composition"] = self.text_loss([embeddings[i] for i in composition[1]], composition[0])
        if "direction" in weights:
            views = [(embeddings[i], embeddings[o]) for i, o in direction[1]]
            terms["direction"] = self.direction_term(views, direction[0])
        if "sparsity" in weights:
            l1, l0 = sparsity_terms([o["alpha"] for o in outputs])
            terms["sparsity"] = self.lambda_alpha_l1 * l1 + self.lambda_alpha_l0 * l0
            terms["sparsity_l1"], terms["sparsity_l0"] = l1, l0
        if "screen" in weights:
            terms["screen"] = self.text_loss([embeddings[i] for i in screen[1]], screen[0])
        total = sum((weights[name] * terms[name] for name in weights), torch.zeros((), device=self.src_e.device))
        return {**terms, "total": total}

    @staticmethod
    def _rows(g: torch.Generator | Draws, targets: torch.Tensor) -> torch.Tensor:
        return to_device(pick_rows(g, len(targets)), targets.device)

    def _draw_text_term(
        self, g: torch.Generator | Draws, plan: ViewPlan, images: Sequence[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, list[int]]:
        """The draws of a text term: its target rows, then the views of each image (their indices in ``plan``)."""
        rows = targets[self._rows(g, targets)]
        return rows, [plan.add(image) for image in images]

    def _draw_direction_term(
        self, g: torch.Generator | Draws, plan: ViewPlan, inputs: Sequence[torch.Tensor], composites
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The draws of the direction term: paired text rows, then the views of each input and its composite."""
        idx = to_device(pick_rows(g, min(len(self.src_e), len(self.comp_e))), self.src_e.device)
        pairs = [(plan.add(i), plan.add(c)) for i, c in zip(inputs, composites, strict=True)]
        return self.comp_e[idx] - self.src_e[idx], pairs

    def text_loss(self, embeddings: Sequence[torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
        """Criterion between the view embeddings of each image and each of the picked text rows, averaged.

        One broadcast evaluation over rows x images x views: the mean over all of them is the average, over images
        and rows, of each pair's mean over views (every pair has as many views).
        """
        return self.criterion(torch.stack(list(embeddings))[None], rows[:, None, None])

    def direction_term(
        self, views: Sequence[tuple[torch.Tensor, torch.Tensor]], directions: torch.Tensor
    ) -> torch.Tensor:
        """``1 - cos(E(composite views) - E(input views), direction)`` over the images and the picked directions."""
        moves = torch.stack([out_e - in_e for in_e, out_e in views])
        return 1 - F.cosine_similarity(moves[None], directions[:, None, None], dim=-1).mean()

    def clip_loss(self, images: Sequence[torch.Tensor], targets: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Criterion between the views of each image and a random subset of the target text rows."""
        plan = ViewPlan(g, self.n_aug, self.augment, self.guide.legacy_resize)
        rows, ids = self._draw_text_term(g, plan, images, targets)
        embeddings = self.guide.embed_plan(plan)
        return self.text_loss([embeddings[i] for i in ids], rows)

    def direction_loss(
        self, inputs: Sequence[torch.Tensor], composites: Sequence[torch.Tensor], g: torch.Generator
    ) -> torch.Tensor:
        """``1 - cos(E(composite views) - E(input views), comp row - src row)`` over random paired rows."""
        plan = ViewPlan(g, self.n_aug, self.augment, self.guide.legacy_resize)
        directions, pairs = self._draw_direction_term(g, plan, inputs, composites)
        embeddings = self.guide.embed_plan(plan)
        return self.direction_term([(embeddings[i], embeddings[o]) for i, o in pairs], directions)

    def structure_loss(self, inputs: Sequence[torch.Tensor], composites: Sequence[torch.Tensor]) -> torch.Tensor:
        """MSE between the CLIP self-similarities of each composite and its input (target without grad)."""
        loss = 0.0
        for image, composite in zip(inputs, composites, strict=True):
            with torch.no_grad():
                target = self.guide.self_similarity(image).float()
            loss = loss + F.mse_loss(self.guide.self_similarity(composite).float(), target)
        return loss / len(inputs)

    def bootstrap_loss(self, alphas: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """MSE between alpha and the relevancy map of the input, both resized to CLIP's resolution."""
        size = self.guide.relevancy_resolution
        loss = 0.0
        for alpha, image in zip(alphas, inputs, strict=True):
            alpha = resize(alpha, (size, size), self.guide.legacy_resize)
            image = resize(image, (size, size), self.guide.legacy_resize)
            relevancy = self.guide.relevancy(image, self.bootstrap_e)
            term = F.mse_loss(alpha[:, 0], relevancy)
            loss = loss + term if self.bootstrap_sum_outputs else term
        return loss / len(alphas)
