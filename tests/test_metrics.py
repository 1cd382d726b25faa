"""Edit metrics (text2live.metrics) against hand computations, and ``t2l-eval`` (text2live.evaluate) end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, VIDEO_TINY, compose_config, video_overrides
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torchmetrics.functional.image import structural_similarity_index_measure

from text2live import runs
from text2live.cli.eval import main
from text2live.clip_guide import TEMPLATES, build_guide
from text2live.config import ASSETS_DIR
from text2live.evaluate import evaluate_run, flatten_hparams
from text2live.metrics import (
    alpha_coverage,
    clip_directional_similarity,
    clip_score,
    frame_consistency,
    image_metrics,
    preservation,
    structure_distance,
    video_metrics,
)
from text2live.runs import find_runs
from text2live.training import train

IMAGE_KEYS = {
    "clip_score",
    "clip_score_input",
    "clip_directional_similarity",
    "structure_distance",
    "preservation_l1",
    "preservation_psnr",
    "preservation_ssim",
    "alpha_mean",
    "alpha_area",
}
PROMPT_KEYS = {"clip_score", "clip_score_input", "clip_directional_similarity"}
RECORD_KEYS = {"run_dir", "name", "seed", "steps", "kind", "checkpoint", "clip", "metrics", "hparams"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def guide():
    return build_guide("tiny", precision="fp32", relevancy_name=None, relevancy_num_layers=0).place("cpu")


def images(seed: int, h: int = 40, w: int = 56, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g)


def hand_embedding(guide, image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """CLIP view 1 by hand: bilinear resize (no antialiasing, legacy) to ``shape``, normalise, embed."""
    x = F.interpolate(image, size=shape, mode="bilinear", align_corners=False)
    return F.normalize(guide.encode_image(guide.normalize(x)), dim=-1)[0]


def hand_target(guide, prompts: list[str]) -> torch.Tensor:
    rows = F.normalize(guide.text_embeddings(prompts, TEMPLATES), dim=-1)
    assert len(rows) == len(prompts) * 14
    return F.normalize(rows.mean(0), dim=0)


# preservation and alpha ---------------------------------------------------------------------------------------


def test_preservation_counts_only_the_transparent_region():
    image = 0.2 + 0.5 * images(0, 32, 48)
    alpha = torch.ones(1, 1, 32, 48)
    alpha[..., 8:24, 10:30] = 0  # the kept region
    c = 0.25
    composite = image + 0.5  # anything where the edit is opaque
    composite[..., 8:24, 10:30] = image[..., 8:24, 10:30] + c
    out = preservation(image, composite, alpha)
    assert out["l1"] == pytest.approx(c, abs=1e-6)
    assert out["psnr"] == pytest.approx(-10 * math.log10(c**2), abs=1e-4)
    composite[..., 8:24, 10:30] = image[..., 8:24, 10:30] - c
    assert preservation(image, composite, alpha)["l1"] == pytest.approx(c, abs=1e-6)


def test_preservation_weights_by_one_minus_alpha():
    image = images(1, 20, 20)
    alpha = torch.zeros(1, 1, 20, 20)
    alpha[..., :10, :] = 0.5  # weight 0.5 on the top half (difference a), 1 on the bottom (difference b)
    a, b = 0.5, 0.125
    composite = image.clone()
    composite[..., :10, :] += a
    composite[..., 10:, :] += b
    out = preservation(image, composite, alpha)
    assert out["l1"] == pytest.approx((0.5 * a + b) / 1.5, abs=1e-6)
    assert out["psnr"] == pytest.approx(10 * math.log10(1.5 / (0.5 * a**2 + b**2)), abs=1e-4)


def test_preservation_of_identical_images():
    image = images(2)
    alpha = torch.zeros(1, 1, 40, 56)
    alpha[..., :20, :] = 1
    out = preservation(image, image.clone(), alpha)
    assert out == {"l1": 0.0, "psnr": 100.0, "ssim": pytest.approx(1.0, abs=1e-6)}


def test_preservation_ssim_is_torchmetrics_mean_ssim_without_an_edit():
    image, composite = images(3), images(4)
    out = preservation(image, composite, torch.zeros(1, 1, 40, 56))
    expected = float(structural_similarity_index_measure(composite, image, data_range=1.0))
    assert out["ssim"] == pytest.approx(expected, abs=1e-6)
    assert expected < 0.5  # two unrelated noise images


def test_preservation_is_nan_where_the_edit_covers_everything():
    out = preservation(images(5), images(6), torch.ones(1, 1, 40, 56))
    assert all(math.isnan(v) for v in out.values())


def test_alpha_coverage():
    alpha = torch.zeros(1, 1, 10, 20)
    alpha[..., :, :10] = 1
    assert alpha_coverage(alpha) == {"alpha_mean": 0.5, "alpha_area": 0.5}
    half = torch.full((1, 1, 10, 20), 0.5)
    assert alpha_coverage(half) == {"alpha_mean": 0.5, "alpha_area": 0.0}  # > 0.5, strictly


# CLIP metrics -------------------------------------------------------------------------------------------------


def test_clip_score_is_the_hand_computation(guide):
    image = images(7, 96, 144)  # view 1: shorter side 224 -> 224 x 336, capped at 320 -> 213 x 320
    prompts = ["golden cat", "a cat made of gold"]
    expected = 100 * torch.dot(hand_embedding(guide, image, (213, 320)), hand_target(guide, prompts))
    assert clip_score(guide, image, prompts) == pytest.approx(float(expected), abs=1e-4)
    single = 100 * torch.dot(hand_embedding(guide, image, (213, 320)), hand_target(guide, ["cat"]))
    assert clip_score(guide, image, "cat") == pytest.approx(float(single), abs=1e-4)


def test_clip_directional_similarity(guide):
    image, composite = images(8), images(9)
    shape = (224, 313)  # 40 x 56 -> shorter side 224, longer int(224 * 56 / 40) = 313
    d_image = hand_embedding(guide, composite, shape) - hand_embedding(guide, image, shape)
    d_text = hand_target(guide, ["golden cat"]) - hand_target(guide, ["cat"])
    expected = float(F.cosine_similarity(d_image, d_text, dim=0))
    forward = clip_directional_similarity(guide, image, composite, "cat", "golden cat")
    assert forward == pytest.approx(expected, abs=1e-5)
    backward = clip_directional_similarity(guide, composite, image, "cat", "golden cat")
    assert backward == pytest.approx(-forward, abs=1e-6)
    assert forward != 0
    assert clip_directional_similarity(guide, image, image, "cat", "golden cat") == 0.0


def test_structure_distance(guide):
    image, composite = images(10), images(11)
    assert structure_distance(guide, image, image.clone()) == 0.0
    expected = F.mse_loss(guide.self_similarity(composite), guide.self_similarity(image))
    assert structure_distance(guide, image, composite) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) > 0


def test_frame_consistency(guide):
    frame = images(12)
    assert frame_consistency(guide, frame.expand(5, -1, -1, -1)) == pytest.approx(1.0, abs=1e-5)
    a, b, c = images(13), images(14), images(15)
    shape = (224, 313)
    e = [hand_embedding(guide, x, shape) for x in (a, b, c)]
    expected = (torch.dot(e[0], e[1]) + torch.dot(e[1], e[2])) / 2
    assert frame_consistency(guide, torch.cat([a, b, c])) == pytest.approx(float(expected), abs=1e-5)
    assert math.isnan(frame_consistency(guide, a))


def test_image_metrics_gathers_the_metrics(guide):
    image, composite = images(16), images(17)
    alpha = torch.zeros(1, 1, 40, 56)
    alpha[..., 10:30, 10:40] = 0.8
    out = image_metrics(guide, image, composite, alpha, "golden cat", "cat")
    assert set(out) == IMAGE_KEYS
    assert all(isinstance(v, float) for v in out.values())
    assert out["clip_score"] == pytest.approx(clip_score(guide, composite, "golden cat"), abs=1e-4)
    assert out["clip_score_input"] == pytest.approx(clip_score(guide, image, "golden cat"), abs=1e-4)
    direction = clip_directional_similarity(guide, image, composite, "cat", "golden cat")
    assert out["clip_directional_similarity"] == pytest.approx(direction, abs=1e-6)
    assert out["structure_distance"] == pytest.approx(structure_distance(guide, image, composite), rel=1e-6)
    kept = preservation(image, composite, alpha)
    assert {k: out[f"preservation_{k}"] for k in kept} == pytest.approx(kept)
    assert out["alpha_mean"] == pytest.approx(0.8 * 600 / 2240)
    assert out["alpha_area"] == pytest.approx(600 / 2240)


def test_video_metrics_on_a_synthetic_video(guide):
    frames = 3
    video = images(18, 36, 64, n=frames)
    edited = video.clone()
    edited[:, :, 5:25, 10:40] = 0.9  # a grey box
    fg = torch.zeros(frames, 1, 36, 64)
    fg[:, :, 5:25, 10:40] = 1
    bg = torch.zeros(frames, 1, 36, 64)
    bg[:, :, 30:, :] = 0.5
    comp = {"foreground": "golden swan", "background": ["snowy pond", "frozen lake"]}
    src = {"foreground": "swan", "background": "pond"}
    out = video_metrics(guide, video, edited, {"foreground": fg, "background": bg}, comp, src)

    layer_keys = {f"{layer}/{k}" for layer in comp for k in (*PROMPT_KEYS, "alpha_mean", "alpha_area")}
    expected_keys = (IMAGE_KEYS - PROMPT_KEYS) | layer_keys | {"frame_consistency", "frame_consistency_input"}
    assert set(out) == expected_keys
    shape = (180, 320)  # 36 x 64 -> 224 x 398, capped: int(320 * 224 / 398) x 320
    e_video = torch.stack([hand_embedding(guide, video[t : t + 1], shape) for t in range(frames)])
    e_edited = torch.stack([hand_embedding(guide, edited[t : t + 1], shape) for t in range(frames)])
    for layer in comp:
        t_comp = hand_target(guide, [comp[layer]] if isinstance(comp[layer], str) else comp[layer])
        t_src = hand_target(guide, [src[layer]])
        assert out[f"{layer}/clip_score"] == pytest.approx(float(100 * (e_edited @ t_comp).mean()), abs=1e-4)
        assert out[f"{layer}/clip_score_input"] == pytest.approx(float(100 * (e_video @ t_comp).mean()), abs=1e-4)
        directions = F.cosine_similarity(e_edited - e_video, (t_comp - t_src)[None], dim=-1)
        assert out[f"{layer}/clip_directional_similarity"] == pytest.approx(float(directions.mean()), abs=1e-5)
    union = 1 - (1 - fg) * (1 - bg)
    kept = [preservation(video[t : t + 1], edited[t : t + 1], union[t : t + 1]) for t in range(frames)]
    for key in ("l1", "psnr", "ssim"):
        assert out[f"preservation_{key}"] == pytest.approx(np.mean([k[key] for k in kept]), rel=1e-5)
    assert out["preservation_l1"] == 0.0 and out["preservation_psnr"] == 100.0  # nothing changed outside the box
    assert out["alpha_mean"] == pytest.approx(float(union.mean()))
    assert out["alpha_area"] == pytest.approx(600 / 2304)  # the box; the background's 0.5 is not > 0.5
    assert out["foreground/alpha_area"] == pytest.approx(600 / 2304)
    assert out["background/alpha_mean"] == pytest.approx(0.5 * 6 / 36)
    structure = [
        F.mse_loss(guide.self_similarity(edited[t : t + 1]), guide.self_similarity(video[t : t + 1]))
        for t in range(frames)
    ]
    assert out["structure_distance"] == pytest.approx(float(torch.stack(structure).mean()), rel=1e-5)
    consistency = (e_edited[1:] * e_edited[:-1]).sum(-1).mean()
    assert out["frame_consistency"] == pytest.approx(float(consistency), abs=1e-5)
    consistency_input = (e_video[1:] * e_video[:-1]).sum(-1).mean()
    assert out["frame_consistency_input"] == pytest.approx(float(consistency_input), abs=1e-5)

    plain = video_metrics(guide, video, edited, fg, "golden swan", "swan")
    assert set(plain) == IMAGE_KEYS | {"frame_consistency", "frame_consistency_input"}
    assert plain["clip_score"] == pytest.approx(out["foreground/clip_score"], abs=1e-5)
    still = video[:1].expand(3, -1, -1, -1)
    assert video_metrics(guide, still, still, fg, "a", "b")["frame_consistency"] == pytest.approx(1.0, abs=1e-5)


# evaluate_run and t2l-eval ------------------------------------------------------------------------------------


def hparams_of(tb: Path) -> dict:
    """The hparams of the HParams plugin's session-start record in a TensorBoard folder."""
    events = EventAccumulator(str(tb))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[key] = getattr(value, kind)
    return hparams


def check_record(run_dir: Path, record: dict, keys: set[str]) -> None:
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == record
    assert set(record) == RECORD_KEYS
    assert record["run_dir"] == str(run_dir.resolve())
    assert record["steps"] == 3 and record["seed"] == 0 and record["checkpoint"] == "final.ckpt"
    assert record["clip"] == "tiny"
    assert set(record["metrics"]) == keys
    assert all(isinstance(v, float) and math.isfinite(v) for v in record["metrics"].values())
    assert not (run_dir / "metrics.json.part").exists()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval")


@pytest.fixture(scope="module")
def image_run(workdir: Path) -> Path:
    """A finished tiny image run (conftest's ``tiny_cfg`` recipe), trained once per module and worker."""
    image = workdir / "cat96.png"
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96), Image.LANCZOS).save(image)
    prompts = ["comp_text=golden cat", "src_text=cat", "screen_text=golden", "bootstrap_text=cat"]
    return train(compose_config([f"image_path={image}", *prompts, f"run_dir={workdir / 'image'}", *TINY]))


@pytest.fixture(scope="module")
def video_run(workdir: Path, synthetic_video) -> Path:
    """A finished tiny video run (conftest's ``tiny_video_cfg`` recipe), trained once per module and worker."""
    return train(compose_config(video_overrides(synthetic_video, workdir / "video") + VIDEO_TINY))


def test_evaluate_image_run(image_run):
    record = evaluate_run(image_run)
    check_record(image_run, record, IMAGE_KEYS)
    assert record["kind"] == "image" and record["name"] == "adhoc"
    alpha_png = np.asarray(Image.open(image_run / "alpha.png"), dtype=np.float64) / 255
    assert record["metrics"]["alpha_mean"] == pytest.approx(alpha_png.mean(), abs=1 / 255)

    hparams = record["hparams"]
    assert hparams["comp_text"] == "golden cat" and hparams["bootstrap_text"] == "cat"
    assert hparams["clip.name"] == "tiny" and hparams["data.resize_input"] == 96 and hparams["loss.n_aug"] == 4
    assert {"loss.lambda_structure", "loss.lambda_composition", "loss.lambda_bootstrap", "loss.bootstrap_steps"} <= set(
        hparams
    )
    assert not {"run_dir", "trainer.max_steps", "log_images_freq"} & set(hparams)
    assert all(isinstance(v, str | int | float | bool) for v in hparams.values())

    logged = hparams_of(image_run / "tb")
    assert logged["seed"] == 0 and logged["comp_text"] == "golden cat" and logged["loss.lambda_structure"] == 2.0
    events = EventAccumulator(str(image_run / "tb"))
    events.Reload()
    assert {f"eval/{k}" for k in IMAGE_KEYS} <= set(events.Tags()["scalars"])
    logged_score = events.Scalars("eval/clip_score")[-1]
    assert logged_score.value == pytest.approx(record["metrics"]["clip_score"], rel=1e-6) and logged_score.step == 3


def test_evaluate_video_run(video_run):
    record = evaluate_run(video_run)
    layer_keys = {f"foreground/{k}" for k in (*PROMPT_KEYS, "alpha_mean", "alpha_area")}
    keys = (IMAGE_KEYS - PROMPT_KEYS) | layer_keys | {"frame_consistency", "frame_consistency_input"}
    check_record(video_run, record, keys)
    assert record["kind"] == "video" and record["name"] == "video"
    assert record["hparams"]["edit_layers"] == "foreground"
    assert record["hparams"]["foreground.comp_text"] == "golden swan"
    assert hparams_of(video_run / "tb")["data.num_frames"] == 5


def test_flatten_hparams():
    cfg = {
        "name": "x",
        "run_dir": "out",
        "comp_text": ["a", "b"],
        "bootstrap_text": None,
        "loss": {"lambda_structure": 2.0, "n_aug": 4, "sum": False},
        "optim": {"optimizer": {"_target_": "madgrad.MADGRAD", "_partial_": True, "lr": 0.1}},
        "trainer": {"max_steps": 3},
        "odd": [{"a": 1}],
    }
    assert flatten_hparams(cfg) == {
        "name": "x",
        "comp_text": "a | b",
        "bootstrap_text": "null",
        "loss.lambda_structure": 2.0,
        "loss.n_aug": 4,
        "loss.sum": False,
        "optim.optimizer._target_": "madgrad.MADGRAD",
        "optim.optimizer.lr": 0.1,
    }


def test_find_runs(tmp_path):
    for name, done in (("a/seed0", True), ("a/seed1", False), ("b/c/seed0", True)):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / runs.CONFIG_FILE).write_text("name: x\n")
        if done:
            (tmp_path / name / runs.DONE_FILE).write_text("3 steps\n")
    assert find_runs(tmp_path) == [tmp_path / "a/seed0", tmp_path / "b/c/seed0"]
    assert find_runs(tmp_path / "a/seed0") == [tmp_path / "a/seed0"]
    assert find_runs(tmp_path / "a/seed1") == []


def mtimes(run_dirs: list[Path]) -> list[int]:
    return [(r / "metrics.json").stat().st_mtime_ns for r in run_dirs]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_cli(image_run, video_run, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run_dirs = [sweep / "a" / "image", sweep / "b" / "video"]
    for source, copy in zip((image_run, video_run), run_dirs):
        shutil.copytree(source, copy)
        (copy / "metrics.json").unlink(missing_ok=True)  # evaluated by another test of this worker, maybe
    (sweep / "unfinished").mkdir()
    (sweep / "unfinished" / runs.CONFIG_FILE).write_text("name: x\n")

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "text2live.cli.eval", str(sweep)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, run_dir in zip(lines, run_dirs):
        assert line.startswith(f"{run_dir}  ") and "clip_score=" in line and "psnr=" in line
    assert "foreground/clip_dir=" in lines[1]
    assert not error_lines(done.stderr)
    first = mtimes(run_dirs)

    main([str(sweep)])  # up to date: nothing is redone
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(line.endswith("(up to date)") for line in out)
    assert mtimes(run_dirs) == first

    main([str(sweep), "--force"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and not any("up to date" in line for line in out)
    forced = mtimes(run_dirs)
    assert all(b > a for a, b in zip(first, forced))

    # a broken run (no checkpoint) fails alone: the others are evaluated, the failure is listed, exit 2
    broken = sweep / "broken"
    shutil.copytree(run_dirs[0], broken)
    shutil.rmtree(broken / runs.CHECKPOINT_DIR)
    (broken / "metrics.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep), "--force"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2
    errors = error_lines(captured.err)
    assert len(errors) == 1 and str(broken) in errors[0] and "1 of 3 runs" in errors[0]
    assert all(b > a for a, b in zip(forced, mtimes(run_dirs)))
    assert not (broken / "metrics.json").exists()


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_cli_bad_folder(tmp_path, capsys, case):
    folder = tmp_path / "nothing"
    if case == "empty":
        (folder / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder)])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert ("not a folder" if case == "missing" else "no finished run") in lines[0]


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "t2l-eval" in text and "--force" in text and "metrics.json" in text
