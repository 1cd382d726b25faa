"""Frozen CLIP guidance: text embeddings, image embeddings of augmented views, self-similarity, relevancy.

The visual transformer is run by this module (not by ``clip``'s own forward) so that it can take inputs of
any size (the positional embedding is interpolated, DINO style), stop before the last block for the
self-similarity, and expose attention probabilities for the Chefer et al. relevancy map.
"""

from __future__ import annotations

import math
import os
import urllib.error
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from text2live.errors import ConfigError, InputError, MissingWeightsError
from text2live.views import ViewPlan, resize_shorter

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the clip package imports the deprecated pkg_resources
    import clip
    import clip.clip
    from clip.model import CLIP, convert_weights

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

TEMPLATES = (
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
SCREEN_TEMPLATES = ("{} over a green screen.", "{} in front of a green screen.")

DEFAULT_DOWNLOAD_ROOT = "~/.cache/clip"
CONTEXT_LENGTH = 77  # tokens of OpenAI CLIP's text context (clip.tokenize's default), start and end included


class PromptTruncatedWarning(UserWarning):
    """A prompt whose templated text is longer than CLIP's context: CLIP reads only its beginning."""


_WARNED_PROMPTS: set[str] = set()  # each cut prompt is reported once per process


def _token_count(text: str) -> int:
    """Tokens ``clip.tokenize`` makes of ``text``, start and end tokens included."""
    return len(clip.clip._tokenizer.encode(text)) + 2


def warn_if_cut(prompts: str | Sequence[str], templates: Sequence[str] = ("{}",)) -> None:
    """Warn (once per prompt) about a prompt that some template makes longer than CLIP's context.

    ``clip.tokenize(..., truncate=True)`` keeps the first ``CONTEXT_LENGTH - 1`` tokens and the end token; the
    warning names the last words the longest templated text keeps. Words are tokenized independently, so the
    count of a prefix of whole words is the count of its own text.
    """
    for prompt in [prompts] if isinstance(prompts, str) else prompts:
        if prompt in _WARNED_PROMPTS:
            continue
        longest = max(templates, key=lambda template: _token_count(template.format(prompt)))
        tokens = _token_count(longest.format(prompt))
        if tokens <= CONTEXT_LENGTH:
            continue
        _WARNED_PROMPTS.add(prompt)
        words = prompt.split()
        kept = 0
        while kept < len(words) and _token_count(longest.format(" ".join(words[: kept + 1]))) <= CONTEXT_LENGTH:
            kept += 1
        shown = prompt if len(prompt) <= 80 else prompt[:60] + "..."
        cut = f'after "... {" ".join(words[max(0, kept - 3) : kept])}"' if kept else "before its first word"
        warnings.warn(
            f'the prompt "{shown}" is longer than CLIP\'s {CONTEXT_LENGTH} tokens once templated ({tokens} tokens '
            f'in "{longest}"), so CLIP reads it cut {cut}: shorten the prompt to keep every word',
            PromptTruncatedWarning,
            stacklevel=3,
        )


def compose_prompts(prompts: str | Sequence[str], templates: Sequence[str]) -> list[str]:
    """One string per (prompt, template), prompt-major, as the reference orders its text rows."""
    if isinstance(prompts, str):
        prompts = [prompts]
    return [template.format(prompt) for prompt in prompts for template in templates]


def tiny_clip(
    seed: int = 0,
    embed_dim: int = 64,
    image_resolution: int = 224,
    vision_layers: int = 2,
    vision_width: int = 64,
    vision_patch_size: int = 32,
    context_length: int = 77,
    vocab_size: int = 49408,
    transformer_width: int = 64,
    transformer_heads: int = 1,
    transformer_layers: int = 2,
) -> CLIP:
    """A small randomly initialised OpenAI-CLIP (seeded): for tests and offline smoke runs, no download.

    Keep ``transformer_heads = transformer_width // 64`` (OpenAI's rule) if the model is to be saved and loaded
    back with :func:`load_clip_model`, which infers the head count that way.
    """
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        return CLIP(
            embed_dim,
            image_resolution,
            vision_layers,
            vision_width,
            vision_patch_size,
            context_length,
            vocab_size,
            transformer_width,
            transformer_heads,
            transformer_layers,
        ).float()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint that is either OpenAI's TorchScript archive or a plain state dict."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice, on every call
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    except (RuntimeError, ValueError):
        pass
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a file it cannot read
        raise InputError(
            f"cannot read the CLIP checkpoint {path} ({type(exc).__name__}): pass a TorchScript archive from "
            "OpenAI or a saved state dict"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "visual.conv1.weight" not in state:
        raise InputError(f"{path} is not an OpenAI CLIP state dict (no visual.conv1.weight)")
    return state


def build_clip(state: dict[str, torch.Tensor]) -> CLIP:
    """A float32 ViT CLIP from its state dict (dimensions inferred as OpenAI's ``build_model`` does).

    Unlike ``clip.model.build_model``, the weights are loaded without a round trip through fp16, so a float32
    checkpoint keeps its values.
    """
    if "visual.proj" not in state:
        raise ConfigError("text2live needs a ViT CLIP (ViT-B/32, ViT-B/16, ViT-L/14...), not a ResNet one")
    state = {k: v for k, v in state.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    transformer_width = state["ln_final.weight"].shape[0]
    model = CLIP(
        embed_dim=state["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_layers=sum(k.startswith("visual.") and k.endswith(".attn.in_proj_weight") for k in state),
        vision_width=state["visual.conv1.weight"].shape[0],
        vision_patch_size=patch,
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=transformer_width // 64,
        transformer_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.float().eval()


def weights_path(name: str, download_root: str | None = None) -> Path:
    """Where the ``clip`` package caches the weights of a named OpenAI model."""
    url = clip.clip._MODELS[name]
    return Path(download_root or DEFAULT_DOWNLOAD_ROOT).expanduser() / os.path.basename(url)


def load_clip_model(name: str, checkpoint: str | None = None, download_root: str | None = None) -> CLIP:
    """OpenAI CLIP in float32: from ``checkpoint`` if given, else the cached or downloaded weights of ``name``."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise InputError(f"clip.checkpoint={checkpoint} does not exist: point it at a CLIP .pt file")
    else:
        if name not in clip.available_models():
            raise ConfigError(
                f"clip.name={name!r} is not an OpenAI CLIP model; choose one of {', '.join(clip.available_models())} "
                "or pass clip.checkpoint=<file>"
            )
        path = weights_path(name, download_root)
        try:
            path = Path(clip.clip._download(clip.clip._MODELS[name], str(path.parent)))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MissingWeightsError(
                f"CLIP {name} needs {path.name}, which is missing from {path.parent} (or fails its checksum) and "
                f"could not be downloaded ({reason}): copy {path.name} there or pass "
                f"clip.checkpoint=/path/to/{path.name}"
            ) from None
    state = _read_state_dict(path)
    try:
        return build_clip(state)
    except (KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise InputError(f"{path} does not hold a complete CLIP model ({reason})") from None


class ClipGuide(nn.Module):
    """Frozen CLIP with the operations the losses need.

    Args:
        model: an OpenAI-CLIP ViT (``clip.model.CLIP``), float32.
        relevancy_model: a second CLIP for the relevancy map (the reference's hard-coded ViT-B/32); ``None``
            computes relevancy with ``model`` itself.
        precision: ``fp32``, ``fp16`` or ``auto`` (fp16 on CUDA, fp32 elsewhere, as the reference).
        legacy_resize: resize tensors as torchvision 0.11 did (no antialiasing), as the reference.
        swap_pos_embed_hw: interpolate the positional embedding with height and width swapped, as the
            reference does for non-square inputs (its bug 2).
        relevancy_num_layers: relevancy uses the attention of blocks with index greater than this.
        checkpoint_views: keep only the inputs of the view embeddings for the backward pass and run CLIP on
            them again there (activation checkpointing): less memory, one more CLIP forward of the views,
            the same numbers.
    """

    def __init__(
        self,
        model: CLIP,
        relevancy_model: CLIP | None = None,
        precision: str = "auto",
        legacy_resize: bool = True,
        swap_pos_embed_hw: bool = True,
        relevancy_num_layers: int = 10,
        checkpoint_views: bool = False,
    ) -> None:
        super().__init__()
        if precision not in ("auto", "fp32", "fp16"):
            raise ConfigError(f"clip.precision={precision!r} is not one of auto, fp32, fp16")
        for m in (model, relevancy_model):
            if m is not None and not hasattr(m.visual, "transformer"):
                raise ConfigError("text2live needs a ViT CLIP (ViT-B/32, ViT-B/16, ViT-L/14...), not a ResNet one")
        self.model = model.eval().requires_grad_(False)
        self.relevancy_model = relevancy_model.eval().requires_grad_(False) if relevancy_model is not None else None
        blocks = len(self._relevancy_clip.visual.transformer.resblocks)
        if relevancy_num_layers >= blocks - 1:
            raise ConfigError(
                f"clip.relevancy_num_layers={relevancy_num_layers} leaves no attention block of a {blocks}-block "
                f"CLIP for the relevancy map: use at most {blocks - 2}"
            )
        self.precision = precision
        self.legacy_resize = legacy_resize
        self.swap_pos_embed_hw = swap_pos_embed_hw
        self.relevancy_num_layers = relevancy_num_layers
        self.checkpoint_views = checkpoint_views
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.train(False)

    @property
    def _relevancy_clip(self) -> CLIP:
        return self.relevancy_model if self.relevancy_model is not None else self.model

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype

    def train(self, mode: bool = True) -> ClipGuide:
        """CLIP stays in eval mode whatever the owner asks."""
        return super().train(False)

    def place(self, device: torch.device | str) -> ClipGuide:
        """Move to ``device`` and settle the precision (``auto``: fp16 on CUDA as the reference)."""
        device = torch.device(device)
        self.to(device)
        half = self.precision == "fp16" or (self.precision == "auto" and device.type == "cuda")
        for m in (self.model, self.relevancy_model):
            if m is None:
                continue
            m.float()
            if half:
                convert_weights(m)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    # text ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], model: CLIP | None = None) -> torch.Tensor:
        """Embeddings of ``texts``; a text longer than CLIP's context is cut (see :func:`warn_if_cut`)."""
        model = model or self.model
        tokens = clip.tokenize(list(texts), CONTEXT_LENGTH, truncate=True).to(self.mean.device)
        return model.encode_text(tokens).float()

    def text_embeddings(self, prompts: str | Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """One embedding row per (prompt, template); neither averaged nor normalised (as the reference).

        A prompt that a template makes longer than CLIP's context is cut, with a warning.
        """
        warn_if_cut(prompts, templates)
        return self.encode_text(compose_prompts(prompts, templates))

    # image -----------------------------------------------------------------------------------------------

    def _positional_embedding(self, visual: nn.Module, h: int, w: int, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = visual.positional_embedding
        n = pos.shape[0] - 1
        if grid_h * grid_w == n and h == w:
            return pos
        side = math.sqrt(n)
        patch = visual.conv1.kernel_size[0]
        rows, cols = h // patch + 0.1, w // patch + 0.1  # +0.1 avoids float error in the size (DINO)
        if self.swap_pos_embed_hw:
            rows, cols = cols, rows
        grid = pos[1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(rows / side, cols / side), mode="bicubic", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(-1, pos.shape[-1])
        return torch.cat([pos[:1], grid])

    def _tokens(self, visual: nn.Module, x: torch.Tensor, normalized: bool = True) -> torch.Tensor:
        """Patch + class tokens with positional embedding and ``ln_pre``, shape [L, N, D].

        ``normalized=False``: ``x`` holds images in [0, 1]; in float32 their normalisation is folded into the patch
        embedding (float rounding only), in lower precision it is applied first, as the reference does.
        """
        h, w = x.shape[-2:]
        dtype = visual.conv1.weight.dtype
        if normalized or dtype != torch.float32:
            x = _patch_embedding(visual.conv1, (x if normalized else self.normalize(x)).type(dtype))
        else:
            x = _patch_embedding(visual.conv1, x, self.mean, self.std)
        grid_h, grid_w = h // visual.conv1.kernel_size[0], w // visual.conv1.kernel_size[0]
        cls = visual.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device
        )
        x = torch.cat([cls, x], dim=1)
        x = x + self._positional_embedding(visual, h, w, grid_h, grid_w).to(x.dtype)
        return visual.ln_pre(x).permute(1, 0, 2)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, D] (float32) of normalised images of any size."""
        return self.encode_tokens(self._tokens(self.model.visual, x))

    def encode_views(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, D] (float32) of images in [0, 1] of any size: ``encode_image(normalize(x))``."""
        return self.encode_tokens(self._tokens(self.model.visual, x, normalized=False))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embeddings [N, D] (float32) of the tokens [L, N, D] that :meth:`_tokens` makes of images."""
        visual = self.model.visual
        return (visual.ln_post(visual.transformer(tokens)[0]) @ visual.proj).float()

    def embed_plan(self, plan: ViewPlan) -> list[torch.Tensor]:
        """Embeddings [n_views, D] of the views of every image of ``plan``, in the order they were added.

        The views of one shape are built together and embedded in one CLIP forward (those without a gradient in
        another, without a graph).
        """
        out: list[torch.Tensor | None] = [None] * len(plan.requests)
        for members in plan.groups():
            with torch.set_grad_enabled(torch.is_grad_enabled() and plan.requests[members[0]][0].requires_grad):
                embeddings = self._embed(plan.render(members))
            for i, chunk in zip(members, embeddings.split(plan.n_views), strict=True):
                out[i] = chunk
        return out

    def _embed(self, views: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_views and torch.is_grad_enabled() and views.requires_grad:
            return checkpoint(self.encode_views, views, use_reentrant=False)
        return self.encode_views(views)

    def self_similarity(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine self-similarity [N, L, L] of all tokens (class token included) before the last block."""
        x = self.normalize(resize_shorter(x, 224, 380, self.legacy_resize))
        visual = self.model.visual
        tokens = visual.transformer.resblocks[:-1](self._tokens(visual, x)).permute(1, 0, 2)
        norms = tokens.norm(dim=2, keepdim=True)
        factor = torch.clamp(norms @ norms.transpose(1, 2), min=1e-8)
        return (tokens @ tokens.transpose(1, 2)) / factor

    # relevancy -------------------------------------------------------------------------------------------

    @property
    def relevancy_resolution(self) -> int:
        return self._relevancy_clip.visual.input_resolution

    @torch.no_grad()
    def relevancy_text(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Embeddings of the raw relevancy prompts (no templates) for the model that computes relevancy."""
        warn_if_cut(prompts)
        return self.encode_text([prompts] if isinstance(prompts, str) else list(prompts), self._relevancy_clip)

    def relevancy(self, image: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Chefer et al. relevancy map [1, S, S] in [0, 1] of one image [1, 3, S, S] for each text row, averaged.

        ``image`` must already be at the relevancy model's resolution (see :attr:`relevancy_resolution`).
        """
        model = self._relevancy_clip
        visual = model.visual
        x = self.normalize(image).detach()
        maps = []
        for text in text_features:
            with torch.enable_grad():
                # CLIP is frozen: letting the input require grad puts the attention maps on the graph.
                x_in = x.clone().requires_grad_(True)
                tokens = self._tokens(visual, x_in)
                probs = []
                for i, block in enumerate(visual.transformer.resblocks):
                    if i > self.relevancy_num_layers:
                        attn_out, p = _attention_with_probs(block.attn, block.ln_1(tokens))
                        tokens = tokens + attn_out
                        tokens = tokens + block.mlp(block.ln_2(tokens))
                        probs.append(p)
                    else:
                        tokens = block(tokens)
                image_features = visual.ln_post(tokens[0]) @ visual.proj
                image_features = image_features / image_features.norm(dim=-1, keepdim=True)
                text_n = (text / text.norm()).to(image_features.dtype)
                logit = model.logit_scale.exp() * (image_features @ text_n).sum()
                grads = torch.autograd.grad(logit, probs)
            maps.append(self._relevancy_map(probs, grads, x.shape[0], image.shape[-2:], visual))
        return torch.stack(maps).mean(0)

    def _relevancy_map(self, probs, grads, batch, size, visual) -> torch.Tensor:
        n_tokens = probs[0].shape[-1]
        rel = torch.eye(n_tokens, dtype=probs[0].dtype, device=probs[0].device).expand(batch, n_tokens, n_tokens)
        for p, g in zip(probs, grads, strict=True):
            cam = (g.detach() * p.detach()).reshape(batch, -1, n_tokens, n_tokens)
            cam = cam.clamp(min=0).mean(dim=1)
            rel = rel + torch.bmm(cam, rel)
        patch = visual.conv1.kernel_size[0]
        grid = rel[:, 0, 1:].reshape(batch, 1, size[0] // patch, size[1] // patch).float()
        grid = F.interpolate(grid, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        low = grid.amin(dim=(-2, -1), keepdim=True)
        high = grid.amax(dim=(-2, -1), keepdim=True)
        return (grid - low) / (high - low).clamp_min(1e-12)


def _patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """The ``p`` x ``p`` patches [N, rows * columns, C * p * p] of images [N, C, H, W] (see :class:`_Patches`)."""
    n, c, h, w = x.shape
    gh, gw = h // p, w // p
    patches = x.new_empty(n, gh, gw, c, p, p)
    patches.copy_(x[..., : gh * p, : gw * p].reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5))
    return patches.view(n, gh * gw, c * p * p)


class _Patches(torch.autograd.Function):
    """The non-overlapping ``p`` x ``p`` patches [N, rows * columns, C * p * p] of images [N, C, H, W], rows and
    columns past the last whole patch left out (the strided convolution's input). Its backward writes the
    patches' gradient into the images' in one copy, where autograd's would copy twice and fill a zero image."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: int) -> torch.Tensor:
        ctx.shape, ctx.p = x.shape, p
        return _patches(x, p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (n, c, h, w), p = ctx.shape, ctx.p
        gh, gw = h // p, w // p
        out = grad.new_empty(n, c, h, w)
        if gh * p < h:
            out[..., gh * p :, :].zero_()
        if gw * p < w:
            out[..., : gh * p, gw * p :].zero_()
        inner = out[..., : gh * p, : gw * p].view(n, c, gh, p, gw, p)
        inner.copy_(grad.reshape(n, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5))
        return out, None


def _patch_embedding(
    conv: nn.Conv2d, x: torch.Tensor, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
) -> torch.Tensor:
    """``conv(x).flatten(2).permute(0, 2, 1)`` for CLIP's patch embedding (kernel = stride, no bias), computed as
    one matrix product of the non-overlapping patches: [N, patches, width]. With ``mean`` and ``std`` [1, C, 1, 1]
    it is that of ``(x - mean) / std``, the normalisation folded into the weights and a bias.

    The same sums in another order (float rounding only); on the CPU, its backward pass to the images is several
    times faster than that of the strided convolution, and folding spares two passes over the images and their
    gradient.
    """
    p = conv.kernel_size[0]
    patches = _Patches.apply(x, p) if torch.is_grad_enabled() and x.requires_grad else _patches(x, p)
    weight = conv.weight
    if mean is None:
        return patches @ weight.reshape(conv.out_channels, -1).t()
    weight = weight / std.to(weight.dtype)
    bias = (weight * mean.to(weight.dtype)).sum(dim=(1, 2, 3)).neg_()
    return F.linear(patches, weight.reshape(conv.out_channels, -1), bias)


def _attention_with_probs(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of ``attn`` on [L, N, D] tokens, also returning the probabilities [N * heads, L, L]."""
    length, batch, dim = x.shape
    heads = attn.num_heads
    head_dim = dim // heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(length, batch * heads, head_dim).transpose(0, 1) for t in (q, k, v))
    probs = torch.softmax((q * head_dim**-0.5) @ k.transpose(1, 2), dim=-1)
    out = (probs @ v).transpose(0, 1).reshape(length, batch, dim)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias), probs


def build_guide(
    name: str = "ViT-B/32",
    checkpoint: str | None = None,
    download_root: str | None = None,
    precision: str = "auto",
    legacy_resize: bool = True,
    swap_pos_embed_hw: bool = True,
    relevancy_name: str | None = "ViT-B/32",
    relevancy_num_layers: int = 10,
    checkpoint_views: bool = False,
    tiny: dict | None = None,
) -> ClipGuide:
    """Build the guidance from the ``clip`` config group.

    ``name: tiny`` (or ``random``) builds a randomly initialised CLIP locally with :func:`tiny_clip` and the
    architecture given in ``tiny``. ``relevancy_name`` names the model the
    relevancy map is computed with: the reference always uses ViT-B/32 (its bug 7); a second model is only
    loaded when it differs from ``name``; ``null`` uses the guidance model.
    """
    if name in ("tiny", "random"):
        model = tiny_clip(**(tiny or {}))
    else:
        model = load_clip_model(name, checkpoint, download_root)
    relevancy_model = None
    if relevancy_name is not None and relevancy_name != name:
        relevancy_model = load_clip_model(relevancy_name, None, download_root)
    return ClipGuide(
        model, relevancy_model, precision, legacy_resize, swap_pos_embed_hw, relevancy_num_layers, checkpoint_views
    )
