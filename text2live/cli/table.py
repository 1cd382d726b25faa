"""``t2l-table <sweep folder>``: a sweep's metrics as tables (Markdown, CSV, LaTeX) and a gallery.

Thin: the work is in :mod:`text2live.reporting`, imported once the arguments are read (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from text2live.reporting import Job

DESCRIPTION = """\
Summarise the evaluated runs of a sweep (t2l-train -m +sweep=...) as tables and a gallery. Runs are grouped by
the overrides that vary between the sweep's jobs, except seed (every job folder counts, finished or not, so a key
stays a column while some of its values have no result yet). Each metric is shown as mean ± sample std over the
group's seeds; a group with one value shows it alone (n=1). The prompts (comp_text, src_text, screen_text; per
layer for videos) come from each run's config.yaml.

Writes into the folder (or --out), and prints the Markdown table:
  table.md        the Markdown table
  table.csv       one row per group: the keys, the prompts, <metric>_mean and <metric>_std (empty below two
                  values) at full precision, n
  table_runs.csv  one row per run (every seed): the keys, seed, the prompts, each metric, the run folder
  table.tex       a booktabs tabular to \\input into a paper
  gallery.png     a contact sheet, one row per run: input | composite | alpha | edit on green screen
  gallery.html    the same, with the prompts and every metric; click a column header to sort by it
                  (the images are copied into gallery_inputs/ so the page survives a move)"""

EPILOG = """\
examples:
  t2l-eval outputs/sweeps/fur && t2l-table outputs/sweeps/fur
  t2l-table outputs/sweeps/ablations --metrics clip_score,preservation_psnr
  t2l-table outputs/sweeps/fur --out paper/fur --no-gallery

A partly finished sweep gives its table all the same; the jobs without a result are listed after it. A job
folder (a folder with config.yaml, launcher.log or train.log) is
  finished    if it holds DONE; only those with a metrics.json count (compute it with t2l-eval; the others
              are named in a warning);
  failed      if it has no DONE and the newer of its logs (launcher.log, train.log) ends in an error (an
              'error:' line, a Python traceback, the launcher's note that a signal killed it), or if it has a log
              but no config.yaml (the job ended before its run started);
  unfinished  otherwise: config.yaml without DONE, running, stopped or killed with its launcher; the sweep's
              command resumes it.
Exit status 2 (with one 'error:' line) when the folder does not exist or holds no finished, evaluated run."""


def _fail(message: str) -> NoReturn:
    from text2live.cli.common import fail

    fail(message)
    raise SystemExit(2)  # not reached: fail exits


def _tile_height(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of pixels") from None
    if value < 8:
        raise argparse.ArgumentTypeError(f"{value} is too small: use at least 8 pixels")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        _fail(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="t2l-table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("folder", help="a sweep folder, a run folder, or any folder holding runs at any depth")
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric columns, e.g. clip_score,preservation_psnr (default: every metric)",
    )
    parser.add_argument("--out", default=None, help="where to write the tables and gallery (default: the folder)")
    parser.add_argument("--no-gallery", action="store_true", help="write only the tables")
    parser.add_argument(
        "--tile-height", type=_tile_height, default=160, help="height of the gallery's tiles in pixels (default: 160)"
    )
    return parser


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    from text2live.reporting import RunSkippedWarning

    for w in caught:
        if issubclass(w.category, RunSkippedWarning):
            print(f"warning: {w.message}", file=sys.stderr)


def _without_result(jobs: list[Job]) -> tuple[str, list[str]]:
    """A summary and one line per unfinished or failed job."""
    from text2live.reporting import FAILED, UNFINISHED

    lines, counts = [], []
    for state in (UNFINISHED, FAILED):
        these = [job for job in jobs if job.state == state]
        counts += [f"{len(these)} {state}"] if these else []
        lines += [f"  {state:<10}  {job.path}: {job.reason}" for job in these]
    return f"{' and '.join(counts)} of {len(jobs)} job(s)", lines


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        _fail(f"{folder} is not a folder: pass a sweep folder, a run folder or a folder of runs (e.g. outputs/)")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics is not None else None
    if metrics is not None and not metrics:
        _fail("--metrics is empty: pass metric names separated by commas, e.g. --metrics clip_score")
    out = Path(args.out).expanduser() if args.out else folder

    from text2live import reporting
    from text2live.errors import Text2LiveError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", reporting.RunSkippedWarning)
            jobs = reporting.find_jobs(folder)
            found = reporting.collect(folder)
            _print_warnings(caught)
            caught.clear()
            summary, pending = _without_result(jobs)
            if not found:
                if pending:
                    print(f"jobs without a result: {summary}", *pending, sep="\n")
                if not any(job.state == reporting.FINISHED for job in jobs):
                    _fail(
                        f"no finished run (a folder with config.yaml and DONE) at or below {folder}"
                        + (f" ({summary}, listed above)" if pending else "")
                    )
                _fail(f"no run at or below {folder} has metrics.json: compute them first with `t2l-eval {folder}`")
            tab = reporting.table(found, metrics, keys=reporting.swept_keys(jobs))
            print(reporting.to_markdown(tab), end="")
            if pending:
                print(f"\nnot in the table: {summary}", *pending, sep="\n")
            written = reporting.write_tables(tab, out)
            if not args.no_gallery:
                written += reporting.gallery(tab, out, args.tile_height)
            _print_warnings(caught)
    except Text2LiveError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write into {out}: {exc.strerror or exc}")
    print()
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
