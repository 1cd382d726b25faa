"""The folders of a sweep: every job's state and overrides, and the finished, evaluated runs among them.

A *job folder* holds ``config.yaml`` (a run that started), or a log: ``launcher.log`` (the ``gpus`` launcher's
copy of the job's output) or ``train.log`` (Hydra's log of the job). What the folder shows gives its state:

- ``finished``: it holds ``DONE``;
- ``failed``: no ``DONE``, and the newer of its logs ends in an error: the job's one-line ``error: ...``, the last
  line of a Python traceback, or the launcher's note that a signal killed the job; or it holds a log but no
  ``config.yaml`` (the job ended before its run started, or is starting at this very moment);
- ``unfinished``: ``config.yaml`` without ``DONE`` and no error at the end of the logs: running, stopped, or killed
  together with its launcher; the sweep's command resumes it.

:mod:`text2live.runs` is imported inside the functions: it loads torch, which ``t2l-table --help`` should not.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from text2live.errors import InputError

SEED = "seed"
LAUNCHER_LOG = "launcher.log"  # written by hydra_plugins/text2live_launcher into each job's folder
TRAIN_LOG = "train.log"  # Hydra's log of a t2l-train job, in its run folder
FINISHED, UNFINISHED, FAILED = "finished", "unfinished", "failed"
PROMPT_KEYS = ("comp_text", "src_text", "screen_text")
LOG_TAIL_BYTES = 64 * 1024  # how much of a log's end is read to find how the job ended
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, yaml.YAMLError)


class RunSkippedWarning(UserWarning):
    """A finished run left out of the table (no or unreadable ``metrics.json``), or a gallery image not found."""


@dataclass
class Run:
    """A finished, evaluated run: its folder, its overrides ``{key: value}`` and its metrics (NaN: no value)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float]
    record: dict = field(default_factory=dict, repr=False)
    prompts: dict[str, str] = field(default_factory=dict)  # see :func:`prompts`
    named_overrides: bool = False  # the overrides come from the folder's name, which holds only the swept keys

    @property
    def kind(self) -> str:
        return self.record.get("kind") or "image"

    @property
    def seed(self) -> str | None:
        """The seed override, else the seed recorded in ``metrics.json``."""
        if SEED in self.overrides:
            return self.overrides[SEED]
        seed = self.record.get("seed")
        return None if seed is None else str(seed)


@dataclass
class Job:
    """A job folder of a sweep, finished or not: its overrides, its state, and why it has no result."""

    path: Path
    overrides: dict[str, str]
    state: str  # FINISHED, UNFINISHED or FAILED
    reason: str = ""  # for a failed or unfinished job: what its folder shows, in words
    named_overrides: bool = False


# overrides and prompts --------------------------------------------------------------------------------------


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["+sweep=fur", "edit=golden"]`` -> ``{"sweep": "fur", "edit": "golden"}`` (order kept).

    Leading ``+``/``~`` are stripped from the key; the value is everything after the first ``=`` (``""`` for a
    deletion ``~key``).
    """
    parsed: dict[str, str] = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        parsed[key.strip().lstrip("+~")] = value
    return parsed


def _overrides_from_dirname(name: str) -> list[str]:
    """Hydra's ``override_dirname`` (``a=1,b=x,seed=0``) split at the commas that start a new ``key=``."""
    if "=" not in name:
        return []
    return re.split(r",(?=[^,=\[\]{}]+=)", name)


def read_overrides(run_dir: Path) -> tuple[dict[str, str], bool]:
    """The job's overrides from ``overrides.yaml``; without it (a run written before it existed, a job that
    ended before its run started) from the folder's name. The flag says the name was used."""
    from text2live.runs import OVERRIDES_FILE

    path = run_dir / OVERRIDES_FILE
    if path.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        if not isinstance(loaded, list):
            raise ValueError(f"{path} is not a list of key=value overrides")
        return parse_overrides(loaded), False
    return parse_overrides(_overrides_from_dirname(run_dir.name)), True


def _prompt_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return " / ".join(str(v) for v in value if v is not None)
    return ""


def prompts(cfg: Mapping) -> dict[str, str]:
    """The prompts of a run's config: ``{"comp_text": "golden cat", "src_text": "cat", ...}``.

    A video run's prompts are per edited layer (``foreground/comp_text``, as its metrics); a list of prompts is
    joined with `` / ``; absent and null prompts are left out.
    """
    layers = cfg.get("edit_layers") if cfg.get("frames_dir") is not None else None
    scopes = [("", cfg)]
    if layers:
        scopes = [(f"{layer}/", cfg.get(str(layer))) for layer in layers]
        scopes = [(prefix, scope if isinstance(scope, Mapping) else cfg) for prefix, scope in scopes]
    found = {}
    for prefix, scope in scopes:
        for key in PROMPT_KEYS:
            text = _prompt_text(scope.get(key, cfg.get(key)))
            if text:
                found[prefix + key] = text
    return found


def read_config(run_dir: Path) -> dict:
    """A run's ``config.yaml`` as a plain dict, interpolations resolved where they can be."""
    from text2live.runs import load_config

    cfg = load_config(run_dir)
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that no longer resolves: the written values will do
        return OmegaConf.to_container(cfg, resolve=False)


def _natural_key(path: Path) -> list:
    """Sort key that puts ``seed=2`` before ``seed=10``: digits compare as numbers."""
    parts = re.split(r"(\d+)", path.as_posix())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


# finished, evaluated runs -----------------------------------------------------------------------------------


def collect(folder: str | os.PathLike) -> list[Run]:
    """Every finished run at or below ``folder`` that has a ``metrics.json``, in natural path order.

    Finished runs without (or with an unreadable) ``metrics.json`` are skipped with a
    :class:`RunSkippedWarning` that says to run ``t2l-eval``; so is a run whose ``metrics.json`` is older than
    its checkpoint. Raises :class:`~text2live.errors.InputError` if ``folder`` is not a folder.
    """
    from text2live.runs import METRICS_FILE, checkpoint_path, find_runs

    collected = []
    for run_dir in sorted(find_runs(folder), key=_natural_key):
        metrics_path = run_dir / METRICS_FILE
        if not metrics_path.is_file():
            warnings.warn(
                f"skipped {run_dir}: no {METRICS_FILE} (compute it with `t2l-eval {run_dir}`)",
                RunSkippedWarning,
                stacklevel=2,
            )
            continue
        try:
            record = json.loads(metrics_path.read_text())
            metrics = record["metrics"]
            if not isinstance(metrics, dict):
                raise ValueError("'metrics' is not a mapping")
            overrides, named = read_overrides(run_dir)
        except _UNREADABLE as exc:
            warnings.warn(
                f"skipped {run_dir}: cannot read its metrics or overrides ({exc}); recompute with "
                f"`t2l-eval --force {run_dir}`",
                RunSkippedWarning,
                stacklevel=2,
            )
            continue
        ckpt = checkpoint_path(run_dir)
        if ckpt is not None and metrics_path.stat().st_mtime_ns < ckpt.stat().st_mtime_ns:
            warnings.warn(
                f"{run_dir}/{METRICS_FILE} is older than its checkpoint (kept; update it with `t2l-eval {run_dir}`)",
                RunSkippedWarning,
                stacklevel=2,
            )
        try:
            run_prompts = prompts(read_config(run_dir))
        except Exception:  # noqa: BLE001 - a config that cannot be read only costs the prompts (the gallery says so)
            run_prompts = {}
        metrics = {k: _float(v) for k, v in metrics.items()}
        collected.append(Run(run_dir, overrides, metrics, record, run_prompts, named))
    return collected


# every job of a sweep ---------------------------------------------------------------------------------------


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
        return f.read().decode(errors="replace")


def _error_at_end(log: Path) -> str | None:
    """The error line a log ends with (``error: ...``, a traceback's last line, the launcher's kill note)."""
    tail = _tail(log)
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return None
    last = re.sub(r"^(\[[^\]]*\])+\s*-\s*", "", lines[-1])  # Hydra's "[time][logger][LEVEL] - " prefix
    traceback = "Traceback (most recent call last)" in tail and re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", last)
    if last.startswith(("error:", "[launcher] ")) or traceback:
        return last.removeprefix("[launcher] ")
    return None


def job_state(path: Path) -> tuple[str, str]:
    """``(state, reason)`` of a job folder, from what it shows (the rules are in this module's docstring)."""
    from text2live.runs import CONFIG_FILE, DONE_FILE

    if (path / DONE_FILE).is_file():
        return FINISHED, ""
    logs = [log for log in (path / LAUNCHER_LOG, path / TRAIN_LOG) if log.is_file()]
    if logs:
        newest = max(logs, key=lambda log: log.stat().st_mtime_ns)
        error = _error_at_end(newest)
        if error is not None:
            shown = error if len(error) <= 300 else error[:297] + "..."
            return FAILED, f"{shown} (see {newest})"
        if not (path / CONFIG_FILE).is_file():
            return FAILED, f"it ended before its run started (see {newest})"
    return UNFINISHED, f"no {DONE_FILE} yet: running, stopped or killed; the sweep's command resumes it"


def find_jobs(folder: str | os.PathLike) -> list[Job]:
    """Every job folder at or below ``folder``, finished or not, in natural path order.

    Raises :class:`~text2live.errors.InputError` if ``folder`` is not a folder.
    """
    from text2live.runs import CONFIG_FILE

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder: pass a sweep folder, a run folder or a folder of runs")
    markers = {CONFIG_FILE, LAUNCHER_LOG, TRAIN_LOG}
    found = {Path(root) for root, _, names in os.walk(folder) if markers.intersection(names)}
    jobs = []
    for path in sorted(found, key=_natural_key):
        state, reason = job_state(path)
        try:
            overrides, named = read_overrides(path)
        except _UNREADABLE:
            overrides, named = parse_overrides(_overrides_from_dirname(path.name)), True
        jobs.append(Job(path, overrides, state, reason, named))
    return jobs


def swept_keys(runs: Sequence[Run | Job], include_seed: bool = False) -> list[str]:
    """The override keys whose values differ between ``runs`` (a key missing from some runs counts as
    differing), in the order they first appear in the runs' ``overrides.yaml``.

    ``seed`` is left out unless ``include_seed``: the table's statistics are taken over it. Overrides read from
    a folder's name hold only the keys that vary, so there a missing key says nothing.
    """
    order: dict[str, None] = {}
    for run in runs:
        order.update(dict.fromkeys(run.overrides))
    keys = []
    for key in order:
        if key == SEED and not include_seed:
            continue
        values = {run.overrides.get(key) for run in runs if key in run.overrides or not run.named_overrides}
        if len(values) > 1:
            keys.append(key)
    return keys
