"""A run killed at any moment and started again ends exactly as an uninterrupted run (the real CLI, real signals).

An image run is killed with SIGKILL during a step, while a checkpoint is half written and while the final PNGs
are written, and stopped with SIGTERM; each time the same command is run again. Its final outputs and metrics
must be byte-identical to those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from PIL import Image

from text2live.config import ASSETS_DIR

HARNESS = Path(__file__).with_name("kill_harness.py")
OUTPUTS = ("edit.png", "alpha.png", "edit_on_greenscreen.png", "composite.png", "layer_rgba.png")
STEPS, EVERY = 12, 4
TIMEOUT = 300  # seconds for one process; a run takes about ten on two idle cores


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


def command(overrides: list[str], moment: str | None = None) -> list[str]:
    if moment is None:
        return [sys.executable, "-m", "text2live.cli.train", *overrides]
    return [sys.executable, str(HARNESS), moment, *overrides]


def run(overrides: list[str], moment: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(overrides, moment), env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def final_outputs(run_dir: Path, names=OUTPUTS) -> dict[str, bytes]:
    found = {name: (run_dir / name).read_bytes() for name in names}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("run_dir")  # the one entry that names the folder
    found["metrics.json"] = json.dumps(metrics, sort_keys=True).encode()
    return found


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "cat.png"
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96), Image.LANCZOS).save(path)
    return path


def image_overrides(cat: Path, run_dir: Path) -> list[str]:
    return [
        f"image_path={cat}",
        "comp_text=golden cat",
        "src_text=cat",
        "screen_text=golden",
        "bootstrap_text=cat",
        "loss.bootstrap_steps=3",
        *TINY,
        f"steps={STEPS}",
        f"checkpoint_every={EVERY}",
        "log_images_freq=0",
        f"run_dir={run_dir}",
    ]


def wait_for(condition, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the run ended (exit {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_and_stopped_runs_end_byte_identical(tmp_path: Path, cat: Path) -> None:
    reference = tmp_path / "uninterrupted"
    done = run(image_overrides(cat, reference))
    assert done.returncode == 0, done.stderr

    run_dir = tmp_path / "interrupted"
    overrides = image_overrides(cat, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"

    # 1. SIGKILL in the middle of step 6: the step-4 checkpoint is what remains
    killed = run(overrides, "step:6")
    assert killed.returncode == -signal.SIGKILL
    assert checkpoint_step(last) == 4
    assert not (run_dir / "DONE").exists()

    # 2. SIGKILL while the step-8 checkpoint is half written: last.ckpt is still the whole step-4 checkpoint
    killed = run(overrides, "checkpoint")
    assert killed.returncode == -signal.SIGKILL
    assert "resuming" in killed.stdout + killed.stderr
    assert "not resumable" not in killed.stderr and "weights_only" not in killed.stdout + killed.stderr
    assert checkpoint_step(last) == 4

    # 3. SIGTERM (a scheduler's stop) once the step-8 checkpoint exists: the run stops after the current step
    #    with that step's checkpoint written, exit 128 + 15, one line that says how to go on
    process = subprocess.Popen(
        command(overrides), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: last.is_file() and checkpoint_step(last) == 8, process, "the step-8 checkpoint")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    line = one_error_line(stderr)
    stopped = checkpoint_step(last)
    assert 8 <= stopped <= STEPS
    assert f"stopped by SIGTERM after step {stopped} of {STEPS}" in line and "run the same command again" in line
    assert not (run_dir / "DONE").exists()

    # 4. SIGKILL while the final outputs are written: no DONE, no composite
    killed = run(overrides, "outputs")
    assert killed.returncode == -signal.SIGKILL
    assert (run_dir / "edit.png").is_file() and not (run_dir / "composite.png").exists()
    assert not (run_dir / "DONE").exists()

    # 5. the same command once more finishes the run, exactly as the uninterrupted one
    finished = run(overrides)
    assert finished.returncode == 0, finished.stderr
    assert (run_dir / "DONE").is_file()
    assert checkpoint_step(run_dir / "checkpoints" / "final.ckpt") == STEPS
    assert final_outputs(run_dir) == final_outputs(reference)
