"""Errors that reach the user as one sentence (no traceback) and a non-zero exit code."""

from __future__ import annotations


class Text2LiveError(Exception):
    """Bad input or a failed run: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(Text2LiveError):
    """A config value that cannot work."""


class InputError(Text2LiveError):
    """A missing, unreadable or unusable input file."""


class MissingWeightsError(Text2LiveError):
    """Pretrained weights that are neither cached nor downloadable."""


class NonFiniteLossError(Text2LiveError):
    """A loss term became NaN or infinite during training."""

    exit_code = 3

    def __init__(self, step: int, terms: list[str]) -> None:
        self.step = step
        self.terms = terms
        super().__init__(
            f"the loss term(s) {', '.join(terms)} became non-finite at step {step}; the run folder keeps its "
            "last good checkpoint: lower optim.optimizer.lr or check the inputs, then run the same command again"
        )
