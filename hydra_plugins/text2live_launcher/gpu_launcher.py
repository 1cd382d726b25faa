"""``hydra/launcher=gpus``: run a sweep's jobs in parallel on one machine, one GPU per job.

Each job is a ``t2l-train`` process of its own whose ``CUDA_VISIBLE_DEVICES`` names one GPU that no other
running job holds; when a job ends its GPU goes to the next job. Without GPUs, ``n_jobs`` CPU processes run at
once. A job writes its run folder under the sweep folder (``hydra.sweep.dir``), named by the overrides that
vary between the jobs (:func:`text2live.runs.run_names`), and its output to ``launcher.log`` there. Running the sweep's
command again skips finished runs and resumes the others (see ``text2live.training``).

The jobs do not outlive the launcher. On Linux each job gets ``SIGKILL`` when the launcher dies, however it
dies (``prctl(PR_SET_PDEATHSIG)``, see :func:`die_with_launcher`). Each job runs in a process group of its own,
so a terminal's Ctrl-C reaches the launcher alone; the launcher passes a ``SIGINT`` or ``SIGTERM`` on to every
running job once, starts no new job, waits up to ``grace_seconds`` for the jobs to stop (they save a checkpoint
at their current step), kills those still running, and exits with ``128 + signal`` and one line saying that the
same command resumes the sweep. A second signal kills the running jobs at once.
"""

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
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

from text2live.errors import LOWER_MEMORY
from text2live.runs import run_names

log = logging.getLogger("text2live")

LOG_FILE = "launcher.log"


@dataclass
class GpuLauncherConf:
    _target_: str = "hydra_plugins.text2live_launcher.gpu_launcher.GpuLauncher"
    gpus: list | None = None  # GPU ids to use; null: every visible GPU (CUDA_VISIBLE_DEVICES or all)
    n_jobs: int = 1  # parallel jobs when there is no GPU
    poll_seconds: float = 1.0
    grace_seconds: float = 60.0  # after Ctrl-C / SIGTERM: how long running jobs may take to stop before a SIGKILL


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
    stopped: Callable[[], bool] = lambda: False,
) -> dict[int, int]:
    """Run ``jobs`` with at most one job per GPU (or ``n_jobs`` at once without GPUs); returns exit codes by index.

    ``spawn(job, gpu)`` starts a job on ``gpu`` (None: no GPU) and returns a handle whose ``poll()`` gives
    its exit code once it has ended. A GPU is handed to a new job only after the job that held it ended.
    ``stopped()`` is asked on every round: once it is true no new job starts, the pool waits for the running
    ones, and the jobs never started have no exit code.
    """
    slots: list[str | None] = list(gpus) if gpus else [None] * max(1, n_jobs)
    free = list(slots)
    pending = list(jobs)
    running: list[tuple[Job, str | None, Handle]] = []
    codes: dict[int, int] = {}
    while True:
        halted = stopped()
        if not running and (halted or not pending):
            break
        while pending and free and not halted:
            job, slot = pending.pop(0), free.pop(0)
            running.append((job, slot, spawn(job, slot)))
            halted = stopped()
        still = []
        for job, slot, handle in running:
            code = handle.poll()
            if code is None:
                still.append((job, slot, handle))
            else:
                codes[job.index] = code
                free.append(slot)
                on_done(job, slot, code)
        if len(still) == len(running) and still:
            wait()
        running = still
    return codes


class GpuLauncher(Launcher):
    def __init__(
        self, gpus: list | None = None, n_jobs: int = 1, poll_seconds: float = 1.0, grace_seconds: float = 60.0
    ) -> None:
        self.gpus = None if gpus is None else [str(g) for g in gpus]
        self.n_jobs = n_jobs
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
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
        check_main_thread()
        jobs = []
        names = run_names(job_overrides)
        for offset, (overrides, name) in enumerate(zip(job_overrides, names)):
            config = self.job_config(overrides, initial_job_idx + offset)
            HydraConfig.instance().set_config(config)
            run_dir = Path(OmegaConf.select(config, "hydra.sweep.dir")).expanduser().absolute() / name
            jobs.append(Job(initial_job_idx + offset, list(overrides), run_dir, config))
        gpus = self.gpus if self.gpus is not None else visible_gpus()
        where = f"{len(gpus)} GPU(s) ({', '.join(gpus)})" if gpus else f"{max(1, self.n_jobs)} CPU process(es)"
        log.info("launching %d job(s) on %s", len(jobs), where)
        with StopOnSignal(self.grace_seconds) as stop:

            def spawn(job: Job, gpu: str | None) -> subprocess.Popen:
                return stop.track(job, spawn_job(job, gpu))

            def wait() -> None:
                time.sleep(self.poll_seconds)

            codes = run_pool(jobs, gpus, self.n_jobs, spawn, wait, report_job(len(jobs), stop), stopped=stop.stopping)
        if stop.signum is not None:
            # one line, as a failed sweep; 128 + the signal, as a shell reports a process that a signal ended
            print(f"error: {stop.summary(len(jobs), codes)}", file=sys.stderr)
            sys.exit(128 + stop.signum)
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


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def killed_by(code: int) -> str:
    """How a job ended by a signal (exit code ``-signum``) ended, in words; a SIGKILL is often the OOM killer."""
    signum = -code
    words = f"killed by signal {signum}"
    words += f" ({signal_name(signum)})" if signal_name(signum).startswith("SIG") else ""
    if signum != signal.SIGKILL:
        return words
    fewer = "or run fewer jobs at once (hydra.launcher.n_jobs, hydra.launcher.gpus)"
    return f"{words}, often the out-of-memory killer: lower the memory per job with {LOWER_MEMORY}, {fewer}"


class JobFailed(Exception):
    def __init__(self, job: Job, code: int) -> None:
        self.job, self.code = job, code
        ended = f"was {killed_by(code)}" if code < 0 else f"exited with {code}"
        super().__init__(f"{' '.join(job.overrides)} {ended}: see {job.run_dir / LOG_FILE}")


def failed_log(ret: JobReturn) -> str:
    """A failed job's log, and how a signal ended the job if one did: the log of a killed job just stops."""
    where = str(Path(ret.working_dir) / LOG_FILE)
    code = getattr(ret._return_value, "code", 0)
    return f"{where}: {killed_by(code)}" if code < 0 else where


class SweepFailed(Exception):
    def __init__(self, failed: list[JobReturn], total: int) -> None:
        logs = "; ".join(failed_log(r) for r in failed[:3])
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
    return [sys.executable, "-m", "text2live.cli.train", *job.overrides, f"run_dir={quoted(str(job.run_dir))}"]


def check_main_thread() -> None:
    """Jobs are started from the main thread only: a job's parent-death signal fires when the *thread* that
    started it ends, and only the main thread receives the signals that the launcher passes on to its jobs."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the gpus launcher must run in the main thread (it starts the jobs and takes signals)")


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # looked up here, in the launcher: a forked child should run as little as possible
_PDEATHSIG_ARGS = tuple(ctypes.c_ulong(v) for v in (signal.SIGKILL, 0, 0, 0))  # prctl's arguments are longs


def die_with_launcher(launcher_pid: int) -> Callable[[], None] | None:
    """A ``preexec_fn``: the job gets SIGKILL when the launcher dies (Linux); None where that is not available.

    The signal is tied to the thread that forks (:func:`check_main_thread`). A launcher that dies between the
    fork and the ``prctl`` sends nothing: the job then sees that its parent changed and kills itself.
    """
    if _PRCTL is None:
        return None

    def preexec() -> None:
        if _PRCTL(PR_SET_PDEATHSIG, *_PDEATHSIG_ARGS) == 0 and os.getppid() != launcher_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def spawn_job(job: Job, gpu: str | None) -> subprocess.Popen:
    """Start ``job`` on ``gpu``: its own process group (signals reach it through the launcher), its output in
    its log, and on Linux a SIGKILL for it when the launcher dies."""
    check_main_thread()
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with open(job.run_dir / LOG_FILE, "ab") as out:
        return subprocess.Popen(
            job_command(job),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_launcher(os.getpid()),
        )


class StopOnSignal:
    """While the pool runs: a SIGINT or SIGTERM given to the launcher stops the sweep.

    The first signal is passed on to every running job (and to a job being started as it came), and no new job
    starts; the jobs still running ``grace_seconds`` later are killed (SIGKILL to their process group), as they
    are at once on a second signal. Leaving the ``with`` block restores the previous handlers and kills any job
    still running (the pool raised).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.signum: int | None = None
        self.deadline = float("inf")
        self.forced = False  # a second signal: kill, do not wait
        self.announced = False
        self.procs: dict[int, subprocess.Popen] = {}  # job index -> its process
        self.signalled: set[int] = set()  # pids of the jobs the signal was passed on to
        self.late: set[int] = set()  # pids of the jobs killed for not stopping within grace_seconds
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopOnSignal":
        for signum in self.SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored (nohup, a script's `&`): stays ignored
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        leftover = self.running()
        kill(leftover)
        for proc in leftover:
            proc.wait()

    def running(self) -> list[subprocess.Popen]:
        return [proc for proc in self.procs.values() if proc.returncode is None]

    def handle(self, signum: int, frame: object) -> None:
        # runs in the main thread between two bytecodes: signals and flags only, no logging (re-entrant I/O)
        if self.signum is None:
            self.signum = signum
            self.deadline = time.monotonic() + self.grace_seconds
            for proc in self.running():
                self.send(proc)
        else:
            self.forced = True
            kill(self.running())

    def send(self, proc: subprocess.Popen) -> None:
        if proc.pid not in self.signalled:
            self.signalled.add(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, self.signum)

    def track(self, job: Job, proc: subprocess.Popen) -> subprocess.Popen:
        """Record a job just started; the signal reaches it too if it came while the job was being started."""
        self.procs[job.index] = proc
        if self.signum is not None:
            self.send(proc)
            if self.forced:
                kill([proc])
        return proc

    def stopping(self) -> bool:
        """Whether a signal came; asked by the pool on every round, it also kills the jobs past the deadline."""
        if self.signum is None:
            return False
        running = self.running()
        if not self.announced:
            self.announced = True
            log.warning(
                "%s: stopping %d running job(s), waiting up to %g s for them to save a checkpoint; no new job starts",
                signal_name(self.signum),
                len(running),
                self.grace_seconds,
            )
        if running and not self.forced and time.monotonic() >= self.deadline:
            log.warning("killing %d job(s) still running %g s after the signal", len(running), self.grace_seconds)
            self.late.update(proc.pid for proc in running)
            self.forced = True
            kill(running)
        return True

    def ended(self, job: Job) -> str | None:
        """How a job that the signal reached ended, for its report line; None if it ended before the signal."""
        proc = self.procs.get(job.index)
        if proc is None or proc.pid not in self.signalled:
            return None
        if proc.pid in self.late:
            return f"killed {self.grace_seconds:g} s after {signal_name(self.signum)}"
        return killed_by(proc.returncode) if proc.returncode < 0 else f"exit {proc.returncode}"

    def summary(self, total: int, codes: dict[int, int]) -> str:
        """The one line that ends an interrupted sweep."""
        stopped = [proc for proc in self.procs.values() if proc.pid in self.signalled]
        late = f", {len(self.late)} of them killed after {self.grace_seconds:g} s" if self.late else ""
        unstarted = total - len(self.procs)
        not_started = f"; {unstarted} not started" if unstarted else ""
        failed = sum(1 for i, proc in self.procs.items() if proc.pid not in self.signalled and codes.get(i))
        failed = f"; {failed} failed before it (see the FAILED lines above)" if failed else ""
        return (
            f"the sweep was interrupted by {signal_name(self.signum)} ({len(stopped)} running job(s) stopped{late}"
            f"{not_started}{failed}): run the same command again to resume it"
        )


def kill(procs: Sequence[subprocess.Popen]) -> None:
    """SIGKILL to each job's process group: the job and whatever it started."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)


def note_in_log(job: Job, line: str) -> None:
    """Append the launcher's word on how ``job`` ended to its log (a killed job's own output just stops)."""
    try:
        with open(job.run_dir / LOG_FILE, "a") as out:
            out.write(f"[launcher] {line}\n")
    except OSError:
        pass


def report_job(total: int, stop: StopOnSignal | None = None) -> Callable[[Job, str | None, int], None]:
    done = [0]

    def report(job: Job, gpu: str | None, code: int) -> None:
        done[0] += 1
        where = f" on GPU {gpu}" if gpu is not None else ""
        job_log = job.run_dir / LOG_FILE
        stopped = stop.ended(job) if stop is not None else None
        ended = stopped or (killed_by(code) if code < 0 else f"exit {code}")
        if stopped:
            state = f"stopped ({stopped}, see {job_log})"
        elif code == 0:
            state = "done"
        else:
            state = f"FAILED ({ended}, see {job_log})"
        if code < 0:
            note_in_log(job, f"the job was {ended}")
        log.info("[%d/%d] %s%s: %s", done[0], total, job.run_dir.name, where, state)

    return report
