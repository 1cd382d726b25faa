"""What ``t2l-table`` makes of a sweep: its jobs and runs, their statistics, the tables and the gallery.

- :mod:`.collect`: the job folders of a sweep (finished, unfinished, failed), the evaluated runs, their prompts;
- :mod:`.stats`: the runs grouped by their swept keys, mean and spread per metric;
- :mod:`.tables`: Markdown, CSV (per group and per run) and LaTeX;
- :mod:`.gallery`: the contact sheet and the HTML page.

Nothing here imports torch at import time (the video gallery loads it when it reads frames).
"""

from text2live.reporting.collect import (
    FAILED,
    FINISHED,
    UNFINISHED,
    Job,
    Run,
    RunSkippedWarning,
    collect,
    find_jobs,
    parse_overrides,
    prompts,
    swept_keys,
)
from text2live.reporting.gallery import COLUMNS, GALLERY_HTML, GALLERY_PNG, gallery, run_images
from text2live.reporting.stats import Row, Stat, Table, metric_names, table
from text2live.reporting.tables import (
    TABLE_FILES,
    format_stat,
    latex_escape,
    to_csv,
    to_latex,
    to_markdown,
    to_runs_csv,
    write_tables,
)

__all__ = [
    "COLUMNS",
    "FAILED",
    "FINISHED",
    "GALLERY_HTML",
    "GALLERY_PNG",
    "TABLE_FILES",
    "UNFINISHED",
    "Job",
    "Row",
    "Run",
    "RunSkippedWarning",
    "Stat",
    "Table",
    "collect",
    "find_jobs",
    "format_stat",
    "gallery",
    "latex_escape",
    "metric_names",
    "parse_overrides",
    "prompts",
    "run_images",
    "swept_keys",
    "table",
    "to_csv",
    "to_latex",
    "to_markdown",
    "to_runs_csv",
    "write_tables",
]
