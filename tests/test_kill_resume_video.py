"""A video run killed with SIGKILL during a step, then stopped with SIGINT (Ctrl-C), ends exactly as an uninterrupted
run once the same command is run again (the real CLI, real signals, the synthetic NLA video)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from conftest import VIDEO_TINY, video_overrides
from test_kill_resume import (
    TIMEOUT,
    checkpoint_step,
    command,
    environment,
    final_outputs,
    one_error_line,
    run,
    wait_for,
)

STEPS, EVERY = 8, 3
OUTPUTS = (
    "edited.mp4",
    "edited.gif",
    "foreground/atlas_rgba.png",
    "foreground/atlas_composite.png",
    "foreground/alpha.mp4",
    "foreground/frames/00000.png",
    "foreground/frames/00004.png",
)


def overrides(video: tuple[Path, Path], run_dir: Path) -> list[str]:
    return [
        *video_overrides(video, run_dir),
        *VIDEO_TINY,
        f"steps={STEPS}",
        f"checkpoint_every={EVERY}",
        "log_images_freq=0",
    ]


def test_killed_and_interrupted_video_run_ends_byte_identical(tmp_path: Path, synthetic_video) -> None:
    reference = tmp_path / "uninterrupted"
    done = run(overrides(synthetic_video, reference))
    assert done.returncode == 0, done.stderr

    run_dir = tmp_path / "interrupted"
    args = overrides(synthetic_video, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"

    killed = run(args, "step:4")
    assert killed.returncode == -signal.SIGKILL
    assert checkpoint_step(last) == 3

    process = subprocess.Popen(
        command(args), env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: checkpoint_step(last) == 6, process, "the step-6 checkpoint")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGINT, stderr
    stopped = checkpoint_step(last)
    assert 6 <= stopped <= STEPS
    assert f"stopped by SIGINT after step {stopped} of {STEPS}" in one_error_line(stderr)
    assert not (run_dir / "DONE").exists()

    finished = run(args)
    assert finished.returncode == 0, finished.stderr
    assert final_outputs(run_dir, OUTPUTS) == final_outputs(reference, OUTPUTS)
