"""The runs of a sweep grouped into table rows: one row per combination of swept values, statistics over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from text2live.errors import InputError
from text2live.reporting.collect import Run, swept_keys


@dataclass
class Stat:
    """Mean and sample std (ddof=1) over the finite values; std is NaN below two values, both are without any."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else math.nan
        return cls(statistics.fmean(finite), std, len(finite))

    @property
    def empty(self) -> bool:
        return self.count == 0

    @property
    def has_spread(self) -> bool:
        return self.count > 1


@dataclass
class Row:
    values: tuple[str | None, ...]  # the swept keys' values (None: the key is not among the run's overrides)
    runs: list[Run]
    stats: dict[str, Stat]
    prompts: dict[str, str]  # the runs' prompts; runs that differ: their distinct prompts joined with " ; "

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Table:
    keys: list[str]
    metrics: list[str]
    rows: list[Row]
    prompts: list[str]  # the prompt columns (comp_text, ...; videos: foreground/comp_text, ...)

    @property
    def runs(self) -> list[Run]:
        """Every run, sorted like the rows, seeds together (the gallery's order)."""
        return [run for row in self.rows for run in row.runs]


def metric_names(runs: Sequence[Run]) -> list[str]:
    """Every metric of any run, in first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.metrics))
    return list(names)


def prompt_names(runs: Sequence[Run]) -> list[str]:
    """Every prompt of any run (``comp_text``, ``src_text``, ``screen_text``, per layer for videos)."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.prompts))
    return list(names)


def _as_number(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _value_ranks(runs: Sequence[Run], key: str) -> dict[str | None, int]:
    """The sort rank of each value of ``key``: numeric order if every value is a number, else first-seen order."""
    seen = list(dict.fromkeys(run.overrides.get(key) for run in runs))
    if all(_as_number(v) is not None for v in seen):
        seen.sort(key=_as_number)
    return {value: rank for rank, value in enumerate(seen)}


def _seed_key(run: Run) -> tuple:
    number = _as_number(run.seed)
    return (0, number, "") if number is not None else (1, 0.0, run.seed or "")


def _joined(texts: Iterable[str]) -> str:
    return " ; ".join(dict.fromkeys(t for t in texts if t))


def table(runs: Sequence[Run], metrics: Sequence[str] | None = None, keys: Sequence[str] | None = None) -> Table:
    """Group ``runs`` by the values of the swept keys (except seed) and summarise every metric per group.

    ``metrics``: the metric columns (default: every metric of any run, in first-seen order); a name that no
    run has raises :class:`~text2live.errors.InputError`. ``keys``: the key columns (default: the keys swept
    among ``runs``; pass the keys swept among all of a sweep's jobs to keep a key whose other values have no
    result yet). Rows are sorted by the keys' values (first-seen order, numeric order for keys whose values are
    all numbers); within a row the runs are sorted by seed.
    """
    available = metric_names(runs)
    if metrics is None:
        metrics = available
    else:
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise InputError(
                f"unknown metric(s) {', '.join(unknown)}: the runs have {', '.join(available) or 'no metrics'}"
            )
    keys = swept_keys(runs) if keys is None else list(keys)
    ranks = {key: _value_ranks(runs, key) for key in keys}
    groups: dict[tuple[str | None, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides.get(key) for key in keys), []).append(run)
    prompts = prompt_names(runs)
    rows = []
    for values in sorted(groups, key=lambda vs: [ranks[k][v] for k, v in zip(keys, vs)]):
        members = sorted(groups[values], key=_seed_key)
        stats = {m: Stat.of(run.metrics.get(m, math.nan) for run in members) for m in metrics}
        texts = {p: _joined(run.prompts.get(p, "") for run in members) for p in prompts}
        rows.append(Row(values, members, stats, texts))
    return Table(keys, list(metrics), rows, prompts)
