"""Checkpoints that survive kills and full disks, and that are read without running code from the file.

A checkpoint is written whole to a temporary file beside its target and renamed over it only once it is on the
disk (:mod:`text2live.files`); before ``last.ckpt`` is replaced, the one it replaces stays as ``previous.ckpt``.
Every checkpoint is read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only,
never arbitrary pickled objects.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from text2live import files
from text2live.errors import CheckpointError

# the keys Lightning writes into every training checkpoint; a file without them is not one of ours
TRAINING_KEYS = ("state_dict", "global_step", "loops", "optimizer_states")


def pickles_objects(exc: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a file because it would create Python objects."""
    return "GLOBAL" in str(exc)


def _reason(exc: BaseException) -> str:
    if pickles_objects(exc):
        return "it holds Python objects that are not tensors, which are never unpickled"
    if "WeightsUnpickler" in str(exc) or "Weights only load failed" in str(exc):
        return "it is not a PyTorch file, or it is corrupt"
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"it is truncated or corrupt ({type(exc).__name__}: {text})" if text else f"{type(exc).__name__}"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The contents of a checkpoint file, read with ``weights_only=True``; raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many unrelated types for a file it cannot read
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({_reason(exc)})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by a text2live run (generator weights, optimiser and loop state)."""
    checkpoint = read_checkpoint(path)
    missing = [key for key in TRAINING_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a text2live training checkpoint (it has no {', '.join(missing)})")
    return checkpoint


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike, keep_as: str | None = None) -> None:
    """``torch.save`` made atomic; the file it replaces is kept as ``keep_as`` (a name in the same folder), if given."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)  # in memory first: a failed write then raises a plain OSError
    if keep_as and path.is_file():
        keep_previous(path, path.with_name(keep_as))
    files.write_bytes(path, buffer.getbuffer())


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, atomic on save and ``weights_only`` on load.

    ``keep``: file names whose replaced version is kept under another name (``{"last.ckpt": "previous.ckpt"}``).
    """

    def __init__(self, keep: dict[str, str] | None = None) -> None:
        super().__init__()
        self.keep = dict(keep or {})

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None) -> None:
        save_checkpoint(checkpoint, path, self.keep.get(Path(path).name))

    def load_checkpoint(self, path: str | os.PathLike, map_location=None, weights_only: bool | None = None):
        return read_training_checkpoint(path)


def keep_previous(last: Path, previous: Path) -> None:
    """Make ``previous`` a second name of the current ``last``, atomically, before ``last`` is replaced."""
    link = files.temporary_name(previous)
    try:
        os.link(last, link)
        os.replace(link, previous)
    except OSError:  # a file system without hard links: the rename of the new last.ckpt is atomic all the same
        link.unlink(missing_ok=True)


def check_fits(checkpoint: dict[str, Any], module: torch.nn.Module, path: Path) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's weights have the module's names and shapes."""
    theirs = checkpoint["state_dict"]
    ours = module.state_dict()
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{path} is not a text2live training checkpoint (its state_dict is not a dictionary)")
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    wrong = [k for k in ours if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(ours[k].shape)]
    problems = missing or unexpected or wrong
    if problems:
        what = "misses" if missing else "has unexpected" if unexpected else "has other shapes for"
        raise CheckpointError(f"{path} does not fit this run's generator (it {what} {problems[0]})")
