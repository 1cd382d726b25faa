"""``hydra/launcher=gpus``: run a sweep's jobs in parallel on one machine, one GPU per job.

Each job is a ``t2l-train`` process of its own whose ``CUDA_VISIBLE_DEVICES`` names one GPU that no other
running job holds; when a job ends its GPU goes to the next job. Without GPUs, ``n_jobs`` CPU processes run at
once. A job writes its run folder under the sweep folder (``hydra.sweep.dir``), named by the overrides that
vary between the jobs (:func:`job_names`), and its output to ``launcher.log`` there. Running the sweep's
command again skips finished runs and resumes the others (see ``text2live.train``).
"""

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("text2live")

LOG_FILE = "launcher.log"


@dataclass
class GpuLauncherConf:
    _target_: str = "hydra_plugins.text2live_launcher.gpu_launcher.GpuLauncher"
    gpus: list | None = None  # GPU ids to use; null: every visible GPU (CUDA_VISIBLE_DEVICES or all)
    n_jobs: int = 1  # parallel jobs when there is no GPU
    poll_seconds: float = 1.0


ConfigStore.instance().store(group="hydra/launcher", name="gpus", node=GpuLauncherConf, provider="text2live")


class Handle(Protocol):
    def poll(self) -> int | None: ...


@dataclass
class Job:
    index: int
    overrides: list[str]
    run_dir: Path
    config: DictConfig | None = None


def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device CUDA reports."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA means no GPUs
        return []


def run_pool(
    jobs: Sequence[Job],
    gpus: Sequence[str],
    n_jobs: int,
    spawn: Callable[[Job, str | None], Handle],
    wait: Callable[[], None] = lambda: time.sleep(1.0),
    on_done: Callable[[Job, str | None, int], None] = lambda job, gpu, code: None,
) -> dict[int, int]:
    """Run ``jobs`` with at most one job per GPU (or ``n_jobs`` at once without GPUs); returns exit codes by index.

    ``spawn(job, gpu)`` starts a job on ``gpu`` (None: no GPU) and returns a handle whose ``poll()`` gives
    its exit code once it has ended. A GPU is handed to a new job only after the job that held it ended.
    """
    slots: list[str | None] = list(gpus) if gpus else [None] * max(1, n_jobs)
    free = list(slots)
    pending = list(jobs)
    running: list[tuple[Job, str | None, Handle]] = []
    codes: dict[int, int] = {}
    while pending or running:
        while pending and free:
            job, slot = pending.pop(0), free.pop(0)
            running.append((job, slot, spawn(job, slot)))
        still = []
        for job, slot, handle in running:
            code = handle.poll()
            if code is None:
                still.append((job, slot, handle))
            else:
                codes[job.index] = code
                free.append(slot)
                on_done(job, slot, code)
        if len(still) == len(running) and (still or pending):
            wait()
        running = still
    return codes


class GpuLauncher(Launcher):
    def __init__(self, gpus: list | None = None, n_jobs: int = 1, poll_seconds: float = 1.0) -> None:
        self.gpus = None if gpus is None else [str(g) for g in gpus]
        self.n_jobs = n_jobs
        self.poll_seconds = poll_seconds
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def job_config(self, overrides: Sequence[str], index: int) -> DictConfig:
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = str(index)
            config.hydra.job.num = index
        return config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = []
        names = job_names(job_overrides)
        for offset, (overrides, name) in enumerate(zip(job_overrides, names)):
            config = self.job_config(overrides, initial_job_idx + offset)
            HydraConfig.instance().set_config(config)
            run_dir = Path(OmegaConf.select(config, "hydra.sweep.dir")) / name
            jobs.append(Job(initial_job_idx + offset, list(overrides), run_dir, config))
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        where = f"{len(gpus)} GPU(s) ({', '.join(gpus)})" if gpus else f"{max(1, self.n_jobs)} CPU process(es)"
        log.info("launching %d job(s) on %s", len(jobs), where)
        codes = run_pool(
            jobs, gpus, self.n_jobs, spawn_job, lambda: time.sleep(self.poll_seconds), report_job(len(jobs))
        )
        returns = []
        for job in jobs:
            code = codes[job.index]
            status = JobStatus.COMPLETED if code == 0 else JobStatus.FAILED
            value = job.run_dir if code == 0 else JobFailed(job, code)
            returns.append(
                JobReturn(
                    overrides=job.overrides,
                    cfg=job.config,
                    hydra_cfg=job.config,
                    working_dir=str(job.run_dir),
                    task_name=HydraConfig.get().job.name,
                    status=status,
                    _return_value=value,
                )
            )
        failed = [r for r in returns if r.status is JobStatus.FAILED]
        if failed:
            # one sentence and exit 2, as every text2live error; a traceback would only show this launcher
            print(f"error: {SweepFailed(failed, len(returns))}", file=sys.stderr)
            sys.exit(2)
        return returns


def job_names(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """Run-folder names: the overrides whose values differ between the jobs (``edit=golden,seed=0``).

    Overrides shared by every job (``clip=vit_b16`` given for the whole sweep) stay out of the names, so they
    remain short and comparable in TensorBoard; a single job is named ``run``.
    """
    parsed = [dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides) for overrides in job_overrides]
    keys: list[str] = []
    for overrides in parsed:
        keys += [k for k in overrides if k not in keys]
    varying = [k for k in keys if len({overrides.get(k) for overrides in parsed}) > 1]
    names = [",".join(f"{k.lstrip('+~')}={o.get(k, '')}" for k in varying if k in o) for o in parsed]
    return [name.replace("/", "_") or "run" for name in names]


class JobFailed(Exception):
    def __init__(self, job: Job, code: int) -> None:
        super().__init__(f"{' '.join(job.overrides)} exited with {code}: see {job.run_dir / LOG_FILE}")


class SweepFailed(Exception):
    def __init__(self, failed: list[JobReturn], total: int) -> None:
        logs = "; ".join(str(Path(r.working_dir) / LOG_FILE) for r in failed[:3])
        more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
        others = "" if len(failed) == total else "; the others finished"
        super().__init__(
            f"{len(failed)} of {total} jobs failed ({logs}{more}){others}: fix the cause and run the same command "
            "again to finish the sweep"
        )


def quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value (run folders hold ``=`` and ``,``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def job_command(job: Job) -> list[str]:
    return [sys.executable, "-m", "text2live.train", *job.overrides, f"run_dir={quoted(str(job.run_dir))}"]


def spawn_job(job: Job, gpu: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with open(job.run_dir / LOG_FILE, "ab") as out:
        return subprocess.Popen(job_command(job), stdout=out, stderr=subprocess.STDOUT, env=env)


def report_job(total: int) -> Callable[[Job, str | None, int], None]:
    done = [0]

    def report(job: Job, gpu: str | None, code: int) -> None:
        done[0] += 1
        where = f" on GPU {gpu}" if gpu is not None else ""
        state = "done" if code == 0 else f"FAILED (exit {code}, see {job.run_dir / LOG_FILE})"
        log.info("[%d/%d] %s%s: %s", done[0], total, job.run_dir.name, where, state)

    return report
