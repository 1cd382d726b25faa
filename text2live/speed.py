"""Options that change speed and memory, not results: ``compile`` and ``generator_precision``."""

from __future__ import annotations


def apply_options(cfg, system) -> None:
    """Apply the run's speed options to a built system (in place)."""
