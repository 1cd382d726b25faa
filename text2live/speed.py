"""Options that change speed and memory, not what a run computes: ``compile`` and ``generator_precision``.

Both act in place on a built system, so parameter names, state-dict keys and checkpoints stay as they are:

- ``compile=true``: ``torch.compile`` the generator(s) (:func:`compile_generator`) and CLIP's transformer that
  embeds the views (:func:`compile_view_forward`). The first steps compile; the numbers equal the eager ones to
  float32 rounding.
- ``generator_precision=bf16``: the generator's forward runs under ``torch.autocast`` in bfloat16 and returns
  float32. CLIP keeps its own precision (``clip.precision``). Results move by bfloat16 rounding.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import torch
from torch import nn

from text2live.errors import ConfigError

GENERATOR_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def apply_options(cfg: Mapping, system: nn.Module) -> None:
    """Apply the run's speed options (``cfg.compile``, ``cfg.generator_precision``) to a built system, in place."""
    precision = cfg.get("generator_precision", "fp32")
    if not isinstance(precision, str) or precision not in GENERATOR_PRECISIONS:
        raise ConfigError(
            f"generator_precision={precision!r} is not valid: use one of {', '.join(GENERATOR_PRECISIONS)}"
        )
    compile_ = cfg.get("compile", False)
    if not isinstance(compile_, bool):
        raise ConfigError(f"compile={compile_!r} is not valid: use true or false")
    if compile_:
        check_compiler(uses_cuda(cfg))

    dtype = GENERATOR_PRECISIONS[precision]
    for generator in generators_of(system):
        if dtype is not None:
            autocast_forward(generator, dtype)
        if compile_:
            compile_generator(generator)
    if compile_:
        for guide in system.guides():
            compile_view_forward(guide)


def generators_of(system: nn.Module) -> list[nn.Module]:
    """The trained generator(s): ``system.generator`` (image) or the values of ``system.generators`` (video)."""
    if hasattr(system, "generators"):
        return list(system.generators.values())
    return [system.generator]


def uses_cuda(cfg: Mapping) -> bool:
    """Whether the run's trainer will train on a CUDA device."""
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    return accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())


def check_compiler(cuda: bool) -> None:
    """Raise a one-sentence ConfigError when ``torch.compile`` cannot work here (checked without compiling)."""
    from torch._dynamo.eval_frame import is_dynamo_supported

    if not hasattr(torch.compiler, "set_stance"):
        raise ConfigError(f"compile=true needs torch 2.6 or newer (this is {torch.__version__}); use compile=false")
    if not is_dynamo_supported():
        raise ConfigError("compile=true: torch.compile does not support this Python or platform; use compile=false")
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - inductor raises its own types, and OSError when a search fails
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"compile=true needs a C++ compiler for torch.compile, and none was found ({reason}): install g++ "
            "(or set CXX) or use compile=false"
        ) from None
    if cuda:
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ConfigError(
                "compile=true on a GPU needs Triton, which is not installed or cannot run here: install the "
                "triton package that matches torch or use compile=false"
            )


def compile_generator(generator: nn.Module) -> None:
    """Compile ``generator`` (``nn.Module.compile``: in place, its state-dict keys unchanged) for its first call.

    The graph is compiled for the shape of the first input; an input of another shape then runs the module eagerly
    instead of compiling again. A training crop changes size every step, and each size would be a new compilation:
    with dynamic shapes, inductor specialises the sizes of the convolutions' backward pass on the CPU (and fails
    on the reflection padding's indices), so a run whose generator input keeps one size (``data.full_input=true``)
    is the one whose every step uses the compiled generator.
    """
    generator.compile(dynamic=False)
    compiled = generator._compiled_call_impl
    first = True

    def call(*args, **kwargs):
        nonlocal first
        if first:
            first = False
            return compiled(*args, **kwargs)
        with torch.compiler.set_stance("eager_on_recompile"):
            return compiled(*args, **kwargs)

    generator._compiled_call_impl = call


def compile_view_forward(guide: nn.Module) -> None:
    """Put a compiled :meth:`~text2live.clip_guide.ClipGuide.encode_tokens` (CLIP's transformer, which embeds the
    views) in front of the guide's own method, on this instance only.

    The views' size follows the aspect ratio of the step's crop, so the patch embedding in front of it stays eager:
    the transformer sees one token count for most steps, and each token count (with and without gradients) is
    compiled once.
    """
    guide.encode_tokens = torch.compile(guide.encode_tokens, dynamic=False)


def _autocast_forward(self: nn.Module, *args, **kwargs) -> torch.Tensor:
    """``type(self).forward`` under autocast to ``self.autocast_dtype``, returning float32."""
    device_type = args[0].device.type if args and isinstance(args[0], torch.Tensor) else "cpu"
    with torch.autocast(device_type, dtype=self.autocast_dtype):
        out = type(self).forward(self, *args, **kwargs)
    return out.float()


def autocast_forward(module: nn.Module, dtype: torch.dtype) -> None:
    """Run ``module``'s forward under ``torch.autocast(dtype)`` with float32 outputs (its weights stay float32)."""
    module.autocast_dtype = dtype
    module.forward = types.MethodType(_autocast_forward, module)
