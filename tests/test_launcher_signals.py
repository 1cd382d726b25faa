"""The sweep launcher and signals: its jobs die with it, a SIGTERM stops them, a job killed by a signal is named.

Real launcher processes (the t2l-train CLI with ``-m``); the jobs are real training runs where what is tested is
only that they exist, and small fake job commands (``job_command`` patched in the launcher) where their reaction
to a signal is. Every process started here is killed in a ``finally``, whatever the test's outcome.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TINY

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals and /proc: Linux")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

# The launcher with its jobs replaced by the Python script given as its first argument (run_dir, *overrides).
# Hydra's plugin scan runs the launcher's module again: patched after it, or the patch is lost.
FAKE_JOBS_LAUNCHER = """
import sys
from hydra.core.plugins import Plugins
Plugins.instance()
from hydra_plugins.text2live_launcher import gpu_launcher
script = sys.argv.pop(1)
gpu_launcher.job_command = lambda job: [sys.executable, "-c", script, str(job.run_dir), *job.overrides]
from text2live.cli.train import main
main()
"""
FAKE_SWEEP = ["-m", "seed=0,1", "hydra.launcher.n_jobs=2", "hydra.launcher.poll_seconds=0.1"]


# processes, read from /proc -------------------------------------------------------------------------------


def stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process; None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[1]), fields[0], int(fields[19])


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):  # needs CONFIG_PROC_CHILDREN
        found += [int(p) for p in task.read_text().split()]
    if found or Path(f"/proc/{pid}/task/{pid}/children").exists():
        return found
    every = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [child for child in every if (info := stat(child)) and info[0] == pid]


def descendants(pid: int) -> dict[int, int]:
    """The processes below ``pid``, recursively, with their start times (so a reused pid is not mistaken)."""
    found: dict[int, int] = {}
    todo = children(pid)
    while todo:
        child = todo.pop()
        if child not in found and (info := stat(child)):
            found[child] = info[2]
            todo += children(child)
    return found


def alive(pid: int, start: int) -> bool:
    """The process ``pid`` that started at ``start`` runs (a zombie left to an init that never reaps is gone)."""
    info = stat(pid)
    return info is not None and info[1] not in "ZX" and info[2] == start


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(condition: Callable[[], object], timeout: float, what: str, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def default_signals() -> None:
    """SIGINT and SIGTERM as a terminal gives them: pytest may run with them ignored (started in the background),
    and a launcher that inherits an ignored signal keeps ignoring it, as any Python program does."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@contextmanager
def launcher(args: list[str], folder: Path) -> Iterator[tuple[subprocess.Popen, dict[int, int]]]:
    """A launcher process (``python <args>``, output in ``folder``) and a dict to add its jobs to (pid: start).

    On the way out the launcher and every process below it or added to the dict are killed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=err, env=ENV, preexec_fn=default_signals)
    known: dict[int, int] = {}
    try:
        yield proc, known
    finally:
        known.update(descendants(proc.pid))
        proc.kill()
        proc.wait()
        for pid, start in known.items():
            if alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def error_lines(folder: Path) -> list[str]:
    return [line for line in (folder / "stderr").read_text().splitlines() if line.startswith("error:")]


def pids_written(runs: list[Path]) -> dict[int, int] | None:
    """The pids the fake jobs wrote into their run folders, once all have."""
    files = [run / "pid" for run in runs]
    if not all(f.is_file() for f in files):
        return None
    pids = [int(f.read_text()) for f in files]
    return {pid: info[2] for pid in pids if (info := stat(pid))}


# the tests ------------------------------------------------------------------------------------------------


def test_a_sweeps_jobs_die_with_its_launcher_killed_by_sigkill(tmp_path, small_cat):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith(("steps=", "log_images_freq=", "checkpoint_every="))]
    args = ["-m", "text2live.cli.train", "-m", "seed=0,1", "hydra.launcher.n_jobs=2", "name=x"]
    args += [f"hydra.sweep.dir={sweep}"]
    args += [f"image_path={small_cat}", "comp_text=golden cat", "src_text=cat", "screen_text=golden"]
    args += [*tiny, "steps=500", "evaluate=false"]
    with launcher(args, tmp_path / "launcher") as (proc, known):

        def two_jobs() -> dict[int, int] | None:
            assert proc.poll() is None, (tmp_path / "launcher" / "stderr").read_text()[-3000:]
            jobs = [pid for pid in children(proc.pid) if "text2live.cli.train" in cmdline(pid)]
            return descendants(proc.pid) if len(jobs) == 2 else None

        known.update(wait_for(two_jobs, 120, "the sweep's two jobs"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        end = time.monotonic() + 5
        while time.monotonic() < end and any(alive(pid, start) for pid, start in known.items()):
            time.sleep(0.05)
        orphans = [f"{pid}: {cmdline(pid)[:100]}" for pid, start in known.items() if alive(pid, start)]
        assert not orphans, f"jobs outlived their launcher by 5 s: {orphans}"


# A job that stops cleanly on SIGTERM, noting the signal in its run folder.
STOPPABLE_JOB = """
import os, signal, sys, time
from pathlib import Path
run = Path(sys.argv[1])
def on_term(signum, frame):
    (run / "signal").write_text(str(signum))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(run / "pid.tmp").write_text(str(os.getpid()))
os.replace(run / "pid.tmp", run / "pid")
while True:
    time.sleep(0.05)
"""


def test_sigterm_to_the_launcher_reaches_the_jobs_and_ends_the_sweep_in_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-c", FAKE_JOBS_LAUNCHER, STOPPABLE_JOB, *FAKE_SWEEP, f"hydra.sweep.dir={sweep}"]
    with launcher(args, tmp_path / "launcher") as (proc, known):
        runs = [sweep / "seed=0", sweep / "seed=1"]

        def started() -> dict[int, int] | None:
            assert proc.poll() is None, (tmp_path / "launcher" / "stderr").read_text()[-3000:]
            return pids_written(runs)

        known.update(wait_for(started, 120, "both jobs to start"))
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        for run in runs:
            assert (run / "signal").read_text() == str(int(signal.SIGTERM)), f"{run.name} did not get the SIGTERM"
        assert not any(alive(pid, start) for pid, start in known.items()), "a job outlived the interrupted sweep"
    assert code == 128 + signal.SIGTERM
    (line,) = error_lines(tmp_path / "launcher")
    assert "interrupted by SIGTERM (2 running job(s) stopped)" in line and "run the same command again" in line


def test_a_job_killed_by_sigkill_is_named_with_its_signal_and_log(tmp_path):
    sweep = tmp_path / "sweep"
    job = "import os, sys\nif 'seed=1' in sys.argv: os.kill(os.getpid(), 9)"
    args = ["-c", FAKE_JOBS_LAUNCHER, job, *FAKE_SWEEP, f"hydra.sweep.dir={sweep}"]
    with launcher(args, tmp_path / "launcher") as (proc, _):
        code = proc.wait(timeout=120)
    assert code == 2
    (line,) = error_lines(tmp_path / "launcher")
    assert "1 of 2 jobs failed" in line
    assert f"{sweep / 'seed=1' / 'launcher.log'}: killed by signal 9 (SIGKILL), often the out-of-memory killer" in line
    assert "clip.checkpoint_views=true" in line and "hydra.launcher.n_jobs" in line  # what lowers the memory
    job_log = (sweep / "seed=1" / "launcher.log").read_text()
    assert "killed by signal 9 (SIGKILL)" in job_log and "clip.checkpoint_views=true" in job_log


# the grace time, in-process: the launcher's pool and signal handling, the signals given by hand -------------

STUBBORN_JOB = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
)


@pytest.mark.parametrize("second_signal", [False, True], ids=["grace-time-over", "second-signal"])
def test_a_job_that_does_not_stop_is_killed_after_the_grace_time_or_at_a_second_signal(
    tmp_path, monkeypatch, second_signal
):
    from hydra_plugins.text2live_launcher import gpu_launcher as gl

    monkeypatch.setattr(gl, "job_command", lambda job: [sys.executable, "-c", STUBBORN_JOB])
    stop = gl.StopOnSignal(grace_seconds=60 if second_signal else 0.5)  # not entered: no handler is installed
    jobs = [gl.Job(i, [f"seed={i}"], tmp_path / f"seed={i}") for i in range(2)]
    log = jobs[0].run_dir / gl.LOG_FILE
    signalled: list[float] = []
    began = time.monotonic()

    def wait() -> None:
        if not signalled and "ready" in log.read_text():  # SIGTERM is ignored from now on
            signalled.append(time.monotonic())
            stop.handle(signal.SIGTERM, None)
            if second_signal:
                stop.handle(signal.SIGTERM, None)
        assert signalled or time.monotonic() - began < 60, "the job did not start"
        assert not signalled or time.monotonic() - signalled[0] < 20, "the job was not killed"
        time.sleep(0.05)

    try:
        codes = gl.run_pool(
            jobs,
            [],
            1,
            lambda job, gpu: stop.track(job, gl.spawn_job(job, gpu)),
            wait,
            gl.report_job(2, stop),
            stopped=stop.stopping,
        )
    finally:
        for proc in stop.running():
            gl.kill([proc])
            proc.wait()
    assert codes == {0: -signal.SIGKILL}  # the second job never started
    took = time.monotonic() - signalled[0]
    assert took < 10 if second_signal else 0.5 <= took < 10
    summary = stop.summary(2, codes)
    assert summary.startswith("the sweep was interrupted by SIGTERM (1 running job(s) stopped")
    assert "1 not started" in summary and "run the same command again to resume it" in summary
    if not second_signal:
        assert "1 of them killed after 0.5 s" in summary
        assert "[launcher] the job was killed 0.5 s after SIGTERM" in log.read_text()


def test_jobs_are_started_from_the_main_thread_only(tmp_path, monkeypatch):
    """A job's parent-death signal fires when the thread that started it ends: another thread may not start one."""
    import threading

    from hydra_plugins.text2live_launcher import gpu_launcher as gl

    monkeypatch.setattr(gl, "job_command", lambda job: [sys.executable, "-c", "pass"])
    errors: list[BaseException] = []

    def start() -> None:
        try:
            gl.spawn_job(gl.Job(0, [], tmp_path), None).wait()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert gl.spawn_job(gl.Job(0, [], tmp_path), None).wait() == 0
