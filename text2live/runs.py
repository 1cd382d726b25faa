"""Run folders: what they hold, how a finished one is recognised, and how a resumed one is checked."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from text2live import files
from text2live.errors import CheckpointError, ConfigError, InputError

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
DONE_FILE = "DONE"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREVIOUS_CHECKPOINT = "previous.ckpt"
FINAL_CHECKPOINT = "final.ckpt"
LOCK_FILE = ".lock"
# What a run writes into its folder (removed by ``restart=true``; anything else in the folder is left alone).
RUN_OUTPUTS = (
    *(CHECKPOINT_DIR, "steps", "tb", "render", DONE_FILE, "metrics.json"),
    *("edit.png", "alpha.png", "edit_on_greenscreen.png", "composite.png", "layer_rgba.png"),
    *("edited.mp4", "edited.gif", "foreground", "background"),
)

# Keys that say where, how often or how fast things are done, not what is computed (dotted: nested keys). A run
# resumes across a change of them, they are not hyper-parameters in TensorBoard, and they do not name run folders.
RESULT_NEUTRAL_KEYS = (
    *("run_dir", "data_dir", "log_images_freq", "checkpoint_every", "evaluate", "trainer", "logger", "hydra"),
    *("restart", "resume_from", "sweep", "compile", "clip.checkpoint_views", "evaluation"),
    *("data.min_input_side", "data.max_aspect_ratio", "data.check_memory"),  # checks of the input, not the edit
)


def is_result_neutral(key: str) -> bool:
    """Whether a config key (``trainer.precision``) or an override's key (``+logger``) is in RESULT_NEUTRAL_KEYS."""
    key = key.lstrip("+~")
    return any(key == neutral or key.startswith(f"{neutral}.") for neutral in RESULT_NEUTRAL_KEYS)


def run_names(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """The run-folder names of a sweep's jobs: the overrides whose values differ between them (``edit=x,seed=0``).

    Overrides shared by every job (``clip=vit_b16`` given for the whole sweep) and result-neutral ones stay out
    of the names, so they remain short and comparable in TensorBoard; a single job is named ``run``. Every
    launcher names its jobs' folders with this function.
    """
    parsed = [
        dict(o.split("=", 1) if "=" in o else (o, "") for o in overrides if not is_result_neutral(o.split("=", 1)[0]))
        for overrides in job_overrides
    ]
    keys: list[str] = []
    for overrides in parsed:
        keys += [k for k in overrides if k not in keys]
    varying = [k for k in keys if len({overrides.get(k) for overrides in parsed}) > 1]
    names = [",".join(f"{k.lstrip('+~')}={o.get(k, '')}" for k in varying if k in o) for o in parsed]
    return [name.replace("/", "_") or "run" for name in names]


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


# Classes that compute the same thing under another name: a run folder written with the first resumes with the second.
SAME_TARGETS = {"madgrad.MADGRAD": "text2live.optim.MADGRAD"}


def _semantic(cfg: dict, prefix: str = "") -> dict:
    kept = {}
    for key, value in cfg.items():
        if is_result_neutral(f"{prefix}{key}"):
            continue
        if key == "_target_" and isinstance(value, str):
            value = SAME_TARGETS.get(value, value)
        kept[key] = _semantic(value, f"{prefix}{key}.") if isinstance(value, dict) else value
    return kept


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return diffs


def checkpoint_path(run_dir: Path) -> Path | None:
    """The checkpoint a run is rendered and evaluated from: ``final.ckpt``, else ``last.ckpt``, if any."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    for name in (FINAL_CHECKPOINT, LAST_CHECKPOINT):
        if (folder / name).is_file():
            return folder / name
    return None


class RunBusyError(ConfigError):
    """Another process is training in the run folder."""


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock while training in it: a second process refuses instead of writing beside it.

    The lock is an ``flock`` on ``<run_dir>/.lock``, released by the kernel when the holder exits, however it exits
    (a SIGKILL included): a stale lock file never blocks a re-run.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise RunBusyError(
                f"{run_dir} is being trained by process {holder}: wait for it to finish (or stop it), "
                "or pass run_dir=<another folder>"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only its holder goes unnamed
            pass
        yield
    finally:
        os.close(fd)


def restart(run_dir: Path) -> None:
    """Remove what an earlier attempt wrote into ``run_dir`` (its checkpoints, logs and outputs)."""
    for name in (*RUN_OUTPUTS, CONFIG_FILE, OVERRIDES_FILE):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resume_checkpoint(run_dir: Path, resume_from: str = "last") -> Path | None:
    """The checkpoint to resume ``run_dir`` from (``last`` or ``previous``), checked readable; None if none.

    An unreadable checkpoint raises a :class:`CheckpointError` that names the file and the ways on.
    """
    from text2live.checkpoints import read_training_checkpoint

    folder = run_dir / CHECKPOINT_DIR
    path = folder / (LAST_CHECKPOINT if resume_from == "last" else PREVIOUS_CHECKPOINT)
    if not path.is_file():
        if resume_from == "previous":
            raise ConfigError(f"{path} does not exist: run without resume_from, or with restart=true to start over")
        return None
    try:
        read_training_checkpoint(path)
    except CheckpointError as exc:
        ways = ["restart=true to start over"]
        previous = folder / PREVIOUS_CHECKPOINT
        if resume_from == "last" and previous.is_file():
            try:
                step = read_training_checkpoint(previous)["global_step"]
                ways.insert(0, f"resume_from=previous to resume from {previous} (step {step})")
            except CheckpointError:
                pass
        raise CheckpointError(f"{exc}: run the same command with {', or '.join(ways)}") from None
    return path


def check_same_run(run_dir: Path, cfg: dict) -> bool:
    """True if ``run_dir`` already holds this run; raises if it holds a different one; False if it is new."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return False
    old = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    diffs = _differences(_semantic(old), _semantic(cfg))
    if diffs:
        shown = "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")
        raise ConfigError(
            f"{run_dir} already holds a different run ({shown}): pass run_dir=<another folder> or remove that folder"
        )
    return True


def git_revision() -> str:
    """``<commit>`` of the text2live source, with ``-dirty`` if it has uncommitted changes, or ``unknown``."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def write_run_info(run_dir: Path, cfg: dict, overrides: Sequence[str] = ()) -> None:
    """The resolved config, the code revision and the command-line overrides (``key=value`` strings; the
    tables of a sweep group its runs by them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files.write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(cfg)))
    files.write_text(run_dir / "git_revision.txt", git_revision() + "\n")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("run_dir",)]
    files.write_text(run_dir / OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(kept)))


def load_config(run_dir: Path) -> DictConfig:
    """The config a run was trained with (``config.yaml``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} is not a text2live run folder (no {CONFIG_FILE}): pass a run folder")
    return OmegaConf.load(path)


def run_task(run_dir: Path) -> str:
    """What a run folder holds: ``edit`` (t2l-train) or ``atlas`` (t2l-atlas), from its config's ``task``."""
    try:
        task = OmegaConf.load(Path(run_dir) / CONFIG_FILE).get("task", "edit")
    except (OSError, ValueError, OmegaConfBaseException):
        return "edit"  # unreadable: the tools that read it say so
    return str(task)


def find_runs(folder: str | Path, task: str = "edit") -> list[Path]:
    """Every finished run of ``task`` (a folder holding ``config.yaml`` and ``DONE``) at or below ``folder``, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: pass a run folder or a folder of runs (e.g. outputs/)")
    found = {p.parent for p in folder.rglob(CONFIG_FILE) if (p.parent / DONE_FILE).is_file()}
    return sorted(run for run in found if run_task(run) == task)


def load_run(run_dir: Path) -> tuple[dict, DictConfig]:
    """The trained weights of a run (``final.ckpt``, else ``last.ckpt``) and the run's config."""
    from text2live.checkpoints import read_checkpoint

    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise InputError(f"{run_dir} is not a text2live run folder (no {CONFIG_FILE}): pass run_dir=<run folder>")
    cfg = OmegaConf.load(config_path)
    path = checkpoint_path(run_dir)
    if path is None:
        ckpt_dir = run_dir / CHECKPOINT_DIR
        raise InputError(f"{run_dir} has no checkpoint yet ({ckpt_dir} is empty): train it first with t2l-train")
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a text2live checkpoint (it has no state_dict)")
    return checkpoint["state_dict"], cfg
