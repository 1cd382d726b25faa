"""``python kill_harness.py <moment> <t2l-train overrides...>``: t2l-train, killed by a real SIGKILL at one moment.

The moments a kill tests exactly, which timing from outside could only hit by chance:

- ``step:<n>``: in the middle of training step ``n`` (its sample drawn, its gradient not yet applied);
- ``checkpoint``: while the first checkpoint of this process is being written (half of it on the disk);
- ``outputs``: while the final PNGs are being written (``edit.png`` done, ``composite.png`` not yet).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant(moment: str) -> None:
    if moment.startswith("step:"):
        from text2live.system import EditSystem

        at = int(moment.split(":")[1])
        step_of = EditSystem.step_of

        def killing_step_of(self, batch: dict) -> int:
            step = step_of(self, batch)
            if step == at:
                die()
            return step

        EditSystem.step_of = killing_step_of
    elif moment == "checkpoint":
        from text2live import files

        def half_written(path, data) -> None:
            with files.atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    f.write(bytes(data)[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                die()

        files.write_bytes = half_written
    elif moment == "outputs":
        from text2live import io

        save_png = io.save_png

        def killing_save_png(image, path) -> None:
            if Path(path).name == "composite.png":
                die()
            save_png(image, path)

        io.save_png = killing_save_png
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    plant(sys.argv[1])
    sys.argv = ["t2l-train", *sys.argv[2:]]
    from text2live.cli.train import main

    main()
