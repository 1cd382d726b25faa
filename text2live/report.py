"""``t2l-table <sweep folder>``: the metrics of a sweep's runs as a table (Markdown, CSV, LaTeX) and a gallery.

A sweep (``t2l-train -m +sweep=...``) writes one run folder per job, each with the job's command-line overrides
(``overrides.yaml``) and, once evaluated (``t2l-eval``), its metrics (``metrics.json``). The runs are grouped by
the values of the overrides that differ between them (the *swept* keys) except ``seed``: every group is one row
whose metrics are the mean and sample standard deviation over its seeds.

Files written into the sweep folder (or ``--out``):

- ``table.md``: a GitHub Markdown table, ``mean ± std`` with 3 decimals;
- ``table.csv``: one column per swept key, then ``<metric>_mean`` and ``<metric>_std`` per metric, then ``n``,
  at full float precision (an empty cell: no finite value);
- ``table.tex``: a LaTeX ``tabular`` with ``booktabs`` rules, for ``\\input`` into a paper;
- ``gallery.png``: a contact sheet, one row per run (input | composite | alpha);
- ``gallery.html``: the same rows as a self-contained page with the key metrics; the inputs (and a video's
  middle frames) are copied into ``gallery_inputs/`` so the page keeps working when the folder is moved.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import math
import os
import re
import statistics
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from text2live import files
from text2live import runs as run_files
from text2live.errors import InputError, Text2LiveError

SEED = "seed"
MISSING = "–"  # a value absent from a run, or a metric without any finite value (en dash)
LATEX_MISSING = "--"  # the same in LaTeX (an en dash without relying on the input encoding)
TABLE_FILES = ("table.md", "table.csv", "table.tex")
GALLERY_PNG = "gallery.png"
GALLERY_HTML = "gallery.html"
GALLERY_INPUTS = "gallery_inputs"
# The metrics the gallery page shows per run (video runs: every ``<layer>/<metric>``).
KEY_METRICS = ("clip_score", "clip_directional_similarity", "preservation_psnr")

# Geometry of gallery.png, in pixels. Every tile is scaled to ``tile_height`` and centred in a cell of the widest
# tile's width ``W``. Width: max(GAP + 3 * (W + GAP), widest label + 2 * GAP). Height: GAP + HEADER_HEIGHT +
# rows * (LABEL_HEIGHT + tile_height + GAP). Row r's tiles start at y = GAP + HEADER_HEIGHT +
# r * (LABEL_HEIGHT + tile_height + GAP) + LABEL_HEIGHT; column c's cell at x = GAP + c * (W + GAP).
GAP = 4
HEADER_HEIGHT = 16
LABEL_HEIGHT = 14
COLUMNS = ("input", "composite", "alpha")
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
PLACEHOLDER = (200, 200, 200)


class RunSkippedWarning(UserWarning):
    """A finished run left out of the table (no or unreadable ``metrics.json``)."""


# runs -------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A finished, evaluated run: its folder, its overrides ``{key: value}`` and its metrics (NaN: no value)."""

    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float]
    record: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return self.record.get("kind") or "image"

    @property
    def seed(self) -> str | None:
        """The seed override, else the seed recorded in ``metrics.json``."""
        if SEED in self.overrides:
            return self.overrides[SEED]
        seed = self.record.get("seed")
        return None if seed is None else str(seed)


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["+sweep=fur", "edit=golden"]`` -> ``{"sweep": "fur", "edit": "golden"}`` (order kept).

    Leading ``+``/``~`` are stripped from the key; the value is everything after the first ``=`` (``""`` for a
    deletion ``~key``).
    """
    parsed: dict[str, str] = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        parsed[key.strip().lstrip("+~")] = value
    return parsed


def _overrides_from_dirname(name: str) -> list[str]:
    """Hydra's ``override_dirname`` (``a=1,b=x,seed=0``) split at the commas that start a new ``key=``."""
    if "=" not in name:
        return []
    return re.split(r",(?=[^,=\[\]{}]+=)", name)


def _natural_key(path: Path) -> list:
    """Sort key that puts ``seed=2`` before ``seed=10``: digits compare as numbers."""
    parts = re.split(r"(\d+)", path.as_posix())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _read_overrides(run_dir: Path) -> dict[str, str]:
    path = run_dir / run_files.OVERRIDES_FILE
    if path.is_file():
        loaded = OmegaConf.to_container(OmegaConf.load(path))
        if not isinstance(loaded, list):
            raise ValueError(f"{path} is not a list of key=value overrides")
        return parse_overrides(loaded)
    # Runs written before overrides.yaml existed: a sweep's run folder is named by its overrides.
    return parse_overrides(_overrides_from_dirname(run_dir.name))


def collect(folder: str | os.PathLike) -> list[Run]:
    """Every finished run at or below ``folder`` that has a ``metrics.json``, in natural path order.

    Finished runs without (or with an unreadable) ``metrics.json`` are skipped with a
    :class:`RunSkippedWarning` that says to run ``t2l-eval``; so is a run whose ``metrics.json`` is older than
    its checkpoint. Raises :class:`~text2live.errors.InputError` if ``folder`` is not a folder.
    """
    from text2live.runs import METRICS_FILE, find_runs

    found = sorted(find_runs(folder), key=_natural_key)
    collected = []
    for run_dir in found:
        metrics_path = run_dir / METRICS_FILE
        if not metrics_path.is_file():
            warnings.warn(
                f"skipped {run_dir}: no {METRICS_FILE} (compute it with `t2l-eval {run_dir}`)",
                RunSkippedWarning,
                stacklevel=2,
            )
            continue
        try:
            record = json.loads(metrics_path.read_text())
            metrics = record["metrics"]
            if not isinstance(metrics, dict):
                raise ValueError("'metrics' is not a mapping")
            overrides = _read_overrides(run_dir)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            warnings.warn(
                f"skipped {run_dir}: cannot read its metrics or overrides ({exc}); recompute with "
                f"`t2l-eval --force {run_dir}`",
                RunSkippedWarning,
                stacklevel=2,
            )
            continue
        ckpt = run_files.checkpoint_path(run_dir)
        if ckpt is not None and metrics_path.stat().st_mtime_ns < ckpt.stat().st_mtime_ns:
            warnings.warn(
                f"{run_dir}/{METRICS_FILE} is older than its checkpoint (kept; update it with `t2l-eval {run_dir}`)",
                RunSkippedWarning,
                stacklevel=2,
            )
        collected.append(Run(run_dir, overrides, {k: _float(v) for k, v in metrics.items()}, record))
    return collected


def swept_keys(runs: Sequence[Run], include_seed: bool = False) -> list[str]:
    """The override keys whose values differ between ``runs`` (a key missing from some runs counts as
    differing), in the order they first appear in the runs' ``overrides.yaml``.

    ``seed`` is left out unless ``include_seed``: the table's statistics are taken over it.
    """
    order: dict[str, None] = {}
    for run in runs:
        order.update(dict.fromkeys(run.overrides))
    keys = []
    for key in order:
        if key == SEED and not include_seed:
            continue
        if len({run.overrides.get(key) for run in runs}) > 1:
            keys.append(key)
    return keys


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


# the table --------------------------------------------------------------------------------------------------


@dataclass
class Stat:
    """Mean and sample std (ddof=1; 0 for one value) over the finite values; NaN when there are none."""

    mean: float
    std: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        std = statistics.stdev(finite) if len(finite) > 1 else 0.0
        return cls(statistics.fmean(finite), std, len(finite))

    @property
    def empty(self) -> bool:
        return self.count == 0


@dataclass
class Row:
    values: tuple[str | None, ...]  # the swept keys' values (None: the key is not among the run's overrides)
    runs: list[Run]
    stats: dict[str, Stat]

    @property
    def n(self) -> int:
        return len(self.runs)


@dataclass
class Table:
    keys: list[str]
    metrics: list[str]
    rows: list[Row]

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


def table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> Table:
    """Group ``runs`` by the values of their swept keys (except seed) and summarise every metric per group.

    ``metrics``: the metric columns (default: every metric of any run, in first-seen order); a name that no
    run has raises :class:`~text2live.errors.InputError`. Rows are sorted by the keys' values (first-seen
    order, numeric order for keys whose values are all numbers); within a row the runs are sorted by seed.
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
    keys = swept_keys(runs)
    ranks = {key: _value_ranks(runs, key) for key in keys}
    groups: dict[tuple[str | None, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides.get(key) for key in keys), []).append(run)
    rows = []
    for values in sorted(groups, key=lambda vs: [ranks[k][v] for k, v in zip(keys, vs)]):
        members = sorted(groups[values], key=_seed_key)
        stats = {m: Stat.of(run.metrics.get(m, math.nan) for run in members) for m in metrics}
        rows.append(Row(values, members, stats))
    return Table(keys, list(metrics), rows)


# writers ----------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` through a temporary file, so that a partial file never appears."""
    return files.write_text(path, text)


def _save_png_atomic(image: Image.Image, path: Path) -> Path:
    with files.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def format_stat(stat: Stat, pm: str = " ± ") -> str:
    return MISSING if stat.empty else f"{stat.mean:.3f}{pm}{stat.std:.3f}"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(tab: Table) -> str:
    """A GitHub Markdown table: one column per swept key, ``mean ± std`` per metric, then ``n``."""
    header = [*tab.keys, *tab.metrics, "n"]
    align = [":---"] * len(tab.keys) + ["---:"] * (len(tab.metrics) + 1)
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    for row in tab.rows:
        cells = [MISSING if v is None else v for v in row.values]
        cells += [format_stat(row.stats[m]) for m in tab.metrics] + [str(row.n)]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _csv_float(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""


def to_csv(tab: Table) -> str:
    """One column per swept key, ``<metric>_mean`` and ``<metric>_std`` per metric, ``n``; full precision
    (``repr`` of the float, exact round trip); an empty cell for a missing key or a metric without values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*tab.keys, *(f"{m}_{s}" for m in tab.metrics for s in ("mean", "std")), "n"])
    for row in tab.rows:
        cells = ["" if v is None else v for v in row.values]
        for m in tab.metrics:
            cells += [_csv_float(row.stats[m].mean), _csv_float(row.stats[m].std)]
        writer.writerow([*cells, row.n])
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
    ``\\input``; keys and values are escaped."""
    spec = "l" * len(tab.keys) + "r" * (len(tab.metrics) + 1)
    header = [latex_escape(h) for h in (*tab.keys, *tab.metrics)] + ["$n$"]
    lines = [
        "% written by t2l-table; needs \\usepackage{booktabs}",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for row in tab.rows:
        cells = [LATEX_MISSING if v is None else latex_escape(v) for v in row.values]
        cells += [LATEX_MISSING if row.stats[m].empty else format_stat(row.stats[m], r" $\pm$ ") for m in tab.metrics]
        cells.append(str(row.n))
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_tables(tab: Table, out: str | os.PathLike) -> list[Path]:
    """``table.md``, ``table.csv`` and ``table.tex`` in ``out``; returns their paths."""
    out = Path(out)
    texts = (to_markdown(tab), to_csv(tab), to_latex(tab))
    return [_write_atomic(out / name, text) for name, text in zip(TABLE_FILES, texts)]


# gallery images ---------------------------------------------------------------------------------------------


@dataclass
class RunImages:
    """The three gallery images of a run (RGB, RGB, L) and, where they exist, the files to link to."""

    input: Image.Image
    input_key: tuple  # the same key: the same input (copied once into gallery_inputs/)
    composite: Image.Image
    alpha: Image.Image
    composite_file: Path | None = None
    alpha_file: Path | None = None


def _placeholder(mode: str = "RGB") -> Image.Image:
    colour = PLACEHOLDER if mode == "RGB" else PLACEHOLDER[0]
    return Image.new(mode, (64, 64), colour)


def _open(path: Path, mode: str) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.convert(mode)


def _load_input(image_path: str, resize: int) -> Image.Image:
    """The input as training saw it: :func:`text2live.io.load_image` (EXIF, modes, resize) as 8-bit RGB."""
    from text2live.io import load_image, to_uint8

    return Image.fromarray(to_uint8(load_image(image_path, resize)))


def _middle(num: int) -> int:
    return max(num, 1) // 2


def _video_images(run: Run, cfg) -> RunImages:
    """Middle frame of the input video | middle frame of ``edited.gif`` | union alpha of the edited layers."""
    import imageio.v2 as imageio

    from text2live.io import list_frames

    frames = list_frames(cfg.frames_dir)
    num_frames = cfg.get("num_frames") or len(frames)
    frames = frames[:num_frames]
    if not frames:
        raise InputError(f"frames_dir={cfg.frames_dir} holds no jpg/png frame")
    t = _middle(len(frames))
    input_image = _open(frames[t], "RGB")
    gif = run.path / "edited.gif"
    with imageio.get_reader(gif) as reader:
        count = reader.get_length()
        frame = np.asarray(reader.get_data(t if t < count else _middle(count)))
    frame = np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame[..., :3]
    composite = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    layers = list(cfg.get("edit_layers") or [])
    transparent = None
    for layer in layers:
        path = run.path / str(layer) / "frames" / f"{t:05d}.png"
        if not path.is_file():
            raise InputError(f"{path} is missing")
        with Image.open(path) as img:
            a = np.asarray(img.convert("RGBA"), dtype=np.float64)[..., 3] / 255.0
        transparent = (1 - a) if transparent is None else transparent * (1 - a)
    if transparent is None:
        raise InputError(f"{run.path} names no edit_layers")
    alpha = Image.fromarray(np.round((1 - transparent) * 255).astype(np.uint8))
    key = ("video", str(Path(cfg.frames_dir).expanduser().resolve()), t)
    return RunImages(input_image, key, composite, alpha)


def run_images(run: Run, input_cache: dict | None = None) -> RunImages:
    """The gallery images of ``run``: input | composite | alpha (see :func:`gallery`).

    A file that is missing or unreadable becomes a grey placeholder, with a warning.
    """
    cache = {} if input_cache is None else input_cache
    try:
        cfg = OmegaConf.load(run.path / run_files.CONFIG_FILE)
        if run.kind == "video" or "frames_dir" in cfg:
            return _video_images(run, cfg)
        resize = int(cfg.get("data", {}).get("resize_input", -1) or -1)
        key = ("image", str(Path(cfg.image_path).expanduser().resolve()), resize)
        if key not in cache:
            cache[key] = _load_input(cfg.image_path, resize)
        input_image = cache[key]
    except Exception as exc:  # one broken run must not stop the gallery
        warnings.warn(f"gallery: no input for {run.path} ({exc})", RunSkippedWarning, stacklevel=2)
        return RunImages(_placeholder(), ("missing", str(run.path)), _placeholder(), _placeholder("L"))
    images = {}
    for name, mode in (("composite", "RGB"), ("alpha", "L")):
        path = run.path / f"{name}.png"
        try:
            images[name] = (_open(path, mode), path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"gallery: cannot read {path} ({exc})", RunSkippedWarning, stacklevel=2)
            images[name] = (_placeholder(mode), None)
    (composite, composite_file), (alpha, alpha_file) = images["composite"], images["alpha"]
    return RunImages(input_image, key, composite, alpha, composite_file, alpha_file)


def fit_height(image: Image.Image, height: int) -> Image.Image:
    """``image`` scaled to ``height`` pixels, keeping its aspect ratio (Lanczos)."""
    width = max(1, round(image.width * height / image.height))
    if image.size == (width, height):
        return image.copy()
    return image.resize((width, height), Image.LANCZOS)


def run_label(run: Run, keys: Sequence[str]) -> str:
    """``edit=golden, experiment=study_cat, seed=0``: the run's values of the swept ``keys``."""
    parts = [f"{k}={run.overrides[k]}" for k in keys if k in run.overrides]
    return ", ".join(parts) if parts else run.path.name


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def contact_sheet(rows: Sequence[tuple[str, Sequence[Image.Image]]], tile_height: int = 160) -> Image.Image:
    """A grid of labelled rows of tiles under column headers (the geometry is described at :data:`GAP`)."""
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    fitted = [(label, [fit_height(t, tile_height).convert("RGB") for t in tiles]) for label, tiles in rows]
    cell = max((t.width for _, tiles in fitted for t in tiles), default=tile_height)
    label_width = max((measure.textlength(label, font=font) for label, _ in fitted), default=0)
    width = max(GAP + len(COLUMNS) * (cell + GAP), math.ceil(label_width) + 2 * GAP)
    row_height = LABEL_HEIGHT + tile_height + GAP
    sheet = Image.new("RGB", (width, GAP + HEADER_HEIGHT + len(fitted) * row_height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(COLUMNS):
        draw.text((GAP + c * (cell + GAP), GAP + 1), name, fill=TEXT_COLOUR, font=font)
    for r, (label, tiles) in enumerate(fitted):
        top = GAP + HEADER_HEIGHT + r * row_height
        draw.text((GAP, top + 1), label, fill=TEXT_COLOUR, font=font)
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (GAP + c * (cell + GAP) + (cell - tile.width) // 2, top + LABEL_HEIGHT))
    return sheet


# the gallery page -------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #111; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
th { background: #f3f3f3; text-align: left; }
td.label { font-family: ui-monospace, monospace; font-size: 0.85em; max-width: 22em; }
td img { display: block; }
td.metrics { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: nowrap; }
.missing { color: #999; }
"""


def _href(path: Path, out: Path) -> str:
    return html.escape(quote(Path(os.path.relpath(path, out)).as_posix(), safe="/=,+-_.~"), quote=True)


def key_metrics(run: Run) -> list[tuple[str, float]]:
    """The run's :data:`KEY_METRICS` (video runs: every ``<layer>/<metric>``), in that order."""
    shown = []
    for key in KEY_METRICS:
        shown += [(name, value) for name, value in run.metrics.items() if name == key or name.endswith(f"/{key}")]
    return shown


def gallery_html(entries: Sequence[tuple[Run, str, dict[str, Path | None]]], out: Path, tile_height: int) -> str:
    """The page: one table row per ``(run, label, {column: image file})``; paths relative to ``out``."""
    rows = []
    for run, label, images in entries:
        cells = [f'<td class="label"><a href="{_href(run.path, out)}">{html.escape(label)}</a></td>']
        for column in COLUMNS:
            path = images.get(column)
            if path is None:
                cells.append('<td class="missing">missing</td>')
            else:
                alt = html.escape(f"{column}: {label}", quote=True)
                src = _href(path, out)
                cells.append(f'<td><img src="{src}" height="{tile_height}" alt="{alt}" loading="lazy"></td>')
        metrics = "<br>".join(
            f"{html.escape(name)} = {value:.3f}" if math.isfinite(value) else f"{html.escape(name)} = {MISSING}"
            for name, value in key_metrics(run)
        )
        cells.append(f'<td class="metrics">{metrics or MISSING}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{h}</th>" for h in ("run", *COLUMNS, "metrics"))
    title = html.escape(f"t2l-table: {out.name}")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n'
        f"<body>\n<h1>{title}</h1>\n<p>{len(rows)} runs: input | composite | alpha.</p>\n"
        f"<table>\n<thead><tr>{header}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n"
        "</body>\n</html>\n"
    )


def gallery(
    tab: Table,
    out: str | os.PathLike,
    tile_height: int = 160,
    images: Callable[[Run, dict], RunImages] = run_images,
) -> list[Path]:
    """``gallery.png`` and ``gallery.html`` (with ``gallery_inputs/``) in ``out``, one row per run of ``tab``.

    Rows are sorted like the table, seeds together. Tiles: image runs show the resized input
    (``load_image(image_path, data.resize_input)``), ``composite.png`` and ``alpha.png``; video runs the middle
    frame of the input frames, the middle frame of ``edited.gif``, and the union alpha ``1 - prod(1 - a)`` of
    that frame over the edited layers' RGBA frames. Every input is copied once into ``gallery_inputs/<n>.png``
    (a video's edited middle frame and alpha also go there, as ``run<i>_composite.png``/``run<i>_alpha.png``).
    """
    if tile_height < 1:
        raise InputError(f"tile height {tile_height} must be a positive number of pixels")
    out = Path(out)
    inputs_dir = out / GALLERY_INPUTS
    label_keys = swept_keys(tab.runs, include_seed=True)
    cache: dict = {}
    input_files: dict[tuple, Path] = {}
    sheet_rows, entries = [], []
    for i, run in enumerate(tab.runs):
        found = images(run, cache)
        label = run_label(run, label_keys)
        if found.input_key[0] == "missing":
            files: dict[str, Path | None] = {"input": None}
        else:
            if found.input_key not in input_files:
                input_files[found.input_key] = _save_png_atomic(found.input, inputs_dir / f"{len(input_files)}.png")
            files = {"input": input_files[found.input_key]}
        for column, image, existing in (
            ("composite", found.composite, found.composite_file),
            ("alpha", found.alpha, found.alpha_file),
        ):
            if existing is not None:
                files[column] = existing
            elif found.input_key[0] == "video":
                files[column] = _save_png_atomic(image, inputs_dir / f"run{i}_{column}.png")
            else:
                files[column] = None
        sheet_rows.append((label, (found.input, found.composite, found.alpha)))
        entries.append((run, label, files))
    png = _save_png_atomic(contact_sheet(sheet_rows, tile_height), out / GALLERY_PNG)
    page = _write_atomic(out / GALLERY_HTML, gallery_html(entries, out, tile_height))
    return [png, page]


# command line -----------------------------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _positive(text: str) -> int:
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
        description=(
            "Summarise the evaluated runs of a sweep (t2l-train -m +sweep=...) as a table: runs are grouped by the\n"
            "overrides that differ between them (except seed), each metric shown as mean ± sample std over the\n"
            "group's seeds, with the run count n. Writes table.md, table.csv, table.tex and a gallery (gallery.png,\n"
            "gallery.html: input | composite | alpha per run) into the folder, and prints the Markdown table."
        ),
        epilog=(
            "examples:\n"
            "  t2l-eval outputs/sweeps/fur && t2l-table outputs/sweeps/fur\n"
            "  t2l-table outputs/sweeps/ablations --metrics clip_score,preservation_psnr\n"
            "  t2l-table outputs/sweeps/fur --out paper/fur --no-gallery\n"
            "\n"
            "Only runs with a metrics.json count (compute them with t2l-eval); the others are named in a warning.\n"
            "Exit status 2 (with one 'error:' line) when the folder does not exist or holds no evaluated run."
        ),
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
        "--tile-height", type=_positive, default=160, help="height of the gallery's tiles in pixels (default: 160)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        _fail(f"{folder} is not a folder: pass a sweep folder, a run folder or a folder of runs (e.g. outputs/)")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics is not None else None
    if metrics is not None and not metrics:
        _fail("--metrics is empty: pass metric names separated by commas, e.g. --metrics clip_score")
    out = Path(args.out).expanduser() if args.out else folder
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RunSkippedWarning)
            found = collect(folder)
            _print_warnings(caught)
            caught.clear()
            if not found:
                from text2live.runs import find_runs

                if not find_runs(folder):
                    _fail(
                        f"no finished run (a folder with {run_files.CONFIG_FILE} and {run_files.DONE_FILE}) "
                        f"at or below {folder}"
                    )
                _fail(f"no run at or below {folder} has metrics.json: compute them first with `t2l-eval {folder}`")
            tab = table(found, metrics)
            print(to_markdown(tab), end="")
            written = write_tables(tab, out)
            if not args.no_gallery:
                written += gallery(tab, out, args.tile_height)
            _print_warnings(caught)
    except Text2LiveError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write into {out}: {exc.strerror or exc}")
    print()
    for path in written:
        print(f"wrote {path}")


def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        if issubclass(w.category, RunSkippedWarning):
            print(f"warning: {w.message}", file=sys.stderr)


if __name__ == "__main__":
    main()
