"""Run folders: what they hold, how a finished one is recognised, and how a resumed one is checked."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from text2live.errors import ConfigError

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
DONE_FILE = "DONE"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
FINAL_CHECKPOINT = "final.ckpt"

# Keys that may change between a run and its resumption without changing what it computes.
PRESENTATION_KEYS = ("run_dir", "log_images_freq", "checkpoint_every", "evaluate", "trainer", "logger")


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _semantic(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in PRESENTATION_KEYS}


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
    (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run_dir / "git_revision.txt").write_text(git_revision() + "\n")
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("run_dir",)]
    (run_dir / OVERRIDES_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(kept)))
