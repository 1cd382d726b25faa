"""The gallery of a sweep: a contact sheet (``gallery.png``) and a page (``gallery.html``), one row per run.

Columns: the input, the composite, the alpha matte and the edit layer on a green screen (see :func:`run_images`
for what a video run shows). The page is rendered from ``templates/gallery.html.j2``; it also shows each run's
prompts and every metric of its ``metrics.json``, and sorts its rows by the column whose header is clicked.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from text2live import files
from text2live.errors import InputError
from text2live.reporting.collect import Run, RunSkippedWarning, read_config, swept_keys
from text2live.reporting.stats import Table, metric_names, prompt_names
from text2live.reporting.tables import MISSING

GALLERY_PNG = "gallery.png"
GALLERY_HTML = "gallery.html"
GALLERY_INPUTS = "gallery_inputs"
TEMPLATE = "gallery.html.j2"
COLUMNS = ("input", "composite", "alpha", "greenscreen")
TITLES = {"input": "input", "composite": "composite", "alpha": "alpha", "greenscreen": "edit on green screen"}
# A run's own output file behind each column (image runs).
OUTPUT_FILES = {"composite": "composite.png", "alpha": "alpha.png", "greenscreen": "edit_on_greenscreen.png"}
MODES = {"input": "RGB", "composite": "RGB", "alpha": "L", "greenscreen": "RGB"}

# Geometry of gallery.png, in pixels. Every tile is scaled to ``tile_height`` and centred in a cell of the widest
# tile's width ``W``. Width: max(GAP + 4 * (W + GAP), widest label + 2 * GAP). Height: GAP + HEADER_HEIGHT +
# rows * (LABEL_HEIGHT + tile_height + GAP). Row r's tiles start at y = GAP + HEADER_HEIGHT +
# r * (LABEL_HEIGHT + tile_height + GAP) + LABEL_HEIGHT; column c's cell at x = GAP + c * (W + GAP).
GAP = 4
HEADER_HEIGHT = 16
LABEL_HEIGHT = 14
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
PLACEHOLDER = (200, 200, 200)


@dataclass
class RunImages:
    """The gallery images of a run, one per :data:`COLUMNS` entry, and the run's own files to link to."""

    input: Image.Image
    input_key: tuple  # the same key: the same input (copied once into gallery_inputs/); ("missing", ...): none
    composite: Image.Image
    alpha: Image.Image
    greenscreen: Image.Image
    files: dict[str, Path] = field(default_factory=dict)  # column -> the run's file (image runs)

    def tile(self, column: str) -> Image.Image:
        return getattr(self, column)


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


def _back_to_front(layers: Sequence[str]) -> list[str]:
    return sorted(layers, key=lambda name: name != "background")


def _video_images(run: Run, cfg: dict) -> RunImages:
    """Middle frame of the input video | of ``edited.gif`` | union alpha of the edited layers | the edited
    layers over green."""
    import imageio.v2 as imageio

    from text2live.generator import GREENSCREEN_RGB
    from text2live.io import list_frames

    frames = list_frames(cfg["frames_dir"])
    num_frames = cfg.get("num_frames") or len(frames)
    frames = frames[:num_frames]
    if not frames:
        raise InputError(f"frames_dir={cfg['frames_dir']} holds no jpg/png frame")
    t = _middle(len(frames))
    input_image = _open(frames[t], "RGB")
    with imageio.get_reader(run.path / "edited.gif") as reader:
        count = reader.get_length()
        frame = np.asarray(reader.get_data(t if t < count else _middle(count)))
    frame = np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame[..., :3]
    composite = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    layers = [str(layer) for layer in cfg.get("edit_layers") or []]
    if not layers:
        raise InputError(f"{run.path} names no edit_layers")
    transparent, screen = None, None
    for layer in _back_to_front(layers):
        path = run.path / layer / "frames" / f"{t:05d}.png"
        if not path.is_file():
            raise InputError(f"{path} is missing")
        with Image.open(path) as img:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float64) / 255.0
        rgb, a = rgba[..., :3], rgba[..., 3:]
        if screen is None:
            screen = np.broadcast_to(np.asarray(GREENSCREEN_RGB, dtype=np.float64), rgb.shape)
            transparent = np.ones_like(a)
        screen = a * rgb + (1 - a) * screen
        transparent = transparent * (1 - a)
    alpha = Image.fromarray(np.round((1 - transparent[..., 0]) * 255).astype(np.uint8))
    greenscreen = Image.fromarray(np.round(screen * 255).astype(np.uint8))
    key = ("video", str(Path(cfg["frames_dir"]).expanduser().resolve()), t)
    return RunImages(input_image, key, composite, alpha, greenscreen)


def run_images(run: Run, input_cache: dict | None = None) -> RunImages:
    """The gallery images of ``run``, one per column (input | composite | alpha | edit on green screen).

    Image runs: the resized input (``load_image(image_path, data.resize_input)``), ``composite.png``,
    ``alpha.png`` and ``edit_on_greenscreen.png``. Video runs, at the middle frame t: the input frame, the frame
    of ``edited.gif``, the union alpha ``1 - prod(1 - a)`` over the edited layers' RGBA frames, and those
    frames composited over green, background first (with one layer: frame t of its ``edit_on_greenscreen.mp4``).
    A file that is missing or unreadable becomes a grey placeholder, with a warning.
    """
    cache = {} if input_cache is None else input_cache
    try:
        cfg = read_config(run.path)
        if run.kind == "video" or "frames_dir" in cfg:
            return _video_images(run, cfg)
        resize = int((cfg.get("data") or {}).get("resize_input", -1) or -1)
        key = ("image", str(Path(cfg["image_path"]).expanduser().resolve()), resize)
        if key not in cache:
            cache[key] = _load_input(cfg["image_path"], resize)
        input_image = cache[key]
    except Exception as exc:  # noqa: BLE001 - one broken run must not stop the gallery
        warnings.warn(f"gallery: no input for {run.path} ({exc})", RunSkippedWarning, stacklevel=2)
        tiles = (_placeholder(MODES[c]) for c in COLUMNS[1:])
        return RunImages(_placeholder(), ("missing", str(run.path)), *tiles)
    tiles, found = {}, {}
    for column, name in OUTPUT_FILES.items():
        path = run.path / name
        try:
            tiles[column], found[column] = _open(path, MODES[column]), path
        except (OSError, ValueError) as exc:
            warnings.warn(f"gallery: cannot read {path} ({exc})", RunSkippedWarning, stacklevel=2)
            tiles[column] = _placeholder(MODES[column])
    return RunImages(input_image, key, **tiles, files=found)


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


def sheet_label(run: Run, keys: Sequence[str]) -> str:
    """The label above a run's tiles in gallery.png: :func:`run_label`, then its prompts."""
    prompts = "; ".join(f"{name}: {text}" for name, text in run.prompts.items())
    return run_label(run, keys) + (f" | {prompts}" if prompts else "")


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
    for c, column in enumerate(COLUMNS):
        draw.text((GAP + c * (cell + GAP), GAP + 1), TITLES[column], fill=TEXT_COLOUR, font=font)
    for r, (label, tiles) in enumerate(fitted):
        top = GAP + HEADER_HEIGHT + r * row_height
        draw.text((GAP, top + 1), label, fill=TEXT_COLOUR, font=font)
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (GAP + c * (cell + GAP) + (cell - tile.width) // 2, top + LABEL_HEIGHT))
    return sheet


# the page ---------------------------------------------------------------------------------------------------


def _href(path: Path, out: Path) -> str:
    return quote(Path(os.path.relpath(path, out)).as_posix(), safe="/=,+-_.~")


def _metric_cell(value: float) -> dict:
    if not math.isfinite(value):
        return {"text": MISSING, "value": ""}
    return {"text": f"{value:.3f}", "value": repr(value)}


def gallery_html(entries: Sequence[tuple[Run, str, dict[str, Path | None]]], out: Path, tile_height: int) -> str:
    """The page: one table row per ``(run, label, {column: image file})``; paths relative to ``out``."""
    import jinja2

    runs = [run for run, _, _ in entries]
    rows = []
    for index, (run, label, images) in enumerate(entries):
        rows.append(
            {
                "index": index + 1,
                "label": label,
                "href": _href(run.path, out),
                "prompts": list(run.prompts.items()),
                "images": [(TITLES[c], None if images.get(c) is None else _href(images[c], out)) for c in COLUMNS],
                "metrics": [_metric_cell(run.metrics.get(m, math.nan)) for m in metric_names(runs)],
            }
        )
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("text2live.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE).render(
        title=f"t2l-table: {out.name}",
        columns=[TITLES[c] for c in COLUMNS],
        metrics=metric_names(runs),
        with_prompts=bool(prompt_names(runs)),
        rows=rows,
        tile_height=tile_height,
    )


def _save_png(image: Image.Image, path: Path) -> Path:
    with files.atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def gallery(
    tab: Table,
    out: str | os.PathLike,
    tile_height: int = 160,
    images: Callable[[Run, dict], RunImages] = run_images,
) -> list[Path]:
    """``gallery.png`` and ``gallery.html`` (with ``gallery_inputs/``) in ``out``, one row per run of ``tab``.

    Rows are sorted like the table, seeds together; the tiles are described at :func:`run_images`. Every input
    is copied once into ``gallery_inputs/<n>.png``; a video's tiles, which are not files of the run, also go
    there (``run<i>_composite.png``, ``run<i>_alpha.png``, ``run<i>_greenscreen.png``).
    """
    if tile_height < 1:
        raise InputError(f"tile height {tile_height} must be a positive number of pixels")
    out = Path(out)
    inputs_dir = out / GALLERY_INPUTS
    label_keys = list(dict.fromkeys([*tab.keys, *swept_keys(tab.runs, include_seed=True)]))
    cache: dict = {}
    input_files: dict[tuple, Path] = {}
    sheet_rows, entries = [], []
    for i, run in enumerate(tab.runs):
        found = images(run, cache)
        kind = found.input_key[0]
        linked: dict[str, Path | None] = {"input": None}
        if kind != "missing":
            if found.input_key not in input_files:
                input_files[found.input_key] = _save_png(found.input, inputs_dir / f"{len(input_files)}.png")
            linked["input"] = input_files[found.input_key]
        for column in COLUMNS[1:]:
            if column in found.files:
                linked[column] = found.files[column]
            elif kind == "video":
                linked[column] = _save_png(found.tile(column), inputs_dir / f"run{i}_{column}.png")
            else:
                linked[column] = None
        sheet_rows.append((sheet_label(run, label_keys), [found.tile(c) for c in COLUMNS]))
        entries.append((run, run_label(run, label_keys), linked))
    png = _save_png(contact_sheet(sheet_rows, tile_height), out / GALLERY_PNG)
    page = files.write_text(out / GALLERY_HTML, gallery_html(entries, out, tile_height))
    return [png, page]
