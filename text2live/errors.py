"""Errors that reach the user as one sentence (no traceback) and a non-zero exit code."""

from __future__ import annotations

import signal
from pathlib import Path


class Text2LiveError(Exception):
    """Bad input or a failed run: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(Text2LiveError):
    """A config value that cannot work."""


class InputError(Text2LiveError):
    """A missing, unreadable or unusable input file."""


class JobError(Exception):
    """A sweep job that ended with an ``error:`` line, raised to the launcher that ran it in its process.

    Launchers that run jobs in their own process (Hydra's basic, submitit, Ray) get this instead of an exit of
    the process, so that the sweep can name the failed jobs in one line and Ray does not retry an input error.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.message, self.code = message, code


class CheckpointError(Text2LiveError):
    """A checkpoint that cannot be read or does not belong to the run."""


class MissingWeightsError(Text2LiveError):
    """Pretrained weights that are neither cached nor downloadable."""


class NonFiniteLossError(Text2LiveError):
    """A loss term became NaN or infinite during training."""

    exit_code = 3

    def __init__(self, step: int, terms: list[str], checkpoint: Path | None = None) -> None:
        """``step``: the step that failed, counted from 1 (as in TensorBoard and ``steps/<n>/``)."""
        super().__init__(step, terms)
        self.step = step
        self.terms = terms
        self.checkpoint = checkpoint  # the last good checkpoint, when the run has one

    def __str__(self) -> str:
        where = f"the loss term(s) {', '.join(self.terms)} became non-finite at step {self.step}"
        if self.checkpoint is None:
            return f"{where} (no checkpoint was written yet): lower optim.optimizer.lr or check the inputs"
        return (
            f"{where}; {self.checkpoint} holds the last good state: lower optim.optimizer.lr or check the inputs, "
            "then run the same command again"
        )


class RunInterrupted(Text2LiveError):
    """SIGINT or SIGTERM stopped training after a step; the checkpoint of that step was written."""

    def __init__(self, signum: int, step: int, steps: int, checkpoint: Path) -> None:
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step} of {steps} ({checkpoint} holds it): run the same command again "
            "to resume"
        )


# The overrides that lower the memory of a run, named wherever a run ran out of memory.
LOWER_MEMORY = (
    "clip.checkpoint_views=true (same results, less memory), a smaller data.resize_input (e.g. 384), "
    "or clip.precision=fp16 on a GPU"
)


def out_of_memory_message(where: str) -> str:
    """One sentence for a run that ran out of ``where`` (``"GPU memory"``, ``"memory"``)."""
    return f"the run ran out of {where}: lower it with {LOWER_MEMORY}, then run the same command again"


def is_out_of_memory(exc: BaseException) -> str | None:
    """``"GPU memory"`` or ``"memory"`` when ``exc`` is an allocation failure of torch (or Python), else None."""
    if isinstance(exc, MemoryError):
        return "memory"
    name = type(exc).__name__
    text = str(exc)
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        return "GPU memory"
    if isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text):
        return "memory"
    return None
