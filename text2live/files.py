"""Writing files so that a crash, a kill or a full disk never leaves a half-written one in place.

Every file the project writes goes to a temporary name in its own folder and is renamed over the target only
once it is complete and flushed to the disk: a reader sees the previous version or the new one, never a mix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from text2live.errors import Text2LiveError

PART_SUFFIX = ".part"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(Text2LiveError):
    """A file could not be written for lack of space; what was there before is intact."""


def temporary_name(path: Path) -> Path:
    """A name beside ``path`` that keeps its suffix (writers such as imageio pick the format from it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}{PART_SUFFIX}{path.suffix}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def no_space_message(path: Path) -> str:
    return (
        f"no space left on the device while writing {path} (the previous version of the file, if any, is "
        "intact): free some space and run the same command again"
    )


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path``, on failure it is removed.

    A full disk becomes a :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            raise DiskFullError(no_space_message(path)) from exc
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)
