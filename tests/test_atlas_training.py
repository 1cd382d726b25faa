"""t2l-atlas: the NLA objective on hand-computable inputs, training on a synthetic layered video whose truth is
known (reconstruction against baselines a wrong objective cannot beat, alpha against the true mask), NLA's
checkpoint read back and edited by t2l-train through the printed command, an exact resume after SIGKILL, and
one-line errors.

The runs go through the real command line (``python -m text2live.cli.atlas``) on the synthetic video written as
NLA's preprocessing lays a video out (frames, masks, flow files), so the input preparation reads it like any video.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VIDEO_TINY, compose_config, run_cli
from hydra.utils import instantiate
from PIL import Image
from torch import nn

from text2live.atlas.objective import NLAObjective, flow_consistency, rigidity
from text2live.atlas.synthetic import synthetic_video, write_video
from text2live.atlas.system import AtlasSystem, PixelSteps, Pretraining, VideoPixels, build_atlases
from text2live.atlas.training import apply_speed_options
from text2live.cli import atlas as atlas_cli
from text2live.cli import train as train_cli
from text2live.nla import CHECKPOINT_KEYS, NeuralAtlases, load_nla, video_maps
from text2live.video_data import reconstruct

pytestmark = pytest.mark.usefixtures("one_thread")

T, H, W = 8, 48, 80
TIMEOUT = 600  # seconds for one process (about 15 on two idle cores)
# Small networks (the sizes are NLA's shapes scaled down), a learning rate for a few hundred steps instead of
# NLA's 1e-4 for 400,000, and NLA's objective unchanged.
SMALL = [
    *("nla.foreground_mapping.hidden_dim=48", "nla.foreground_mapping.num_layers=4"),
    *("nla.background_mapping.hidden_dim=48", "nla.background_mapping.num_layers=3"),
    *("nla.atlas.hidden_dim=48", "nla.atlas.num_layers=5", "nla.atlas.positional_dim=6", "nla.atlas.skip_layers=[3]"),
    *("nla.alpha.hidden_dim=48", "nla.alpha.num_layers=4", "nla.alpha.positional_dim=4"),
    "optim.optimizer.lr=1e-3",
]
STEPS, EVERY, KILL_AT = 250, 50, 130
RUN = [
    "trainer=cpu",
    "trainer.enable_progress_bar=false",
    f"data.width={W}",
    f"data.height={H}",
    f"steps={STEPS}",
    f"checkpoint_every={EVERY}",
    "log_images_freq=125",
    "data.samples=800",
    "pretrain.iterations=5",
    "pretrain.samples=500",
]
OUTPUTS = ("checkpoint", "metrics.json", "foreground_atlas.png", "background_atlas.png", "reconstruction.mp4")
# A run of NLA's own network sizes, for t2l-train's edit (which loads only those): a few steps, no sparsity
# term so that the foreground atlas has colour that early. It tests the files, not the method.
DEFAULT_SIZES_RUN = [
    *(o for o in RUN if not o.startswith(("steps=", "checkpoint_every=", "log_images_freq=", "data.samples="))),
    *("steps=40", "checkpoint_every=40", "log_images_freq=0", "data.samples=300", "optim.optimizer.lr=3e-3"),
    "loss.lambda_sparsity=0",
]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


# A SIGKILL in the middle of training step n (its pixels drawn, its gradient not yet applied).
KILLER = """
import os, signal, sys
from text2live.atlas.system import AtlasSystem
at = int(sys.argv[1])
training_step = AtlasSystem.training_step
def killing_step(self, batch, batch_idx):
    if int(batch["step"]) == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(self, batch, batch_idx)
AtlasSystem.training_step = killing_step
sys.argv = ["t2l-atlas", *sys.argv[2:]]
from text2live.cli.atlas import main
main()
"""


def t2l_atlas(overrides: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    if kill_at is None:
        command = [sys.executable, "-m", "text2live.cli.atlas", *overrides]
    else:
        command = [sys.executable, "-c", KILLER, str(kill_at), *overrides]
    return subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def video() -> object:
    return synthetic_video(T, H, W)


@pytest.fixture(scope="module")
def video_files(tmp_path_factory, video) -> list[str]:
    """The synthetic video on disk, as the overrides that give it to t2l-atlas."""
    folders = write_video(video, tmp_path_factory.mktemp("video"))
    return [f"frames_dir={folders['frames']}", f"masks_dir={folders['masks']}", f"flow_dir={folders['flow']}"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, video_files) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("atlas") / "small"
    done = t2l_atlas([*video_files, "name=synthetic", f"run_dir={run_dir}", *RUN, *SMALL])
    assert done.returncode == 0, done.stderr
    return run_dir, done


@pytest.fixture(scope="module")
def default_sizes_run(tmp_path_factory, video_files) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("atlas") / "default_sizes"
    done = t2l_atlas([*video_files, "name=synthetic", f"run_dir={run_dir}", *DEFAULT_SIZES_RUN])
    assert done.returncode == 0, done.stderr
    return run_dir, done


def small_networks(cfg_overrides: list[str] = SMALL) -> NeuralAtlases:
    cfg = compose_config(["name=x", *cfg_overrides], config_name="atlas")
    torch.manual_seed(0)
    nets = {name: instantiate(cfg.nla[name]) for name in ("foreground_mapping", "background_mapping", "atlas", "alpha")}
    return build_atlases(**nets, num_frames=T, height=H, width=W)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).square().mean()))


# the objective, term by term ---------------------------------------------------------------------------------


def linear_map(matrix: torch.Tensor, pixels_per_unit: float):
    """uv(p) = matrix @ p / pixels_per_unit: a mapping whose Jacobian in pixels is ``matrix``."""
    return lambda p: p @ matrix.T / pixels_per_unit


@pytest.mark.parametrize("scale", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("amount", [1.0, 100.0])
def test_rigidity_is_nlas_penalty_of_the_jacobian(scale, amount):
    """|J^T J|_F + |(J^T J + 0.001 I)^-1|_F: for J = s R (R a rotation), sqrt(2) s^2 + sqrt(2) / (s^2 + 0.001)."""
    angle = 0.6
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    uv = linear_map(scale * rotation, pixels_per_unit=300.0)
    p = torch.rand(16, 2) * 100
    up, left = p - torch.tensor([0.0, amount]), p - torch.tensor([amount, 0.0])
    loss = rigidity(uv(p), uv(up), uv(left), pixels_per_unit=300.0, amount=amount)
    expected = math.sqrt(2) * scale**2 + math.sqrt(2) / (scale**2 + 0.001)
    torch.testing.assert_close(loss, torch.full((16,), expected), rtol=1e-4, atol=1e-4)
    # a shear is penalised more than the rotation of the same scale
    shear = linear_map(torch.tensor([[1.0, 0.8], [0.0, 1.0]]), 300.0)
    assert (rigidity(shear(p), shear(up), shear(left), 300.0, amount) > 2.83).all()


def test_flow_consistency_counts_pixels_of_valid_flow_weighted_by_alpha():
    uv = linear_map(torch.eye(2), pixels_per_unit=200.0)  # a static map: every flow vector is an error
    p = torch.rand(6, 2) * 50
    forward, backward = torch.tensor([3.0, 4.0]), torch.tensor([-1.0, 0.0])
    forward_valid = torch.tensor([True, True, True, False, False, False])
    backward_valid = torch.tensor([True, False, True, False, True, False])
    weight = torch.tensor([0.5, 0.5, 0.5, 9.0, 0.25, 9.0])
    loss = flow_consistency(
        uv(p), uv(p + forward), uv(p + backward), forward_valid, backward_valid, weight, pixels_per_unit=200.0
    )
    # forward: |(3, 4)| = 5 px at weight 0.5 on its 3 valid points; backward: 1 px at weights 0.5, 0.5, 0.25
    expected = 0.5 * 5 * 0.5 + 0.5 * (0.5 + 0.5 + 0.25) / 3
    torch.testing.assert_close(loss, torch.tensor(expected), rtol=1e-5, atol=1e-6)


class Function(nn.Module):
    def __init__(self, function) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x)


def known_networks(uv_scale: float, fg_raw: torch.Tensor, bg_raw: torch.Tensor, alpha_raw: float) -> NeuralAtlases:
    """Mappings at the pre-training target (uv = uv_scale * (x, y)), an atlas of one colour per layer, a constant
    alpha: every term of the objective can be computed by hand."""
    identity = Function(lambda x: uv_scale * x[:, :2])
    atlas = Function(lambda uv: torch.where(uv[:, :1] > 0, fg_raw, bg_raw).expand(len(uv), 3))
    alpha = Function(lambda x: torch.full((len(x), 1), alpha_raw))
    return build_atlases(identity, Function(lambda x: uv_scale * x[:, :2]), atlas, alpha, T, H, W)


def test_the_objective_on_networks_whose_terms_are_known():
    objective = NLAObjective()
    fg_raw, bg_raw, alpha_raw = torch.tensor([0.6, -0.2, 0.0]), torch.tensor([-0.4, 0.2, 0.8]), 0.3
    nla = known_networks(objective.uv_mapping_scale, fg_raw, bg_raw, alpha_raw)
    g = torch.Generator().manual_seed(0)
    n = 64
    xyt = torch.cat([torch.randint(0, W, (n, 1)), torch.randint(0, H, (n, 1)), torch.randint(0, T, (n, 1))], 1)
    batch = {
        "xyt": xyt.float(),
        "rgb": torch.rand(n, 3, generator=g),
        "rgb_dx": torch.rand(n, 3, generator=g) - 0.5,
        "rgb_dy": torch.rand(n, 3, generator=g) - 0.5,
        "mask": (torch.rand(n, 1, generator=g) > 0.7).float(),
        "flow_forward": torch.randn(n, 2, generator=g) * 3,
        "flow_backward": torch.randn(n, 2, generator=g) * 3,
        "forward_valid": torch.rand(n, generator=g) > 0.3,
        "backward_valid": torch.rand(n, generator=g) > 0.3,
    }
    terms, out = objective(nla, batch, step=0)

    alpha = 0.99 * 0.5 * (alpha_raw + 1) + 0.001
    fg, bg = 0.5 * (fg_raw + 1), 0.5 * (bg_raw + 1)
    blend = alpha * fg + (1 - alpha) * bg
    fv, bv = batch["forward_valid"].float(), batch["backward_valid"].float()
    forward_px, backward_px = batch["flow_forward"].norm(dim=1), batch["flow_backward"].norm(dim=1)

    def flow(weight: float) -> torch.Tensor:  # a static map: the error is the flow's length in pixels
        return 0.5 * (backward_px * weight * bv).sum() / bv.sum() + 0.5 * (forward_px * weight * fv).sum() / fv.sum()

    rigid = math.sqrt(2) * (1 + 1 / 1.001)  # the scaled identity's Jacobian is I in pixels
    expected = {
        "rgb": (blend - batch["rgb"]).square().sum(1).mean(),
        "sparsity": (fg * (1 - alpha)).square().sum(),
        "gradient": (batch["rgb_dx"].square().sum(1) + batch["rgb_dy"].square().sum(1)).mean(),  # constant colours
        "rigidity_foreground": torch.tensor(rigid),
        "rigidity_background": torch.tensor(rigid),
        "global_rigidity_foreground": torch.tensor(rigid),
        "global_rigidity_background": torch.tensor(rigid),
        "flow_foreground": flow(alpha),
        "flow_background": flow(1 - alpha),
        "alpha_flow": torch.tensor(0.0),  # a constant alpha
        "alpha_bootstrap": -(batch["mask"] * math.log(alpha) + (1 - batch["mask"]) * math.log(1 - alpha)).mean(),
    }
    assert set(terms) == {*expected, "total"}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value.float(), rtol=1e-4, atol=1e-5, msg=name)
    total = sum(objective.lambdas[name] * value for name, value in expected.items())
    torch.testing.assert_close(terms["total"], total.float(), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out["rgb"], blend.expand(n, 3))
    # the weights are NLA's: config/config.json of ykasten/layered-neural-atlases
    assert objective.lambdas == {
        **{"rgb": 5000, "sparsity": 1000, "gradient": 1000, "alpha_flow": 49, "alpha_bootstrap": 2000},
        **{"rigidity_foreground": 1, "rigidity_background": 1, "flow_foreground": 5, "flow_background": 5},
        **{"global_rigidity_foreground": 5, "global_rigidity_background": 50},
    }


def test_the_schedules_and_switched_off_terms():
    objective = NLAObjective(lambda_gradient=0.0)
    assert {"alpha_bootstrap", "global_rigidity_foreground", "global_rigidity_background"} <= set(objective.weights(0))
    assert "global_rigidity_background" in objective.weights(5000)
    assert "global_rigidity_background" not in objective.weights(5001)
    assert "alpha_bootstrap" in objective.weights(10000) and "alpha_bootstrap" not in objective.weights(10001)
    assert "gradient" not in objective.weights(0)
    nla = small_networks()
    video = synthetic_video(T, H, W)
    batch = PixelSteps(pixel_table_of(video), (T, H, W), 32, seed=0, stop=1).sample(0)
    terms, _ = objective(nla, batch, step=10001)
    assert "gradient" not in terms and "alpha_bootstrap" not in terms and "global_rigidity_foreground" not in terms
    assert all(torch.isfinite(v) for v in terms.values())


def pixel_table_of(video):
    from text2live.atlas.system import pixel_table

    return pixel_table(video)


# the data --------------------------------------------------------------------------------------------------


def test_a_steps_pixels_carry_their_colour_derivatives_mask_and_flow(video):
    table = pixel_table_of(video)
    steps = PixelSteps(table, (T, H, W), 2000, seed=3, stop=10)
    batch = steps.sample(7)
    assert batch["step"] == 7
    again = PixelSteps(table, (T, H, W), 2000, seed=3, stop=10).sample(7)
    assert all(torch.equal(batch[k], again[k]) for k in batch if k != "step")
    x, y, t = batch["xyt"].long().unbind(1)
    frames = video.frames
    torch.testing.assert_close(batch["rgb"], frames[t, :, y, x])
    right = (x + 1).clamp(max=W - 1)
    dx = torch.where((x < W - 1)[:, None], frames[t, :, y, right] - frames[t, :, y, x], 0.0)
    torch.testing.assert_close(batch["rgb_dx"], dx)
    torch.testing.assert_close(batch["mask"][:, 0], video.masks[t, 0, y, x])
    last, first = t == T - 1, t == 0
    assert not batch["forward_valid"][last].any() and not batch["backward_valid"][first].any()
    inner = ~last
    ti = t[inner]
    valid = video.flow_forward_valid[ti, 0, y[inner], x[inner]]
    assert torch.equal(batch["forward_valid"][inner], valid)
    expected = video.flow_forward[ti, :, y[inner], x[inner]] * valid[:, None]
    torch.testing.assert_close(batch["flow_forward"][inner], expected)
    back = ~first
    expected = video.flow_backward[t[back] - 1, :, y[back], x[back]] * batch["backward_valid"][back, None]
    torch.testing.assert_close(batch["flow_backward"][back], expected)
    assert set(t.tolist()) == set(range(T))  # uniform over the whole video


def test_the_synthetic_video_has_exact_masks_and_flow(video):
    """Warping frame t + 1 by the forward flow gives frame t wherever the flow is valid (up to the bilinear
    interpolation of half-pixel motion), and the valid flow leaves out the occluded pixels."""
    assert video.frames.shape == (T, 3, H, W) and video.masks.shape == (T, 1, H, W)
    assert 0.05 < video.masks.mean() < 0.3
    ys, xs = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    for t in range(T - 1):
        flow = video.flow_forward[t]
        grid = torch.stack([(xs + flow[0]) / (W - 1) * 2 - 1, (ys + flow[1]) / (H - 1) * 2 - 1], -1)[None]
        warped = F.grid_sample(video.frames[t + 1 : t + 2], grid, align_corners=True)[0]
        error = (warped - video.frames[t]).abs().amax(0)
        valid = video.flow_forward_valid[t, 0]
        assert error[valid].mean() < 0.01 and error[~valid].mean() > 0.1
        assert 0.85 < valid.float().mean() < 1
        assert torch.allclose(video.flow_backward[t][:, video.masks[t + 1, 0] > 0], torch.tensor([[-2.5], [0.5]]))


def test_pretraining_fits_the_mappings_to_the_scaled_identity():
    nla = small_networks()
    system = AtlasSystem(nla, NLAObjective(), torch.optim.Adam, Pretraining(iterations=20, samples=256, lr=1e-3))
    xyt = torch.rand(500, 3) * torch.tensor([W, H, T])
    x = nla.normalize(xyt)

    def distance() -> float:
        with torch.no_grad():
            return float((nla.foreground_mapping(x) - 0.8 * x[:, :2]).norm(dim=1).mean())

    before = distance()
    system.pretrain_mapping(nla.foreground_mapping, seed=0)
    assert distance() < 0.2 * before and distance() < 0.1


# training on the synthetic video ----------------------------------------------------------------------------


def test_a_short_run_reconstructs_the_video_and_finds_the_foreground(small_run, video):
    run_dir, done = small_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    files = sorted((run_dir / "frames").glob("*.png"))
    frames = torch.stack([torch.from_numpy(np.array(Image.open(p))) for p in files]).permute(0, 3, 1, 2) / 255
    assert frames.shape == (T, 3, H, W)
    # a constant colour, and the best picture that ignores motion (every pixel's mean over time): an atlas whose
    # UV maps do not follow the video cannot beat the second
    constant = psnr(frames, frames.mean(dim=(0, 2, 3), keepdim=True))
    static = psnr(frames, frames.mean(dim=0, keepdim=True))
    assert metrics["psnr"] > static + 2 > constant + 2, (metrics["psnr"], static, constant)
    assert len(metrics["psnr_per_frame"]) == T and min(metrics["psnr_per_frame"]) > static
    assert metrics["alpha_mask_iou"] > 0.9  # against the true mask
    assert abs(metrics["alpha_mean"] - float(video.masks.mean())) < 0.05
    assert metrics["flow_error"] < 1.5  # pixels
    assert (metrics["num_frames"], metrics["height"], metrics["width"]) == (T, H, W)

    # the checkpoint holds NLA's keys; its networks, of the configured sizes, give back the measured PSNR
    checkpoint = torch.load(run_dir / "checkpoint", map_location="cpu", weights_only=True)
    assert list(checkpoint) == [
        "F_atlas_state_dict",
        "iteration",
        "model_F_mapping1_state_dict",
        "model_F_mapping2_state_dict",
        "model_F_alpha_state_dict",
        "optimizer_all_state_dict",
    ]
    assert set(CHECKPOINT_KEYS) <= set(checkpoint) and checkpoint["iteration"] == STEPS
    nla = small_networks()
    nla.load_checkpoint(checkpoint)
    maps = video_maps(nla, T, H, W)
    rgb = maps.alpha * reconstruct(nla, maps.uvs["foreground"], 4096)
    rgb = rgb + (1 - maps.alpha) * reconstruct(nla, maps.uvs["background"], 4096)
    per_frame = [psnr(frames[t], rgb[t]) for t in range(T)]
    torch.testing.assert_close(torch.tensor(per_frame), torch.tensor(metrics["psnr_per_frame"]), atol=1e-3, rtol=0)
    assert metrics["psnr"] == pytest.approx(sum(per_frame) / T, abs=1e-3)  # the mean over frames, as NLA reports

    config = json.loads((run_dir / "config.json").read_text())
    assert (config["maximum_number_of_frames"], config["resx"], config["resy"]) == (T, W, H)
    assert (config["number_of_layers_mapping1"], config["number_of_channels_atlas"]) == (4, 48)
    assert config["positional_encoding_num_alpha"] == 4 and config["use_positional_encoding_mapping1"] is False
    assert (config["rgb_coeff"], config["alpha_flow_factor"], config["iters_num"]) == (5000, 49.0, STEPS)

    for name in ("foreground_atlas.png", "background_atlas.png"):
        atlas = Image.open(run_dir / name)
        assert atlas.mode == "RGBA" and min(atlas.size) > 5
    for name in (
        "reconstruction.mp4",
        "alpha.mp4",
        "DONE",
        "steps/125/reconstruction.png",
        "steps/250/foreground_atlas.png",
    ):
        assert (run_dir / name).is_file(), name
    assert "Edit the video through this NLA" in done.stdout


def test_tensorboard_has_every_term_and_the_psnr_of_every_frame(small_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = small_run
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    terms = {f"train/loss/{name}" for name in (*NLAObjective().lambdas, "total")}
    assert terms <= scalars and {"train/psnr", "train/alpha_mean", "eval/psnr", "eval/flow_error"} <= scalars
    assert {f"eval/psnr_frame/{t:05d}" for t in range(T)} <= scalars
    assert [e.step for e in events.Scalars("eval/psnr")] == [125, 250]
    assert len(events.Scalars("train/loss/rgb")) == STEPS
    assert {"eval/foreground_atlas", "eval/background_atlas", "eval/input|reconstruction|alpha"} <= images


def test_a_killed_run_resumes_to_byte_identical_outputs(small_run, video_files, tmp_path):
    reference, _ = small_run
    run_dir = tmp_path / "killed"
    overrides = [*video_files, "name=synthetic", f"run_dir={run_dir}", *RUN, *SMALL]
    killed = t2l_atlas(overrides, kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == KILL_AT // EVERY * EVERY
    assert not (run_dir / "DONE").exists() and not (run_dir / "checkpoint").exists()

    resumed = t2l_atlas(overrides)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout + resumed.stderr
    assert "pre-trained" not in resumed.stdout + resumed.stderr  # the mappings come from the checkpoint
    for name in OUTPUTS:
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (run_dir, reference))
    for key in ("results_folder_name", "data_folder", "checkpoint_path"):  # the entries that name the folder
        ours.pop(key), theirs.pop(key)
    assert ours == theirs

    again = t2l_atlas(overrides)  # finished: nothing to do, and the command is printed again
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr
    assert "t2l-train experiment=video" in again.stdout


def test_the_printed_command_edits_the_video_through_its_nla(default_sizes_run, tmp_path, capsys, monkeypatch):
    run_dir, done = default_sizes_run
    nla = load_nla(run_dir / "checkpoint", T, H, W)  # NLA's network sizes: what t2l-train loads
    optimizer = torch.load(run_dir / "checkpoint", map_location="cpu", weights_only=True)["optimizer_all_state_dict"]
    assert [len(group["params"]) for group in optimizer["param_groups"]] == [12, 8, 16, 16]  # fg, bg, alpha, atlas
    assert sum(p.numel() for p in nla.parameters()) == sum(p.numel() for p in NeuralAtlases(T, H, W).parameters())

    line = done.stdout.strip().splitlines()[-1]
    words = shlex.split(line)
    assert words[:2] == ["t2l-train", "experiment=video"]
    given = dict(word.split("=", 1) for word in words[1:])
    assert given["nla_checkpoint"] == str(run_dir / "checkpoint") and given["frames_dir"] == str(run_dir / "frames")
    assert (given["num_frames"], given["data.width"], given["data.height"]) == (str(T), str(W), str(H))
    assert given["comp_text"] == given["src_text"] == given["screen_text"] == "..."

    # the command as printed, the prompts filled in, shrunk to seconds; the NLA of a 40-step run barely reaches
    # an alpha of 0.5, so the foreground box is taken at 0.3
    tiny = [o for o in VIDEO_TINY if not o.startswith(("data.width", "data.height"))]
    prompts = ["comp_text=golden ball", "src_text=ball", "screen_text=golden"]
    argv = [*(w for w in words[1:] if not w.startswith(prompts_keys())), *prompts, *tiny]
    argv += ["data.mask_threshold=0.3", f"run_dir={tmp_path / 'edit'}"]
    result = run_cli(train_cli.main, argv, capsys, monkeypatch)
    assert result.code == 0, result.stderr
    assert (tmp_path / "edit" / "DONE").is_file() and (tmp_path / "edit" / "edited.mp4").is_file()


def prompts_keys() -> tuple[str, ...]:
    return ("comp_text=", "src_text=", "screen_text=")


# the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["frames_dir={missing}", "name=x"], "error: frames_dir={missing} is not a folder"),
        (["name=x"], "error: no video given: pass video=<a video file> or frames_dir=<a folder of frames>"),
        (["frames_dir={missing}"], "error: name is not set: pass name=<the video's name>"),
        (["frames_dir={missing}", "name=x", "network_precision=fp16"], "error: network_precision='fp16' is not valid"),
        (["frames_dir={missing}", "name=x", "stepz=3"], "error: unknown config key 'stepz'"),
        (["frames_dir={missing}", "name=x", "steps=many"], "error: steps=many is not valid: steps takes an integer"),
    ],
)
def test_bad_input_ends_in_one_error_line(overrides, expected, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no_such_frames"
    argv = [o.format(missing=missing) for o in overrides] + [f"run_dir={tmp_path / 'run'}", "trainer=cpu"]
    if "name=x" not in overrides:
        argv = [o for o in argv if not o.startswith("run_dir=")]
    result = run_cli(atlas_cli.main, argv, capsys, monkeypatch)
    assert result.code == 2
    assert result.error_line().startswith(expected.format(missing=missing)), result.stderr


def test_help_answers_without_importing_torch():
    code = (
        "import sys\nsys.argv = ['t2l-atlas', '--help']\nfrom text2live.cli.atlas import main\ntry:\n    main()\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "t2l-atlas" in result.stdout and "atlas_preset: short" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "False"


# the config ---------------------------------------------------------------------------------------------------


def test_the_defaults_are_nlas_and_the_short_preset_composes():
    cfg = compose_config(["name=x"], config_name="atlas")
    assert (cfg.data.width, cfg.data.height, cfg.data.samples, cfg.steps) == (768, 432, 10000, 400000)
    assert (cfg.optim.optimizer.lr, cfg.pretrain.iterations, cfg.pretrain.samples) == (1e-4, 100, 10000)
    assert instantiate(cfg.loss).lambdas == NLAObjective().lambdas
    assert cfg.run_dir == "outputs/atlas/x"
    nets = {name: instantiate(cfg.nla[name]) for name in ("foreground_mapping", "background_mapping", "atlas", "alpha")}
    reference = NeuralAtlases(T, H, W).networks()
    for key, net in zip(reference, nets.values()):
        shapes = {k: v.shape for k, v in net.state_dict().items()}
        assert shapes == {k: v.shape for k, v in reference[key].state_dict().items()}, key
    short = compose_config(["name=x", "atlas_preset=short"], config_name="atlas")
    assert short.steps < cfg.steps and short.loss == cfg.loss and short.nla == cfg.nla


def test_the_speed_options_wrap_the_networks_in_place():
    cfg = compose_config(["name=x", "network_precision=bf16", "compile=true", *SMALL], config_name="atlas")
    nla = small_networks()
    keys = list(nla.state_dict())
    apply_speed_options(cfg, nla)
    assert list(nla.state_dict()) == keys
    assert all(net._compiled_call_impl is not None for net in nla.networks().values())
    assert nla.atlas.autocast_dtype == torch.bfloat16 and nla.alpha.autocast_dtype == torch.bfloat16
    assert not hasattr(nla.foreground_mapping, "autocast_dtype")  # the mappings' one-pixel differences stay fp32


def test_bf16_networks_give_the_objective_within_bfloat16_rounding(video):
    cfg = compose_config(["name=x", "network_precision=bf16", *SMALL], config_name="atlas")
    nla = small_networks()
    batch = PixelSteps(pixel_table_of(video), (T, H, W), 256, seed=0, stop=1).sample(0)
    eager, _ = NLAObjective()(nla, batch, 0)
    apply_speed_options(cfg, nla)
    mixed, _ = NLAObjective()(nla, batch, 0)
    for name in ("rgb", "alpha_bootstrap", "rigidity_foreground", "flow_background"):
        torch.testing.assert_close(mixed[name], eager[name], rtol=0.05, atol=1e-3, msg=name)


def test_the_datamodule_refuses_a_bad_sample_count():
    from text2live.errors import ConfigError

    with pytest.raises(ConfigError, match="data.samples=0 is not valid"):
        VideoPixels(samples=0)
