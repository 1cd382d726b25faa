"""What ``t2l-train`` prints: a progress bar in steps and the results, nothing Lightning says about itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import TINY

PROMPTS = ["comp_text=golden cat", "src_text=cat", "screen_text=golden", "bootstrap_text=cat"]
# What the console must not show: Lightning's device lines, model summary, epochs, version numbers, tips,
# warnings of any library.
NOISE = ("GPU available", "TPU available", "Trainable params", "Epoch", "v_num", "LOCAL_RANK", "Warning", "deprecated")


def t2l_train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    tiny = [o for o in TINY if not o.startswith("trainer.enable_progress_bar")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "text2live.cli.train", *tiny, *PROMPTS, *overrides],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def bar_states(output: str) -> list[str]:
    """Every state the progress bar was drawn in (tqdm redraws a line with carriage returns)."""
    return [part.strip() for line in output.splitlines() for part in line.split("\r") if " steps |" in part]


def step_of(state: str) -> str:
    """``"2/4"`` of ``"training:  2/4 steps |...``."""
    match = re.match(r"training:?\s+(\d+/\d+) steps \|", state)
    assert match, state
    return match.group(1)


def test_a_run_prints_its_progress_in_steps_and_its_results(small_cat, tmp_path):
    run_dir = tmp_path / "run"
    result = t2l_train(f"image_path={small_cat}", f"run_dir={run_dir}", "steps=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    console = result.stdout + result.stderr
    for noise in NOISE:
        assert noise not in console, f"{noise!r} on the console:\n{console}"
    states = bar_states(console)
    assert step_of(states[0]) == "0/4"
    last = states[-1]
    assert step_of(last) == "4/4"
    assert "s/step" in last and "loss=" in last and "<00:00" in last  # seconds per step, loss, no time left
    final = console.strip().splitlines()[-1]
    assert final.startswith(f"finished {run_dir}  clip_score="), final
    assert "psnr=" in final
    log = (run_dir / "train.log").read_text()
    assert f"finished {run_dir}" in log and log.startswith("[")  # the file keeps each message's time


def test_a_resumed_run_counts_from_the_step_it_resumes_at(small_cat, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"image_path={small_cat}", f"run_dir={run_dir}", "steps=4", "evaluate=false"]
    stopped = t2l_train(*args, "trainer.max_steps=2", cwd=tmp_path)  # stops after its step-2 checkpoint
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped at step 2 of 4: run the same command again to resume" in stopped.stdout + stopped.stderr
    result = t2l_train(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    states = bar_states(result.stdout + result.stderr)
    assert step_of(states[0]) == "2/4" and step_of(states[-1]) == "4/4"


def test_a_failed_run_leaves_its_error_line_in_train_log(tmp_path):
    run_dir = tmp_path / "run"
    result = t2l_train(f"image_path={tmp_path / 'missing.png'}", f"run_dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and "missing.png" in line
    assert (run_dir / "train.log").read_text().strip().splitlines()[-1].endswith(line)
