"""A :class:`~text2live.reporting.stats.Table` as Markdown, CSV (per group and per run) and LaTeX."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from text2live import files
from text2live.reporting.collect import SEED
from text2live.reporting.stats import Stat, Table

MISSING = "–"  # a value absent from a run, or a metric without any finite value (en dash)
LATEX_MISSING = "--"  # the same in LaTeX (an en dash without relying on the input encoding)
TABLE_MD, TABLE_CSV, TABLE_TEX, RUNS_CSV = "table.md", "table.csv", "table.tex", "table_runs.csv"
TABLE_FILES = (TABLE_MD, TABLE_CSV, TABLE_TEX, RUNS_CSV)


def format_stat(stat: Stat, pm: str = " ± ", n: int | None = None, one: str = " (n=1)") -> str:
    """``mean ± std`` with 3 decimals; a single value alone, followed by ``one`` when the row has ``n`` > 1 runs
    (the others have no finite value); :data:`MISSING` without any value."""
    if stat.empty:
        return MISSING
    if not stat.has_spread:
        return f"{stat.mean:.3f}" + (one if n is not None and n > 1 else "")
    return f"{stat.mean:.3f}{pm}{stat.std:.3f}"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(tab: Table) -> str:
    """A GitHub Markdown table: one column per swept key and per prompt, ``mean ± std`` per metric, then ``n``."""
    header = [*tab.keys, *tab.prompts, *tab.metrics, "n"]
    align = [":---"] * (len(tab.keys) + len(tab.prompts)) + ["---:"] * (len(tab.metrics) + 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    for row in tab.rows:
        cells = [MISSING if v is None else v for v in row.values]
        cells += [row.prompts[p] or MISSING for p in tab.prompts]
        cells += [format_stat(row.stats[m], n=row.n) for m in tab.metrics] + [str(row.n)]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_float(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


def to_csv(tab: Table) -> str:
    """One row per group: one column per swept key and per prompt, ``<metric>_mean`` and ``<metric>_std`` per
    metric, ``n``; full precision (``repr`` of the float, exact round trip); an empty cell for a missing key, a
    metric without values, and the std of fewer than two values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*tab.keys, *tab.prompts, *(f"{m}_{s}" for m in tab.metrics for s in ("mean", "std")), "n"])
    for row in tab.rows:
        cells = ["" if v is None else v for v in row.values] + [row.prompts[p] for p in tab.prompts]
        for m in tab.metrics:
            cells += [_csv_float(row.stats[m].mean), _csv_float(row.stats[m].std)]
        writer.writerow([*cells, row.n])
    return buffer.getvalue()


def to_runs_csv(tab: Table, relative_to: str | os.PathLike | None = None) -> str:
    """One row per run (every seed): the swept keys, ``seed``, the prompts, each metric at full precision, and the
    run folder (relative to ``relative_to`` if given); rows in the table's order."""
    seed = [] if SEED in tab.keys else [SEED]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*tab.keys, *seed, *tab.prompts, *tab.metrics, "run"])
    for row in tab.rows:
        for run in row.runs:
            cells = ["" if v is None else v for v in row.values] + [run.seed or "" for _ in seed]
            cells += [run.prompts.get(p, "") for p in tab.prompts]
            cells += [_csv_float(run.metrics.get(m, math.nan)) for m in tab.metrics]
            where = run.path if relative_to is None else Path(os.path.relpath(run.path, relative_to))
            writer.writerow([*cells, where.as_posix()])
    return buffer.getvalue()


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def to_latex(tab: Table) -> str:
    """A ``tabular`` with ``booktabs`` rules (``\\usepackage{booktabs}``), ``mean $\\pm$ std``, ready to
    ``\\input``; keys, values and prompts are escaped."""
    spec = "l" * (len(tab.keys) + len(tab.prompts)) + "r" * (len(tab.metrics) + 1)
    header = [latex_escape(h) for h in (*tab.keys, *tab.prompts, *tab.metrics)] + ["$n$"]
    lines = [
        "% written by t2l-table; needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for row in tab.rows:
        cells = [LATEX_MISSING if v is None else latex_escape(v) for v in row.values]
        cells += [latex_escape(row.prompts[p]) if row.prompts[p] else LATEX_MISSING for p in tab.prompts]
        for m in tab.metrics:
            stat = row.stats[m]
            cells.append(LATEX_MISSING if stat.empty else format_stat(stat, r" $\pm$ ", row.n, r" ($n=1$)"))
        cells.append(str(row.n))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(tab: Table, out: str | os.PathLike) -> list[Path]:
    """``table.md``, ``table.csv``, ``table.tex`` and ``table_runs.csv`` in ``out``; returns their paths."""
    out = Path(out)
    texts = {
        TABLE_MD: to_markdown(tab),
        TABLE_CSV: to_csv(tab),
        TABLE_TEX: to_latex(tab),
        RUNS_CSV: to_runs_csv(tab, relative_to=out),
    }
    return [files.write_text(out / name, text) for name, text in texts.items()]
