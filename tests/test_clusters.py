"""The SLURM and Ray launchers against real daemons: tiny sweeps submitted, failed, cancelled, killed, finished.

Excluded by default (marker ``cluster``). Start a throwaway single-node SLURM and a local Ray head first, then:

    sudo env "PATH=$PATH" scripts/local_cluster.sh start
    python -m pytest -m cluster tests/test_clusters.py -n 0

A launcher whose daemon is not running is skipped. Each sweep is two tiny CPU jobs (``seed=0,1``); a job's
outputs are compared byte for byte with the same run trained without a launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY

pytestmark = pytest.mark.cluster

STEPS, EVERY = 12, 4
RUN = [o for o in TINY if not o.startswith(("steps=", "checkpoint_every=", "log_images_freq="))]
RUN += [f"steps={STEPS}", f"checkpoint_every={EVERY}", "log_images_freq=0", "experiment=golden_cat"]
OUTPUTS = ("edit.png", "alpha.png", "composite.png", "edit_on_greenscreen.png", "layer_rgba.png")
LAUNCHERS = {
    "slurm": [
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=0",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=4",
        "hydra.launcher.poll_seconds=1",
    ],
    "ray": [
        "hydra/launcher=ray_gpus",
        "hydra.launcher.ray.init.address=auto",
        "hydra.launcher.ray.remote.num_gpus=0",
        "hydra.launcher.ray.remote.num_cpus=1",
    ],
}
TIMEOUT = 600


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


def ray_is_up() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return subprocess.run(["ray", "status"], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(params=sorted(LAUNCHERS))
def launcher(request) -> str:
    up = {"slurm": slurm_is_up, "ray": ray_is_up}[request.param]()
    if not up:
        pytest.skip(f"no {request.param} cluster is running here (scripts/local_cluster.sh start, as root)")
    return request.param


def environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")


def sweep(launcher: str, cwd: Path, *extra: str, background: bool = False):
    """``t2l-train -m ... seed=0,1`` through ``launcher``, its sweep folder given relative to ``cwd``."""
    args = [sys.executable, "-m", "text2live.cli.train", "-m", *RUN, *LAUNCHERS[launcher], "hydra.sweep.dir=sweep"]
    args += ["seed=0,1", *extra]
    if background:
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        return subprocess.Popen(args, cwd=cwd, env=environment(), text=True, **pipes)
    return subprocess.run(args, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)


def reference_run(folder: Path, image: Path, seed: int) -> Path:
    """The same job trained without a launcher."""
    run_dir = folder / f"reference{seed}"
    if not (run_dir / "DONE").exists():
        args = [sys.executable, "-m", "text2live.cli.train", *RUN, f"image_path={image}", f"seed={seed}"]
        done = subprocess.run(
            [*args, f"run_dir={run_dir}"], capture_output=True, text=True, env=environment(), timeout=TIMEOUT
        )
        assert done.returncode == 0, done.stderr
    return run_dir


def final_outputs(run_dir: Path) -> dict[str, bytes]:
    found = {name: (run_dir / name).read_bytes() for name in OUTPUTS}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("run_dir")
    found["metrics.json"] = json.dumps(metrics, sort_keys=True).encode()
    return found


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def wait_for(condition, what: str, seconds: float = TIMEOUT) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def test_a_sweep_runs_where_the_command_says_and_is_not_submitted_twice(launcher, small_cat, tmp_path):
    image = [f"image_path={small_cat}"]
    done = sweep(launcher, tmp_path, *image)
    assert done.returncode == 0, done.stderr
    runs = sorted((tmp_path / "sweep").glob("seed=*"))
    assert [run.name for run in runs] == ["seed=0", "seed=1"]
    assert all((run / "DONE").is_file() for run in runs)
    assert final_outputs(runs[1]) == final_outputs(reference_run(tmp_path, small_cat, 1))

    table = subprocess.run(
        [sys.executable, "-m", "text2live.cli.table", str(tmp_path / "sweep"), "--no-gallery"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert table.returncode == 0, table.stderr
    assert (tmp_path / "sweep" / "table.md").is_file() and "seed" in (tmp_path / "sweep" / "table_runs.csv").read_text()

    again = sweep(launcher, tmp_path, *image)
    assert again.returncode == 0, again.stderr
    assert "2 of 2 job(s) already finished (DONE): not submitted again" in again.stdout + again.stderr
    assert "submitted" not in (again.stdout + again.stderr).replace("not submitted again", "")


def test_a_failing_job_ends_the_sweep_in_one_line_and_is_not_retried(launcher, tmp_path):
    done = sweep(launcher, tmp_path, f"image_path={tmp_path / 'missing.png'}")
    assert done.returncode == 2
    (line,) = error_lines(done.stderr)
    assert line.startswith("error: 2 of 2 jobs failed (seed=0: ")
    assert "missing.png does not exist" in line and str(tmp_path / "sweep" / "seed=1" / "train.log") in line
    assert "run the same command again" in line
    log = (tmp_path / "sweep" / "seed=0" / "train.log").read_text()
    assert log.count("does not exist") == 1  # ran once: an input error is not retried


def test_a_job_stopped_mid_run_is_finished_by_running_the_command_again(launcher, small_cat, tmp_path):
    """SLURM: ``scancel`` of one task; Ray: SIGKILL of the worker (Ray retries it). Both end byte-identical."""
    image = [f"image_path={small_cat}"]
    reference = reference_run(tmp_path, small_cat, 1)
    target = tmp_path / "sweep" / "seed=1"
    last = target / "checkpoints" / "last.ckpt"
    process = sweep(launcher, tmp_path, *image, background=True)
    try:
        wait_for(lambda: last.is_file(), "the first checkpoint of seed=1")
        if launcher == "slurm":
            jobs = subprocess.run(["squeue", "-h", "-o", "%i %o"], capture_output=True, text=True).stdout
            task = next(line.split()[0] for line in jobs.splitlines() if line.split()[0].endswith("_1"))
            subprocess.run(["scancel", task], check=True)
        else:
            holder = int((target / ".lock").read_text().split()[0])
            os.kill(holder, signal.SIGKILL)
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    if launcher == "slurm":
        assert process.returncode == 2
        (line,) = error_lines(stderr)
        assert line.startswith("error: 1 of 2 jobs failed (seed=1: was cancelled") and "the others finished" in line
        assert not (target / "DONE").exists() and (tmp_path / "sweep" / "seed=0" / "DONE").is_file()
        resumed = sweep(launcher, tmp_path, *image)
        assert resumed.returncode == 0, resumed.stderr
        assert "1 of 2 job(s) already finished" in resumed.stdout + resumed.stderr
        assert "resuming" in (target / "train.log").read_text()
    else:  # Ray retried the killed worker within the same sweep; it resumed from the checkpoint
        assert process.returncode == 0, stderr
        assert "resuming" in (target / "train.log").read_text()
    assert (target / "DONE").is_file()
    assert checkpoint_step(target / "checkpoints" / "final.ckpt") == STEPS
    assert final_outputs(target) == final_outputs(reference)
