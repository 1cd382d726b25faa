"""Sweeps: the GPU pool of the local launcher, and a sweep of tiny jobs run, interrupted and finished."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.text2live_launcher.gpu_launcher import Job, quoted, run_pool, visible_gpus
from text2live import runs
from text2live.runs import run_names


class FakeProcess:
    """A job that ends after ``ticks`` polls with ``code``; records what ran next to it."""

    def __init__(self, ticks: int, code: int = 0) -> None:
        self.ticks, self.code = ticks, code

    def poll(self) -> int | None:
        self.ticks -= 1
        return self.code if self.ticks < 0 else None


def simulate(n_jobs_total: int, gpus: list[str], n_jobs: int = 1, failing: frozenset[int] = frozenset()):
    """Run fake jobs of different lengths through the pool; return the spawn log and the exit codes."""
    held: dict[int, str | None] = {}  # job index -> GPU, while running
    log: list[tuple[int, str | None, dict[int, str | None]]] = []

    def spawn(job: Job, gpu: str | None) -> FakeProcess:
        held[job.index] = gpu
        log.append((job.index, gpu, dict(held)))
        return FakeProcess(ticks=1 + (job.index * 7) % 5, code=3 if job.index in failing else 0)

    def done(job: Job, gpu: str | None, code: int) -> None:
        assert held.pop(job.index) == gpu

    jobs = [Job(i, [f"seed={i}"], Path(f"job{i}")) for i in range(n_jobs_total)]
    codes = run_pool(jobs, gpus, n_jobs, spawn, wait=lambda: None, on_done=done)
    return log, codes


def test_no_two_running_jobs_hold_the_same_gpu_and_freed_gpus_are_reused():
    log, codes = simulate(10, ["0", "1", "2"])
    assert codes == dict.fromkeys(range(10), 0)
    for _, gpu, running in log:
        assert gpu in ("0", "1", "2")
        in_use = [g for g in running.values()]
        assert len(in_use) == len(set(in_use)), f"two running jobs share a GPU: {running}"
        assert len(running) <= 3
    assert max(len(running) for _, _, running in log) == 3
    per_gpu = {g: sum(1 for _, gpu, _ in log if gpu == g) for g in ("0", "1", "2")}
    assert sum(per_gpu.values()) == 10 and all(n >= 2 for n in per_gpu.values())  # each GPU was handed on


def test_one_gpu_runs_the_jobs_one_after_the_other():
    log, codes = simulate(4, ["7"])
    assert [gpu for _, gpu, _ in log] == ["7"] * 4
    assert all(len(running) == 1 for _, _, running in log)
    assert len(codes) == 4


def test_without_gpus_n_jobs_cpu_processes_run_at_once():
    log, codes = simulate(5, [], n_jobs=2)
    assert all(gpu is None for _, gpu, _ in log)
    assert max(len(running) for _, _, running in log) == 2
    assert len(codes) == 5


def test_failed_jobs_are_reported_and_do_not_stop_the_others():
    _, codes = simulate(6, ["0", "1"], failing=frozenset({1, 4}))
    assert codes == {0: 0, 1: 3, 2: 0, 3: 0, 4: 3, 5: 0}


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert visible_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


@pytest.mark.parametrize("path", ["/tmp/sweep/edit=golden,experiment=study_cat,seed=0", "/tmp/it's here/a=b"])
def test_run_folders_pass_through_the_override_grammar_unchanged(path):
    (override,) = OverridesParser.create().parse_overrides([f"run_dir={quoted(path)}"])
    assert override.value() == path


# a sweep of four tiny jobs -------------------------------------------------------------------------------

GRID = ["seed=0,1", "loss.lambda_screen=0,1"]
SWEEP = [
    "experiment=golden_cat",
    "data.resize_input=96",
    "loss.bootstrap_steps=0",
    "hydra.launcher.n_jobs=2",
    "hydra.launcher.poll_seconds=0.2",
]


def run_sweep(sweep_dir: Path, *extra: str, grid: list[str] = GRID) -> subprocess.CompletedProcess:
    tiny = [o for o in TINY if o not in ("data.resize_input=96",)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "text2live.cli.train", "-m", *tiny, *SWEEP, *grid, f"hydra.sweep.dir={sweep_dir}"]
        + list(extra),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def finished(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob(f"*/{runs.DONE_FILE}"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    sweep_dir = tmp_path_factory.mktemp("sweep") / "study"
    result = run_sweep(sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_a_sweep_runs_every_job_in_its_own_folder_named_by_its_overrides(sweep):
    done = finished(sweep)
    assert len(done) == 4
    names = {p.name for p in done}
    for seed in (0, 1):
        for screen in (0, 1):
            assert any(f"seed={seed}" in n and f"loss.lambda_screen={screen}" in n for n in names)
    for run in done:
        assert (run / "composite.png").is_file() and (run / "metrics.json").is_file()
        overrides = yaml.safe_load((run / runs.OVERRIDES_FILE).read_text())
        assert "experiment=golden_cat" in overrides and not any(o.startswith("run_dir") for o in overrides)
        assert yaml.safe_load((run / runs.CONFIG_FILE).read_text())["run_dir"] == str(run)
        assert (run / "launcher.log").is_file()


def test_a_sweep_stopped_part_way_is_finished_by_running_it_again(sweep, tmp_path):
    copy = tmp_path / "study"
    shutil.copytree(sweep, copy)
    done = finished(copy)
    lost, unfinished, kept = done[0], done[1], done[2:]
    shutil.rmtree(lost)  # never started
    for name in (runs.DONE_FILE, "composite.png", "metrics.json"):  # stopped before the end
        (unfinished / name).unlink()
    (unfinished / runs.CHECKPOINT_DIR / runs.FINAL_CHECKPOINT).unlink()
    before = {run: (run / runs.CHECKPOINT_DIR / runs.FINAL_CHECKPOINT).stat().st_mtime_ns for run in kept}

    result = run_sweep(copy)
    assert result.returncode == 0, result.stderr[-3000:]
    assert finished(copy) == done
    for run, mtime in before.items():  # finished jobs were skipped, not redone
        assert (run / runs.CHECKPOINT_DIR / runs.FINAL_CHECKPOINT).stat().st_mtime_ns == mtime
        assert "is finished (DONE): nothing to do" in (run / "launcher.log").read_text()
    assert "resuming" in (unfinished / "launcher.log").read_text()
    assert (lost / "metrics.json").is_file() and (unfinished / "metrics.json").is_file()


def test_a_failing_job_ends_the_sweep_with_one_sentence_and_the_others_finish(tmp_path):
    grid = ["seed=0", "loss.lambda_screen=0,1"]
    result = run_sweep(tmp_path / "bad", "image_path=/nonexistent/cat.png", grid=grid)
    assert result.returncode != 0
    assert "2 of 2 jobs failed" in result.stderr and "launcher.log" in result.stderr
    logs = list((tmp_path / "bad").glob("*/launcher.log"))
    assert len(logs) == 2 and all("image_path=/nonexistent/cat.png does not exist" in p.read_text() for p in logs)


def test_job_folders_are_named_by_the_overrides_that_vary():
    jobs = [["+sweep=fur", "clip=tiny", f"edit={e}", f"seed={s}"] for e in ("golden", "silver") for s in (0, 1)]
    assert run_names(jobs) == ["edit=golden,seed=0", "edit=golden,seed=1", "edit=silver,seed=0", "edit=silver,seed=1"]
    assert run_names([["clip=tiny"]]) == ["run"]
    assert run_names([["image_path=a/b.png"], ["image_path=c/d.png"]]) == ["image_path=a_b.png", "image_path=c_d.png"]
    # result-neutral overrides never name a folder, even when they differ between the jobs
    neutral = [["seed=0", "log_images_freq=5", "trainer.precision=16"], ["seed=1", "log_images_freq=9", "+logger=x"]]
    assert run_names(neutral) == ["seed=0", "seed=1"]


def test_real_concurrent_workers_never_share_a_gpu(tmp_path):
    """Worker processes record the GPU they were given and when they ran; intervals on one GPU never overlap."""
    script = (
        "import json, os, sys, time; start = time.time(); time.sleep(float(sys.argv[2])); "
        "json.dump({'gpu': os.environ['CUDA_VISIBLE_DEVICES'], 'start': start, 'end': time.time()}, "
        "open(sys.argv[1], 'w'))"
    )

    def spawn(job: Job, gpu: str | None) -> subprocess.Popen:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        record = tmp_path / f"{job.index}.json"
        return subprocess.Popen([sys.executable, "-c", script, str(record), str(0.05 * (job.index % 3))], env=env)

    jobs = [Job(i, [], tmp_path) for i in range(7)]
    codes = run_pool(jobs, ["0", "1"], 1, spawn, wait=lambda: __import__("time").sleep(0.01))
    assert codes == dict.fromkeys(range(7), 0)
    records = [yaml.safe_load((tmp_path / f"{i}.json").read_text()) for i in range(7)]
    for gpu in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in records if r["gpu"] == gpu)
        assert len(spans) >= 2  # the GPU was reused
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_a_finished_sweep_gives_its_table_and_gallery(sweep, tmp_path):
    import csv

    from text2live.cli.table import main as table_main

    assert table_main([str(sweep), "--out", str(tmp_path), "--metrics", "clip_score,preservation_psnr"]) in (0, None)
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    # grouped by the swept key other than the seed, each cell over the two seeds
    assert sorted(r["loss.lambda_screen"] for r in rows) == ["0", "1"]
    assert all(r["n"] == "2" for r in rows)
    for row in rows:
        scores = []
        for run in finished(sweep):
            if f"loss.lambda_screen={row['loss.lambda_screen']}" in run.name:
                scores.append(json.loads((run / "metrics.json").read_text())["metrics"]["clip_score"])
        assert float(row["clip_score_mean"]) == pytest.approx(sum(scores) / 2)
    for name in ("table.md", "table.tex", "gallery.png", "gallery.html"):
        assert (tmp_path / name).stat().st_size > 0


def compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir

    from text2live.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_the_default_launcher_is_the_gpu_pool():
    launcher = compose_hydra().hydra.launcher
    assert launcher._target_ == "hydra_plugins.text2live_launcher.gpu_launcher.GpuLauncher"
    assert launcher.gpus is None and launcher.n_jobs == 1


def test_the_slurm_launcher_asks_for_what_one_edit_needs():
    launcher = compose_hydra("hydra/launcher=slurm", "+sweep=fur").hydra.launcher
    assert launcher._target_ == "hydra_plugins.text2live_launcher.cluster.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (1, 1, 1)
    assert (launcher.cpus_per_task, launcher.mem_gb) == (4, 16)
    assert launcher.max_num_timeout > 0  # requeued at the time limit, resumed from the last checkpoint


def test_the_ray_launcher_gives_every_task_one_gpu():
    launcher = compose_hydra("hydra/launcher=ray_gpus").hydra.launcher
    assert launcher._target_ == "hydra_plugins.text2live_launcher.cluster.RayLauncher"
    assert launcher.ray.remote.num_gpus == 1 and launcher.ray.init.address is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-m", "+sweep=fur", "foo=1"], "error: unknown config key 'foo'"),
        (["-m", "+sweep=nope"], "error: In 'train': Could not find 'sweep/nope'"),
        (["--multirun", "seed=0,1", "clip=nope,tiny"], "error: In 'train': Could not find 'clip/nope'"),
    ],
)
def test_a_bad_sweep_command_ends_in_one_line_before_any_job_starts(argv, message, capsys):
    from text2live.cli.common import check_overrides

    with pytest.raises(SystemExit) as exit_info:
        check_overrides("train", argv, "t2l-train")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_good_sweep_command_passes_the_check():
    from text2live.cli.common import check_overrides

    check_overrides("train", ["-m", "+sweep=fur", "edit=golden,silver", "seed=range(0,3)"], "t2l-train")
