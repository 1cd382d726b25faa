"""The speed options change how a step is computed, not what it computes, nor what a checkpoint holds.

``compile=true`` compiles the generator and CLIP's transformer of the views with TorchInductor: a step equals the
eager one to float32 rounding. ``generator_precision=bf16`` runs the generator in bfloat16: a step moves by bfloat16
rounding, measured here against the move that rounding the generator's weights to bfloat16 alone makes.

The first compilation in a process with an empty inductor cache pays a one-time set-up (the C++ compiler's checks
and a precompiled header, about 20 s here) on top of the kernels, so the compiled tests share one small system: a
one-scale generator on the whole 96 px image (one input shape), 2 CLIP views, no bootstrapping.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, compose_config, one_torch_thread, run_cli
from test_step_fidelity import image_config, relative_error, step_values
from torch._dynamo.utils import counters

from text2live import speed
from text2live.build import build_system
from text2live.cli import train as train_cli
from text2live.config import ASSETS_DIR
from text2live.errors import ConfigError
from text2live.generator import SkipGenerator
from text2live.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

# the compiled tests: few kernels to compile, every loss term but bootstrapping
COMPILED = ["generator.num_scales=1", "data.full_input=true", "loss.n_aug=2", "loss.bootstrap_steps=0"]
STEP = 1
TERMS_RTOL = 1e-5
# The gradient of a compiled step (measured: 1.1e-5 relative, whole vector, here) is held to 1e-4, not 1e-5:
# inductor reduces the BatchNorm statistics in another order, and a layer's gradient passes through the BatchNorm
# backward passes of the layers above it, whose mean subtraction cancels most of the value and magnifies last-bit
# differences (with the 4-scale generator of test_step_fidelity.py the gradient moves by 1.5e-4; the eager one
# moves by up to 3e-4 between 1 and 2 threads there).
COMPILED_GRAD_RTOL = 1e-4


def gradient(values: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([values[k].flatten() for k in sorted(values) if k.startswith("grad/")])


def one_step(tmp: Path, *extra: str, prepare=None) -> dict[str, torch.Tensor]:
    system, datamodule = build_system(image_config(tmp, *extra))
    if prepare is not None:
        prepare(system)
    return step_values(system, datamodule, [STEP])[str(STEP)]


# compile=true -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_and_eager(tmp_path_factory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("compile")
    with one_torch_thread():
        eager = one_step(tmp / "eager", *COMPILED)
        graphs = counters["stats"]["unique_graphs"]
        compiled = one_step(tmp / "compiled", *COMPILED, "compile=true")
    # the generator and CLIP's transformer with and without gradients (the input image's views)
    assert counters["stats"]["unique_graphs"] - graphs == 3
    return compiled, eager


def test_a_compiled_step_equals_the_eager_step(compiled_and_eager):
    compiled, eager = compiled_and_eager
    assert set(compiled) == set(eager)
    for key in (k for k in eager if k.startswith("terms/")):
        assert relative_error(compiled[key], eager[key]) <= TERMS_RTOL, key
    assert relative_error(gradient(compiled), gradient(eager)) <= COMPILED_GRAD_RTOL


def test_compile_compiles_the_generator_and_the_view_forward(tmp_path):
    system, _ = build_system(image_config(tmp_path, *COMPILED, "compile=true"))
    assert system.generator._compiled_call_impl is not None
    guide = system.losses.guide
    assert "encode_tokens" in vars(guide)  # the instance's compiled transformer, in front of the method
    assert hasattr(guide.encode_tokens, "_torchdynamo_orig_callable")


def test_a_compiled_generator_runs_inputs_of_another_size_eagerly(compiled_and_eager):
    """Compiled for its first input's size (that of the fixture's run, whose graph is cached); a training crop of
    another size runs eagerly rather than compiling again."""
    generator = SkipGenerator(channels_down=16, channels_up=16, channels_skip=4, num_scales=1)
    eager = copy.deepcopy(generator)
    speed.compile_generator(generator)
    image = torch.rand(1, 3, 96, 144)
    assert relative_error(generator(image), eager(image)) <= TERMS_RTOL
    graphs = counters["stats"]["unique_graphs"]
    crop = torch.rand(1, 3, 80, 120)
    assert torch.equal(generator(crop), eager(crop))
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_run_writes_checkpoints_with_the_eager_keys(tmp_path, compiled_and_eager):
    """A real run, after the shared fixture has compiled the same training graphs (their kernels are cached)."""
    settings = ["steps=2", "checkpoint_every=1", "log_images_freq=0", "evaluate=false"]
    with one_torch_thread():
        train(image_config(tmp_path / "run", *COMPILED, *settings, "compile=true"))
    eager, _ = build_system(image_config(tmp_path / "eager", *COMPILED))
    expected = list(eager.state_dict())
    assert all(k.startswith("generator.") for k in expected)
    for name in ("last.ckpt", "final.ckpt"):
        checkpoint = torch.load(tmp_path / "run" / "checkpoints" / name, weights_only=True)
        assert list(checkpoint["state_dict"]) == expected, name


def test_compile_without_a_cpp_compiler_is_refused_at_build_time(tmp_path):
    import torch._inductor.config as inductor_config

    cfg = image_config(tmp_path, *COMPILED, "compile=true")
    with inductor_config.patch({"cpp.cxx": ("t2l-no-such-compiler",)}), pytest.raises(ConfigError) as caught:
        build_system(cfg)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("compile=true needs a C++ compiler") and "compile=false" in message


# generator_precision=bf16 -------------------------------------------------------------------------------------


def conv_output_dtypes(system) -> set[torch.dtype]:
    """Record the dtype of every convolution's output of the generator(s) from now on."""
    seen: set[torch.dtype] = set()
    for generator in speed.generators_of(system):
        for module in generator.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda m, args, out: seen.add(out.dtype))
    return seen


def test_a_bf16_generator_runs_in_bf16_and_returns_float32(tmp_path):
    system, datamodule = build_system(image_config(tmp_path, "generator_precision=bf16"))
    seen = conv_output_dtypes(system)
    out = system.generator(datamodule.image)
    assert seen == {torch.bfloat16}
    assert out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in system.generator.parameters())
    fp32, _ = build_system(image_config(tmp_path))
    assert list(system.state_dict()) == list(fp32.state_dict())


def test_a_bf16_step_is_the_fp32_step_to_bf16_rounding(tmp_path):
    """Measured (image settings of test_step_fidelity, step 1): every loss term within 3e-3 of fp32 (the structure
    term; the others within 2e-4); the gradient within 0.20 (relative, whole vector; cosine 0.98) and that of the
    head within 2e-3. The deep layers' gradients pass through several BatchNorm backward passes, whose cancellation
    magnifies any rounding: rounding only the fp32 generator's weights to bf16, with no bf16 arithmetic at all,
    moves the gradient by 0.08 already. The bounds: terms within 1e-2, the head's gradient within 1e-2, the whole
    gradient within 4 times the move of rounding the weights."""
    with one_torch_thread():
        fp32 = one_step(tmp_path / "fp32")
        bf16 = one_step(tmp_path / "bf16", "generator_precision=bf16")

        def round_weights(system):
            with torch.no_grad():
                for p in system.generator.parameters():
                    p.copy_(p.to(torch.bfloat16).float())

        rounded = one_step(tmp_path / "rounded", prepare=round_weights)
    assert set(bf16) == set(fp32)
    for key in (k for k in fp32 if k.startswith("terms/")):
        assert relative_error(bf16[key], fp32[key]) <= 1e-2, key
    head = "grad/generator.head.weight"
    assert relative_error(bf16[head], fp32[head]) <= 1e-2
    rounding = relative_error(gradient(rounded), gradient(fp32))
    assert relative_error(gradient(bf16), gradient(fp32)) <= 4 * rounding
    assert F.cosine_similarity(gradient(bf16), gradient(fp32), dim=0) >= 0.95


def test_every_layer_generator_of_a_video_runs_in_bf16(tiny_video_cfg):
    system, _ = build_system(tiny_video_cfg("generator_precision=bf16", "edit_layers=[foreground,background]"))
    seen = conv_output_dtypes(system)
    for layer, generator in system.generators.items():
        seen.clear()
        assert generator(torch.rand(1, 3, 32, 32)).dtype == torch.float32, layer
        assert seen == {torch.bfloat16}, layer


# bad values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("generator_precision=fp16", "error: generator_precision='fp16' is not valid: use one of fp32, bf16"),
        ("compile=fast", "error: compile=fast is not valid: compile takes true or false"),
    ],
)
def test_a_bad_speed_option_is_one_line_through_the_command(tmp_path, capsys, monkeypatch, override, expected):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    run_dir = tmp_path / "run"
    prompts = ["comp_text=golden cat", "src_text=cat", "screen_text=golden"]
    argv = [f"image_path={ASSETS_DIR / 'cat.png'}", *prompts, *TINY, "evaluate=false", f"run_dir={run_dir}", override]
    result = run_cli(train_cli.main, argv, capsys, monkeypatch)
    assert result.code == 2
    assert result.error_line() == expected
    assert not (run_dir / "checkpoints").exists()


def test_the_defaults_change_nothing():
    cfg = compose_config(["image_path=x", "comp_text=a", "src_text=b", "screen_text=c"])
    assert cfg.compile is False and cfg.generator_precision == "fp32"
