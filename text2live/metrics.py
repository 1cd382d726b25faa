"""Metrics of an edit: how well it matches the text, how much of the input it keeps, how stable a video edit is.

Every function takes tensors in [0, 1] (images ``[N, 3, H, W]``, usually N = 1; alpha ``[N, 1, H, W]``; videos
``[T, 3, H, W]``), works under ``torch.no_grad`` in float32 on the guide's device and returns Python floats.

Notation: ``E(x)`` is the unit-norm CLIP embedding of the whole image ``x`` resized so its shorter side is 224
px with the longer side capped at 320 px (exactly view 1 of the CLIP loss, before augmentation, with the
guide's ``legacy_resize``). ``T(p)`` is the text target of the prompts ``p``: the unit-norm mean, over the
prompts and the 14 templates of :data:`text2live.clip_guide.TEMPLATES`, of the unit-norm text embeddings
``guide.text_embeddings(p, TEMPLATES)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from text2live.clip_guide import TEMPLATES, ClipGuide
from text2live.views import resize_shorter

Prompts = str | Sequence[str]

CLIP_SIZE, CLIP_MAX_SIZE = 224, 320  # view 1 of the CLIP loss
PSNR_CAP = 100.0  # dB: the PSNR of identical images (and the ceiling of every PSNR)
BATCH = 16  # images embedded at once


def _device(guide: ClipGuide) -> torch.device:
    return guide.mean.device


def _on(guide: ClipGuide, x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(device=_device(guide), dtype=torch.float32)


@torch.no_grad()
def embed_images(guide: ClipGuide, images: torch.Tensor) -> torch.Tensor:
    """``E(x)`` of every image of ``images`` [N, 3, H, W]: unit-norm float32 embeddings [N, D]."""
    rows = []
    for chunk in images.split(BATCH):
        x = resize_shorter(_on(guide, chunk), CLIP_SIZE, CLIP_MAX_SIZE, guide.legacy_resize)
        rows.append(F.normalize(guide.encode_image(guide.normalize(x)).float(), dim=-1))
    return torch.cat(rows)


@torch.no_grad()
def text_target(guide: ClipGuide, prompts: Prompts) -> torch.Tensor:
    """``T(prompts) = normalize(mean_{prompt, template} normalize(text embedding))``, a unit vector [D]."""
    rows = F.normalize(guide.text_embeddings(_prompt_list(prompts), TEMPLATES).float(), dim=-1)
    return F.normalize(rows.mean(0), dim=0)


def _prompt_list(prompts: Prompts) -> list[str]:
    return [prompts] if isinstance(prompts, str) else [str(p) for p in prompts]


def _score(embeddings: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over rows of ``100 * cos(E, T)`` (both unit norm)."""
    return float(100 * (embeddings @ target).mean())


def _direction(e_input: torch.Tensor, e_edit: torch.Tensor, t_src: torch.Tensor, t_comp: torch.Tensor) -> float:
    """Mean over rows of ``cos(E(edit) - E(input), T(comp) - T(src))`` (0 where the images embed alike)."""
    return float(F.cosine_similarity(e_edit - e_input, (t_comp - t_src)[None], dim=-1).mean())


def _consistency(embeddings: torch.Tensor) -> float:
    """Mean of ``cos(E_t, E_{t+1})`` over consecutive rows; NaN for fewer than two rows."""
    if len(embeddings) < 2:
        return math.nan
    return float((embeddings[1:] * embeddings[:-1]).sum(-1).mean())


# the metrics --------------------------------------------------------------------------------------------------


@torch.no_grad()
def clip_score(guide: ClipGuide, image: torch.Tensor, prompts: Prompts) -> float:
    """CLIP score ``100 * cos(E(image), T(prompts))`` (averaged over the images of a batch).

    Higher is a closer match of the image to the text. It is torchmetrics' ``CLIPScore`` (``100 * cos``) without
    its clipping at 0, with the template-averaged text target of training instead of the bare prompt.
    """
    return _score(embed_images(guide, image), text_target(guide, prompts))


@torch.no_grad()
def clip_directional_similarity(
    guide: ClipGuide, input: torch.Tensor, composite: torch.Tensor, src_prompts: Prompts, comp_prompts: Prompts
) -> float:
    """CLIP directional similarity ``cos(E(composite) - E(input), T(comp_prompts) - T(src_prompts))``.

    In [-1, 1]: 1 when the image changed exactly in the direction from the source text to the target text
    (Gal et al. 2022; the unit-norm embeddings are subtracted, as in InstructPix2Pix's evaluation). 0 when the
    composite embeds exactly like the input. Swapping input and composite flips its sign.
    """
    e_input, e_comp = embed_images(guide, input), embed_images(guide, composite)
    return _direction(e_input, e_comp, text_target(guide, src_prompts), text_target(guide, comp_prompts))


@torch.no_grad()
def structure_distance(guide: ClipGuide, input: torch.Tensor, composite: torch.Tensor) -> float:
    """``mean((S(composite) - S(input))^2)`` where ``S`` is ``guide.self_similarity``.

    ``S`` is the cosine self-similarity of all ViT tokens before the last block, of the image resized to a
    shorter side of 224 px (longer side at most 380): the structure loss of training, without augmentation.
    0 for identical images.
    """
    s_comp = guide.self_similarity(_on(guide, composite)).float()
    s_input = guide.self_similarity(_on(guide, input)).float()
    return float(F.mse_loss(s_comp, s_input))


@torch.no_grad()
def preservation(input: torch.Tensor, composite: torch.Tensor, alpha: torch.Tensor) -> dict[str, float]:
    """How much of the input is kept where the edit is transparent: weights ``w = 1 - alpha`` per pixel.

    With ``I`` the input, ``C`` the composite, ``w`` broadcast over the 3 channels and sums over pixels and
    channels:

    - ``l1 = sum(w |C - I|) / sum(w)``  (0 is a perfect preservation);
    - ``psnr = min(100, 10 log10(1 / wmse))`` dB with ``wmse = sum(w (C - I)^2) / sum(w)``; identical images
      (``wmse = 0``) give the cap, 100 dB;
    - ``ssim = sum(w' M) / sum(w')`` where ``M`` is torchmetrics' SSIM map of (C, I) (Gaussian 11 x 11 window,
      sigma 1.5, ``data_range = 1``) averaged over the channels and ``w' = 1 - alpha`` per pixel; with
      ``alpha = 0`` everywhere it is torchmetrics' mean SSIM.

    When the edit is opaque everywhere (``sum(w) = 0``) nothing is left to preserve and all three are NaN.
    """
    input = input.detach().float()
    composite = composite.detach().to(input)
    weight = (1 - alpha.detach().to(input)).expand_as(input[:, :1])
    total = weight.sum()
    if float(total) <= 0:
        return {"l1": math.nan, "psnr": math.nan, "ssim": math.nan}
    diff = composite - input
    channels = input.shape[1]
    l1 = float((weight * diff.abs()).sum() / (channels * total))
    wmse = float((weight * diff.square()).sum() / (channels * total))
    psnr = PSNR_CAP if wmse <= 0 else min(PSNR_CAP, 10 * math.log10(1 / wmse))
    _, ssim_map = structural_similarity_index_measure(
        composite, input, data_range=1.0, return_full_image=True, reduction="none"
    )
    ssim = float((weight * ssim_map.mean(1, keepdim=True)).sum() / total)
    return {"l1": l1, "psnr": psnr, "ssim": ssim}


@torch.no_grad()
def alpha_coverage(alpha: torch.Tensor) -> dict[str, float]:
    """``alpha_mean = mean(alpha)`` and ``alpha_area = mean(alpha > 0.5)`` (the fraction of opaque pixels)."""
    alpha = alpha.detach().float()
    return {"alpha_mean": float(alpha.mean()), "alpha_area": float((alpha > 0.5).float().mean())}


@torch.no_grad()
def frame_consistency(guide: ClipGuide, frames: torch.Tensor) -> float:
    """``mean_t cos(E(frame_t), E(frame_{t+1}))`` over the consecutive frames of ``frames`` [T, 3, H, W].

    1 for a video of identical frames; NaN for a single frame.
    """
    return _consistency(embed_images(guide, frames))


# all of them ----------------------------------------------------------------------------------------------------


def _structure_per_frame(guide: ClipGuide, video: torch.Tensor, edited: torch.Tensor) -> float:
    distances = [structure_distance(guide, video[t : t + 1], edited[t : t + 1]) for t in range(len(video))]
    return sum(distances) / len(distances)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


@torch.no_grad()
def image_metrics(
    guide: ClipGuide,
    input: torch.Tensor,
    composite: torch.Tensor,
    alpha: torch.Tensor,
    comp_prompts: Prompts,
    src_prompts: Prompts,
) -> dict[str, float]:
    """Every metric of an image edit (input, composite [1, 3, H, W], the edit's alpha [1, 1, H, W]).

    Keys: ``clip_score`` (of the composite, see :func:`clip_score`), ``clip_score_input`` (of the input, for
    reference), ``clip_directional_similarity``, ``structure_distance``, ``preservation_l1``,
    ``preservation_psnr``, ``preservation_ssim`` (see :func:`preservation`), ``alpha_mean`` and ``alpha_area``.
    Each image is embedded once.
    """
    input, composite, alpha = (_on(guide, x) for x in (input, composite, alpha))
    e_input, e_comp = embed_images(guide, input), embed_images(guide, composite)
    t_comp, t_src = text_target(guide, comp_prompts), text_target(guide, src_prompts)
    metrics = {
        "clip_score": _score(e_comp, t_comp),
        "clip_score_input": _score(e_input, t_comp),
        "clip_directional_similarity": _direction(e_input, e_comp, t_src, t_comp),
        "structure_distance": structure_distance(guide, input, composite),
    }
    metrics.update({f"preservation_{k}": v for k, v in preservation(input, composite, alpha).items()})
    metrics.update(alpha_coverage(alpha))
    return metrics


@torch.no_grad()
def video_metrics(
    guide: ClipGuide,
    video: torch.Tensor,
    edited: torch.Tensor,
    visible_alpha: torch.Tensor | Mapping[str, torch.Tensor],
    comp_prompts: Prompts | Mapping[str, Prompts],
    src_prompts: Prompts | Mapping[str, Prompts],
) -> dict[str, float]:
    """Every metric of a video edit: the input ``video`` and the ``edited`` video [T, 3, H, W].

    The image metrics of :func:`image_metrics` are computed per frame and averaged over the frames (the
    preservation ones skip frames where they are NaN), plus ``frame_consistency`` of the edited video and
    ``frame_consistency_input`` of the input video (for reference, see :func:`frame_consistency`).

    Several edited layers: pass ``{layer: prompts}`` as ``comp_prompts``/``src_prompts`` and ``{layer: visible
    alpha [T, 1, H, W]}`` as ``visible_alpha``. The metrics that depend on the prompts (``clip_score``,
    ``clip_score_input``, ``clip_directional_similarity``) are then reported per layer as
    ``<layer>/<metric>``, as are ``<layer>/alpha_mean`` and ``<layer>/alpha_area`` of each layer's visible
    alpha; the others are reported once, with the union opacity ``1 - prod_layers(1 - visible_alpha)`` as the
    edit's alpha. Plain prompts and one alpha tensor give unprefixed keys.
    """
    if isinstance(comp_prompts, Mapping) != isinstance(src_prompts, Mapping):
        raise ValueError("comp_prompts and src_prompts must both be {layer: prompts} or both plain prompts")
    if isinstance(comp_prompts, Mapping):
        if set(comp_prompts) != set(src_prompts):
            raise ValueError(f"prompts for different layers: {sorted(comp_prompts)} and {sorted(src_prompts)}")
        prompts = {f"{layer}/": (comp_prompts[layer], src_prompts[layer]) for layer in comp_prompts}
    else:
        prompts = {"": (comp_prompts, src_prompts)}
    video, edited = _on(guide, video), _on(guide, edited)
    alphas = {k: _on(guide, a) for k, a in visible_alpha.items()} if isinstance(visible_alpha, Mapping) else {}
    union = 1 - torch.stack([1 - a for a in alphas.values()]).prod(0) if alphas else _on(guide, visible_alpha)

    e_input, e_edit = embed_images(guide, video), embed_images(guide, edited)
    metrics: dict[str, float] = {}
    for prefix, (comp, src) in prompts.items():
        t_comp, t_src = text_target(guide, comp), text_target(guide, src)
        metrics[f"{prefix}clip_score"] = _score(e_edit, t_comp)
        metrics[f"{prefix}clip_score_input"] = _score(e_input, t_comp)
        metrics[f"{prefix}clip_directional_similarity"] = _direction(e_input, e_edit, t_src, t_comp)
    metrics["structure_distance"] = _structure_per_frame(guide, video, edited)
    per_frame = [preservation(video[t : t + 1], edited[t : t + 1], union[t : t + 1]) for t in range(len(video))]
    for key in ("l1", "psnr", "ssim"):
        metrics[f"preservation_{key}"] = _nanmean([frame[key] for frame in per_frame])
    metrics.update(alpha_coverage(union))
    for layer, alpha in alphas.items():
        metrics.update({f"{layer}/{k}": v for k, v in alpha_coverage(alpha).items()})
    metrics["frame_consistency"] = _consistency(e_edit)
    metrics["frame_consistency_input"] = _consistency(e_input)
    return metrics
