"""A full disk (a real one: a small tmpfs, filled up) stops a run with one sentence and corrupts nothing.

The run resumes from its last good checkpoint once space is freed (that a resumed run ends exactly as an
uninterrupted one is tests/test_kill_resume.py's subject).
Mounting needs root (the CI machines run as root); elsewhere the module is skipped.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from test_kill_resume import STEPS, checkpoint_step, image_overrides, one_error_line, run

DISK_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}M", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): the full-disk test needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes all of ``disk``'s free space but ``leave`` bytes."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    size = stat.f_bavail * stat.f_frsize - leave
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while size > 0:
                size -= f.write(chunk[: min(size, len(chunk))])
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> Path:
    from PIL import Image

    from text2live.config import ASSETS_DIR

    path = tmp_path_factory.mktemp("disk") / "cat.png"
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96), Image.LANCZOS).save(path)
    return path


def test_full_disk_keeps_the_last_good_checkpoint_and_the_run_resumes(tmp_path: Path, small_disk: Path, cat) -> None:
    run_dir = small_disk / "run"
    overrides = image_overrides(cat, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"

    killed = run(overrides, "step:6")  # a run with its step-4 checkpoint, as a crash or a kill leaves it
    assert killed.returncode < 0 and checkpoint_step(last) == 4
    good = last.read_bytes()

    filler = fill(small_disk, leave=len(good) // 2)  # room for the small files, not for the step-8 checkpoint
    full = run(overrides)
    assert full.returncode == 2, full.stderr
    line = one_error_line(full.stderr)
    assert "no space left on the device" in line and "run the same command again" in line
    assert last.read_bytes() == good  # untouched and still a whole checkpoint
    assert checkpoint_step(last) == 4
    assert not (run_dir / "DONE").exists() and not (run_dir / "composite.png").exists()
    assert not [p.name for p in run_dir.rglob("*.part*")]  # no temporary file left behind
    assert "no space left" in (run_dir / "train.log").read_text(errors="replace")

    filler.unlink()  # with space again, the same command resumes from step 4 and finishes
    finished = run(overrides)
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout + finished.stderr
    assert (run_dir / "DONE").is_file() and checkpoint_step(run_dir / "checkpoints" / "final.ckpt") == STEPS
