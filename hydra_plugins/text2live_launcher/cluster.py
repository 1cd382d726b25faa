"""``hydra/launcher=slurm`` and ``hydra/launcher=ray_gpus``: a sweep's jobs on a SLURM or Ray cluster.

Both launchers place the jobs as the local ``gpus`` launcher does: each job's run folder is
``<sweep folder>/<run name>`` (:func:`text2live.runs.run_names`), made absolute where the command runs, so a
worker that starts elsewhere writes where the command said. Jobs whose folder holds ``DONE`` are not submitted
again. A job that fails ends the sweep, once the others have finished, with one line naming the failed jobs,
why they failed and their logs; the same command then finishes the sweep.

SLURM goes through submitit (hydra-submitit-launcher): while jobs wait in the queue the launcher says why
(``squeue``'s reason); a job cancelled with ``scancel``, timed out or pre-empted is named in the final line.
Jobs that reach their time limit are requeued by submitit (``max_num_timeout`` times) and resume from their
last checkpoint. Ray goes through the cluster at ``ray.init.address`` (``auto``: the one started with
``ray start``) or a local one: a job's input error is not retried; a crashed worker is (``ray.remote.max_retries``).
"""

import contextlib
import copy
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.text2live_launcher.gpu_launcher import quoted
from text2live.errors import JobError
from text2live.runs import DONE_FILE, run_names

log = logging.getLogger("text2live")

TRAIN_LOG = "train.log"


@dataclass
class PlannedJob:
    index: int
    overrides: list[str]  # the sweep's overrides of this job
    run_dir: Path  # absolute
    config: DictConfig  # the job's config, with its absolute sweep folder and run name

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def finished(self) -> bool:
        return (self.run_dir / DONE_FILE).is_file()


def plan_jobs(
    hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> list[PlannedJob]:
    """Every job with its absolute run folder; the folder is fixed in its config (``hydra.sweep.dir/subdir``)."""
    sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
    jobs = []
    for offset, (overrides, name) in enumerate(zip(job_overrides, run_names(job_overrides))):
        placed = [*overrides, f"hydra.sweep.dir={quoted(str(sweep_dir))}", f"hydra.sweep.subdir={quoted(name)}"]
        job_config = hydra_context.config_loader.load_sweep_config(config, placed)
        index = initial_job_idx + offset
        with open_dict(job_config):
            job_config.hydra.job.num = index
            job_config.hydra.job.id = f"job_id_for_{index}"
        jobs.append(PlannedJob(index, list(overrides), sweep_dir / name, job_config))
    return jobs


def finished_return(job: PlannedJob) -> JobReturn:
    return JobReturn(
        overrides=job.overrides,
        cfg=job.config,
        hydra_cfg=job.config,
        working_dir=str(job.run_dir),
        task_name=job.config.hydra.job.name,
        status=JobStatus.COMPLETED,
        _return_value=job.run_dir,
    )


def failed_return(job: PlannedJob, reason: str) -> JobReturn:
    ret = finished_return(job)
    ret.status = JobStatus.FAILED
    ret._return_value = JobError(reason)
    return ret


def error_line(run_dir: Path) -> str | None:
    """The last ``error:`` line of a run's ``train.log`` (without the log's time prefix), if any."""
    path = run_dir / TRAIN_LOG
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        _, found, message = line.partition("error: ")
        if found:
            return f"error: {message}"
    return None


def reason_of(ret: JobReturn) -> str:
    value = ret._return_value
    if isinstance(value, JobError):
        return value.message
    return f"{type(value).__name__}: {value}".splitlines()[0]


def end_sweep(jobs: Sequence[PlannedJob], returns: Sequence[JobReturn]) -> Sequence[JobReturn]:
    """Return the sweep's results, or end it with one line naming every failed job and its log."""
    failed = [(job, ret) for job, ret in zip(jobs, returns) if ret.status is not JobStatus.COMPLETED]
    if not failed:
        return returns
    named = "; ".join(f"{job.name}: {reason_of(ret)} (see {job.run_dir / TRAIN_LOG})" for job, ret in failed[:3])
    more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
    others = "" if len(failed) == len(jobs) else "; the others finished"
    print(
        f"error: {len(failed)} of {len(jobs)} jobs failed ({named}{more}){others}: run the same command again to "
        "finish the sweep (once the cause is fixed)",
        file=sys.stderr,
    )
    sys.exit(2)


def split_finished(jobs: Sequence[PlannedJob]) -> tuple[list[PlannedJob], list[PlannedJob]]:
    finished = [job for job in jobs if job.finished]
    if finished:
        log.info("%d of %d job(s) already finished (DONE): not submitted again", len(finished), len(jobs))
    return [job for job in jobs if not job.finished], finished


def run_in_worker(
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict,
    cwd: str | None = None,
) -> JobReturn:
    """One job in a worker process (a SLURM task or a Ray worker), in the folder its config names.

    ``cwd``: the folder the sweep's command ran in; relative paths of the config (``image_path=cat.png``) are
    read from there when the worker can see it (a shared file system), as they would be by a local job.
    """
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(config)
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


class _ClusterLauncher(Launcher):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[PlannedJob]:
        setup_globals()
        jobs = plan_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx)
        if jobs:
            jobs[0].run_dir.parent.mkdir(parents=True, exist_ok=True)
            log.info("sweep folder: %s (%d job(s))", jobs[0].run_dir.parent, len(jobs))
        return jobs


# SLURM ------------------------------------------------------------------------------------------------------

# squeue's pending reasons that mean "the request does not fit", with what to do about them.
RESOURCE_REASONS = {
    "Resources": "waiting for free resources",
    "Priority": "waiting behind jobs of higher priority",
    "ReqNodeNotAvail": "no node can give what each job asks for",
    "PartitionConfig": "the partition can never give what each job asks for",
    "BadConstraints": "no node can ever give what each job asks for",
    "PartitionNodeLimit": "the partition can never give what each job asks for",
    "PartitionTimeLimit": "the partition's time limit is below timeout_min",
}
# Reasons that no amount of waiting changes: the launcher cancels the jobs and says what to lower.
NEVER_SCHEDULED = ("PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit")
RESOURCE_KEYS = ("cpus_per_task", "mem_gb", "gpus_per_node", "partition")


class SlurmLauncher(_ClusterLauncher):
    """Each job a task of one SLURM job array, submitted with submitit."""

    def __init__(self, poll_seconds: float = 5.0, **params: Any) -> None:
        self.poll_seconds = poll_seconds
        self.params = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in params.items()}

    def __call__(self, config: DictConfig, singleton_state: dict) -> JobReturn:
        """The job, in its SLURM task (submitit pickles the launcher and calls it there)."""
        import submitit

        config = copy.deepcopy(config)  # a requeued job gets the config the first attempt ran with (read-only)
        with read_write(config), open_dict(config):
            config.hydra.job.id = submitit.JobEnvironment().job_id
        return run_in_worker(self.hydra_context, config, self.task_function, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """At the time limit, submitit requeues the same job; it resumes from its last checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def executor(self, folder: Path):
        import submitit

        params = dict(self.params)
        params.pop("submitit_folder", None)
        timeouts = params.pop("max_num_timeout", 0)
        executor = submitit.AutoExecutor(
            folder=str(folder / ".submitit" / "%j"), cluster="slurm", slurm_max_num_timeout=timeouts
        )
        common = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name"}
        common |= {"stderr_to_stdout"}
        executor.update_parameters(
            **{key if key in common else f"slurm_{key}": value for key, value in params.items() if value is not None}
        )
        return executor

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        jobs = self.plan(job_overrides, initial_job_idx)
        todo, _ = split_finished(jobs)
        results: dict[int, JobReturn] = {job.index: finished_return(job) for job in jobs if job.finished}
        if todo:
            executor = self.executor(todo[0].run_dir.parent)
            state = Singleton.get_state()
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # sbatch's own message is part of the error below
                    submitted = executor.map_array(self, [job.config for job in todo], [state] * len(todo))
            except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError) as exc:  # by sbatch
                reason = " ".join(str(exc).split())
                keys = ", ".join(f"hydra.launcher.{key}" for key in RESOURCE_KEYS)
                print(f"error: SLURM refused the jobs ({reason[:300]}): check {keys}", file=sys.stderr)
                sys.exit(2)
            log.info("submitted %d job(s) to SLURM as array %s", len(todo), submitted[0].job_id.split("_")[0])
            self.wait(submitted)
            states = slurm_states([handle.job_id for handle in submitted])
            for job, handle in zip(todo, submitted):
                results[job.index] = self.result(job, handle, states[handle.job_id])
        return end_sweep(jobs, [results[job.index] for job in jobs])

    def wait(self, handles: list) -> None:
        """Wait for every task, saying why tasks wait in the queue whenever that changes."""
        said = None
        arrays = sorted({handle.job_id.split("_")[0] for handle in handles})
        asked = ", ".join(f"{key}={self.params[key]}" for key in RESOURCE_KEYS if self.params.get(key) is not None)
        while not all(slurm_finished(state) for state in slurm_states([h.job_id for h in handles]).values()):
            reasons = pending_reasons(arrays)
            if reasons and reasons != said:
                words = ", ".join(f"{n} {RESOURCE_REASONS.get(r, r)} ({r})" for r, n in sorted(reasons.items()))
                log.info("pending in the SLURM queue: %s; each job asks for %s (hydra.launcher.<key>=)", words, asked)
            if reasons and all(reason in NEVER_SCHEDULED for reason in reasons) and reasons == said:
                subprocess.run(["scancel", *arrays], capture_output=True, timeout=60)
                reason = "/".join(sorted(reasons))
                print(
                    f"error: SLURM can never run these jobs ({reason}: {RESOURCE_REASONS[sorted(reasons)[0]]}); each "
                    f"asks for {asked}: lower them with hydra.launcher.<key>=... (the jobs were cancelled)",
                    file=sys.stderr,
                )
                sys.exit(2)
            said = reasons or said
            time.sleep(self.poll_seconds)

    def result(self, job: PlannedJob, handle, state: str) -> JobReturn:
        if state.startswith("CANCELLED"):
            return failed_return(job, f"was cancelled ({state}); its checkpoint is kept")
        limit = self.params.get("timeout_min")
        too_long = f"reached its time limit ({limit} min, hydra.launcher.timeout_min) more often than it is requeued"
        if state == "TIMEOUT":
            return failed_return(job, too_long)
        if state in ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY"):
            return failed_return(job, f"ended with SLURM state {state}")
        try:
            return handle.results()[0]
        except Exception as exc:  # noqa: BLE001 - submitit wraps the job's failure; the run's log says why
            if "timed-out too many times" in str(exc):
                return failed_return(job, f"{too_long} (hydra.launcher.max_num_timeout); its checkpoint is kept")
            line = error_line(job.run_dir)
            if line:
                return failed_return(job, line)
            text = str(exc).strip().splitlines()
            return failed_return(job, f"failed ({text[-1] if text else type(exc).__name__}; SLURM state {state})")


# SLURM job states after which a job may still run (a requeued job goes back to PENDING).
ACTIVE_STATES = {
    *("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING", "RESIZING"),
    *("SUSPENDED", "SIGNALING", "STAGE_OUT", "UNKNOWN", "READY"),
}


def slurm_finished(state: str) -> bool:
    """Whether a job in SLURM ``state`` has ended for good (a requeued one has not)."""
    return (state.split() or ["UNKNOWN"])[0] not in ACTIVE_STATES


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """The current state of each job (``12_0`` or ``16``), read from sacct; UNKNOWN until sacct lists it.

    submitit's own view of a job's state stops following a job once it looked finished, which a requeued job
    only seemed to be; sacct's last record of a job is its current state.
    """
    states = dict.fromkeys(job_ids, "UNKNOWN")
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return states
    for line in out.splitlines():
        job_id, _, state = line.partition("|")
        if job_id in states:
            states[job_id] = state
    return states


def pending_reasons(array_ids: list[str]) -> dict[str, int]:
    """How many tasks of the arrays wait in the queue, by squeue's reason."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "-t", "PENDING", "-o", "%r", "-j", ",".join(array_ids)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    reasons: dict[str, int] = {}
    for reason in out.split():
        if reason != "None":  # not yet considered by the scheduler
            reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


# Ray --------------------------------------------------------------------------------------------------------


class RayLauncher(_ClusterLauncher):
    """Each job a Ray task (``ray.remote`` options from ``ray.remote``), on the cluster at ``ray.init.address``."""

    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray

    def init_options(self) -> dict:
        options = OmegaConf.to_container(self.ray_cfg.get("init", {}), resolve=True) or {}
        if options.get("address"):
            # joining a running cluster: its object store is already sized, and Ray refuses the option
            options.pop("object_store_memory", None)
        return {k: v for k, v in options.items() if v is not None}

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        jobs = self.plan(job_overrides, initial_job_idx)
        todo, _ = split_finished(jobs)
        results: dict[int, JobReturn] = {job.index: finished_return(job) for job in jobs if job.finished}
        if todo:
            if not ray.is_initialized():
                ray.init(**self.init_options())
            remote_options = OmegaConf.to_container(self.ray_cfg.get("remote", {}), resolve=True) or {}
            task = ray.remote(**remote_options)(run_in_worker) if remote_options else ray.remote(run_in_worker)
            state = Singleton.get_state()
            cwd = os.getcwd()
            refs = [task.remote(self.hydra_context, job.config, self.task_function, state, cwd) for job in todo]
            log.info("submitted %d job(s) to Ray", len(todo))
            for job, ref in zip(todo, refs):
                try:
                    results[job.index] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a crashed worker, retried by Ray as configured
                    text = str(exc).strip().splitlines()
                    retries = remote_options.get("max_retries", 3)
                    what = f"{type(exc).__name__}: {text[0] if text else ''}"
                    results[job.index] = failed_return(job, f"its worker crashed ({what}) after {retries} retries")
        return end_sweep(jobs, [results[job.index] for job in jobs])
