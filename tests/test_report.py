"""t2l-table (text2live.reporting, text2live.cli.table) on hand-built run folders: no training, no CLIP."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

import imageio.v2 as imageio
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from text2live import reporting as report
from text2live.cli.table import main
from text2live.errors import InputError
from text2live.reporting import RunSkippedWarning
from text2live.reporting.gallery import BACKGROUND, GAP, HEADER_HEIGHT, LABEL_HEIGHT

CAT_COLOUR = (20, 40, 220)  # the solid "cat" input, 40 x 20 px, resized at load to 20 x 10 (resize_input=10)
CUP_COLOUR = (30, 160, 60)  # the solid "cup" input, 30 x 30 px, kept at its size (resize_input=-1)
EDIT_COLOURS = {"golden": (230, 190, 20), "silver": (180, 180, 190)}
ALPHA = {"golden": 128, "silver": 64}
SCREEN_COLOURS = {"golden": (120, 177, 64), "silver": (10, 177, 140)}  # edit_on_greenscreen.png


def solid(path: Path, size: tuple[int, int], colour, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return {
        "cat": solid(tmp_path / "in" / "cat.png", (40, 20), CAT_COLOUR),
        "cup": solid(tmp_path / "in" / "cup.png", (30, 30), CUP_COLOUR),
    }


def make_run(
    folder: Path,
    overrides: list[str],
    metrics: dict | None,
    image_path: Path,
    resize: int = 10,
    edit: str = "golden",
    done: bool = True,
    name: str | None = None,
    prompts: dict | None = None,
) -> Path:
    """A finished image run as t2l-train + t2l-eval leave it (outputs are solid colours)."""
    run = folder / (name or ",".join(o for o in overrides if not o.startswith("+sweep")))
    run.mkdir(parents=True)
    cfg = {"image_path": str(image_path), "data": {"resize_input": resize}, "seed": 0, "name": "study"}
    cfg.update(prompts or {})
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    with Image.open(image_path) as img:
        size = img.size if resize <= 0 else (round(img.width * resize / min(img.size)), resize)
    solid(run / "composite.png", size, EDIT_COLOURS[edit])
    solid(run / "alpha.png", size, ALPHA[edit], mode="L")
    solid(run / "edit_on_greenscreen.png", size, SCREEN_COLOURS[edit])
    if metrics is not None:
        record = {"run_dir": str(run), "name": "study", "seed": 0, "steps": 3, "kind": "image", "metrics": metrics}
        (run / "metrics.json").write_text(json.dumps(record))
    if done:
        (run / "DONE").write_text("")
    return run


# edit x seed, clip_score per (edit, seed); the silver group's psnr is missing everywhere (null / NaN).
CLIP = {("golden", 0): 1.0, ("golden", 1): 2.0, ("golden", 2): 4.0, ("silver", 0): 0.5, ("silver", 1): None}
PSNR = {("golden", 0): 20.0, ("golden", 1): None, ("golden", 2): 23.0, ("silver", 0): None, ("silver", 1): math.nan}


@pytest.fixture
def sweep(tmp_path: Path, inputs) -> Path:
    """A fur-like sweep: +sweep=fur and experiment constant, edit and seed swept (5 runs, 2 groups)."""
    folder = tmp_path / "sweeps" / "fur"
    for (edit, seed), clip in CLIP.items():
        overrides = ["+sweep=fur", f"edit={edit}", "experiment=study_cat", f"seed={seed}"]
        metrics = {"clip_score": clip, "preservation_psnr": PSNR[edit, seed]}
        make_run(folder, overrides, metrics, inputs["cat"], edit=edit)
    return folder


# collecting -------------------------------------------------------------------------------------------------


def test_parse_overrides_strips_prefixes_and_splits_at_the_first_equals():
    parsed = report.parse_overrides(["+sweep=fur", "~ablation", "++a.b=x=y", "edit_layers=[foreground,background]"])
    assert parsed == {"sweep": "fur", "ablation": "", "a.b": "x=y", "edit_layers": "[foreground,background]"}
    assert list(parsed) == ["sweep", "ablation", "a.b", "edit_layers"]


def test_collect_reads_overrides_and_metrics(sweep: Path):
    runs = report.collect(sweep)
    assert len(runs) == 5
    first = runs[0]
    assert first.overrides == {"sweep": "fur", "edit": "golden", "experiment": "study_cat", "seed": "0"}
    assert first.metrics["clip_score"] == 1.0
    assert math.isnan(first.metrics["preservation_psnr"]) is False
    assert math.isnan(runs[1].metrics["preservation_psnr"])  # null -> NaN


def test_collect_skips_runs_without_metrics_or_done_with_a_warning(sweep: Path, inputs):
    make_run(sweep, ["edit=golden", "seed=7"], None, inputs["cat"])
    make_run(sweep, ["edit=golden", "seed=8"], {"clip_score": 1.0}, inputs["cat"], done=False)
    with pytest.warns(RunSkippedWarning, match=r"t2l-eval .*seed=7"):
        runs = report.collect(sweep)
    assert len(runs) == 5
    assert all(run.overrides["seed"] not in ("7", "8") for run in runs)


def test_collect_warns_on_stale_metrics(sweep: Path):
    run = next(p for p in sweep.iterdir() if p.name.startswith("edit=golden") and p.name.endswith("seed=0"))
    ckpt = run / "checkpoints" / "final.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_text("")
    metrics_ns = (run / "metrics.json").stat().st_mtime_ns
    os.utime(ckpt, ns=(metrics_ns + 10**9, metrics_ns + 10**9))
    with pytest.warns(RunSkippedWarning, match="older than its checkpoint"):
        assert len(report.collect(sweep)) == 5  # kept, but named


def test_collect_falls_back_to_the_folder_name_without_overrides_yaml(tmp_path: Path, inputs):
    run = make_run(tmp_path / "s", ["edit=golden", "layers=[a,b]", "seed=3"], {"clip_score": 1.0}, inputs["cat"])
    (run / "overrides.yaml").unlink()
    (found,) = report.collect(tmp_path / "s")
    assert found.overrides == {"edit": "golden", "layers": "[a,b]", "seed": "3"}


def test_swept_keys_leave_out_constants_and_seed_in_first_seen_order(tmp_path: Path, inputs):
    folder = tmp_path / "s"
    for exp in ("study_cup", "study_cat"):
        for edit in ("silver", "golden"):
            for seed in (0, 1):
                overrides = ["+sweep=fur", f"edit={edit}", f"experiment={exp}", f"seed={seed}"]
                make_run(folder, overrides, {"m": 1.0}, inputs["cat"], edit=edit)
    runs = report.collect(folder)
    assert report.swept_keys(runs) == ["edit", "experiment"]
    assert report.swept_keys(runs, include_seed=True) == ["edit", "experiment", "seed"]
    # a key that only some runs have differs between runs
    make_run(
        folder, ["+sweep=fur", "edit=golden", "experiment=study_cat", "+ablation=no_crops"], {"m": 1}, inputs["cat"]
    )
    assert report.swept_keys(report.collect(folder)) == ["edit", "experiment", "ablation"]


# the table --------------------------------------------------------------------------------------------------


def test_table_groups_over_seeds_with_mean_and_sample_std(sweep: Path):
    tab = report.table(report.collect(sweep))
    assert tab.keys == ["edit"]
    assert tab.metrics == ["clip_score", "preservation_psnr"]
    golden, silver = tab.rows
    assert golden.values == ("golden",) and golden.n == 3
    assert [r.overrides["seed"] for r in golden.runs] == ["0", "1", "2"]
    # 1, 2, 4: mean 7/3, sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    assert golden.stats["clip_score"].mean == pytest.approx(7 / 3)
    assert golden.stats["clip_score"].std == pytest.approx(math.sqrt(7 / 3))
    # psnr: 20, null, 23 -> the null is ignored: mean 21.5, std sqrt(4.5)
    assert golden.stats["preservation_psnr"].mean == pytest.approx(21.5)
    assert golden.stats["preservation_psnr"].std == pytest.approx(math.sqrt(4.5))
    # silver: clip 0.5 and null -> one value, no spread; psnr null and NaN -> no value at all
    assert silver.n == 2
    clip = silver.stats["clip_score"]
    assert (clip.mean, clip.count, clip.has_spread) == (0.5, 1, False) and math.isnan(clip.std)
    assert silver.stats["preservation_psnr"].empty


def test_table_metric_subset_and_unknown_metric(sweep: Path):
    runs = report.collect(sweep)
    assert report.table(runs, ["preservation_psnr"]).metrics == ["preservation_psnr"]
    with pytest.raises(InputError, match="unknown metric.*nope.*clip_score"):
        report.table(runs, ["nope"])


def test_rows_sort_numeric_values_numerically(tmp_path: Path, inputs):
    for weight in ("10", "2", "0.5"):
        make_run(tmp_path / "s", [f"loss.w={weight}", "seed=0"], {"m": float(weight)}, inputs["cat"])
    tab = report.table(report.collect(tmp_path / "s"))
    assert [row.values for row in tab.rows] == [("0.5",), ("2",), ("10",)]


def test_markdown(sweep: Path):
    text = report.to_markdown(report.table(report.collect(sweep)))
    lines = text.splitlines()
    assert lines[0] == "| edit | clip_score | preservation_psnr | n |"
    assert lines[1] == "| :--- | ---: | ---: | ---: |"
    assert lines[2] == "| golden | 2.333 ± 1.528 | 21.500 ± 2.121 | 3 |"
    assert lines[3] == "| silver | 0.500 (n=1) | – | 2 |"  # one value: no spread, and how many


def test_csv_round_trips_full_precision(sweep: Path):
    tab = report.table(report.collect(sweep))
    rows = list(csv.DictReader(io.StringIO(report.to_csv(tab))))
    assert list(rows[0]) == [
        "edit",
        "clip_score_mean",
        "clip_score_std",
        "preservation_psnr_mean",
        "preservation_psnr_std",
        "n",
    ]
    golden, silver = rows
    assert golden["edit"] == "golden" and int(golden["n"]) == 3
    assert float(golden["clip_score_mean"]) == tab.rows[0].stats["clip_score"].mean  # exact
    assert float(golden["clip_score_std"]) == pytest.approx(math.sqrt(7 / 3), rel=1e-15)
    assert float(golden["preservation_psnr_std"]) == pytest.approx(math.sqrt(4.5), rel=1e-15)
    assert (silver["preservation_psnr_mean"], silver["preservation_psnr_std"]) == ("", "")
    assert (silver["clip_score_mean"], silver["clip_score_std"]) == ("0.5", "")  # no spread of one value


def test_latex_escapes_and_uses_booktabs(tmp_path: Path, inputs):
    for ablation, value in (("none", 1.0), ("no_crops", 2.0)):
        for seed in (0, 1):
            overrides = ["experiment=study_cat", f"ablation={ablation}", f"seed={seed}"]
            make_run(tmp_path / "s", overrides, {"clip_score": value + seed, "a%&#": 1.0}, inputs["cat"])
    text = report.to_latex(report.table(report.collect(tmp_path / "s")))
    assert "\\begin{tabular}{lrrr}" in text
    assert text.index("\\toprule") < text.index("\\midrule") < text.index("\\bottomrule")
    assert "ablation & clip\\_score & a\\%\\&\\# & $n$ \\\\" in text
    assert "no\\_crops & 2.500 $\\pm$ 0.707 & 1.000 $\\pm$ 0.000 & 2 \\\\" in text
    assert "none & 1.500 $\\pm$ 0.707" in text
    assert report.latex_escape("a_b%c&d#e$f{g}~^\\") == (
        "a\\_b\\%c\\&d\\#e\\$f\\{g\\}\\textasciitilde{}\\textasciicircum{}\\textbackslash{}"
    )


# the gallery ------------------------------------------------------------------------------------------------


def tile_box(row: int, column: int, cell: int, tile: tuple[int, int], height: int) -> tuple[int, int, int, int]:
    """Where a tile of size ``tile`` lies in gallery.png (the geometry documented in text2live.reporting.gallery)."""
    x = GAP + column * (cell + GAP) + (cell - tile[0]) // 2
    y = GAP + HEADER_HEIGHT + row * (LABEL_HEIGHT + height + GAP) + LABEL_HEIGHT
    return x, y, x + tile[0], y + tile[1]


def assert_solid(sheet: Image.Image, box, colour) -> None:
    pixels = np.asarray(sheet.crop(box)).reshape(-1, 3)
    assert (pixels == np.asarray(colour)).all(), f"{box}: {np.unique(pixels, axis=0)[:4]} != {colour}"


def test_gallery_png_rows_tiles_and_pixels(sweep: Path, tmp_path: Path, inputs):
    height = 40
    # a second input (the cup, 30 x 30 -> a 40 x 40 tile) next to the cat (40 x 20 -> 20 x 10 -> 80 x 40 tiles);
    # the widest label ("edit=golden, experiment=study_cat, seed=0", ~200 px) is narrower than the tiles
    make_run(sweep, ["+sweep=fur", "edit=silver", "experiment=study_cup", "seed=0"], {"clip_score": 1.0},
             inputs["cup"], resize=-1, edit="silver")  # fmt: skip
    tab = report.table(report.collect(sweep))
    written = report.gallery(tab, sweep, tile_height=height)
    assert written == [sweep / "gallery.png", sweep / "gallery.html"]
    sheet = Image.open(sweep / "gallery.png").convert("RGB")
    rows, cell = 6, 80
    assert sheet.size == (GAP + 4 * (cell + GAP), GAP + HEADER_HEIGHT + rows * (LABEL_HEIGHT + height + GAP))
    order = [(run.overrides["edit"], run.overrides["experiment"], run.overrides["seed"]) for run in tab.runs]
    assert order == [
        ("golden", "study_cat", "0"),
        ("golden", "study_cat", "1"),
        ("golden", "study_cat", "2"),
        ("silver", "study_cat", "0"),
        ("silver", "study_cat", "1"),
        ("silver", "study_cup", "0"),
    ]
    for row, (edit, experiment, _) in enumerate(order):
        tile = (40, 40) if experiment == "study_cup" else (80, 40)
        assert_solid(sheet, tile_box(row, 0, cell, tile, height), CUP_COLOUR if tile == (40, 40) else CAT_COLOUR)
        assert_solid(sheet, tile_box(row, 1, cell, tile, height), EDIT_COLOURS[edit])
        assert_solid(sheet, tile_box(row, 2, cell, tile, height), (ALPHA[edit],) * 3)
        assert_solid(sheet, tile_box(row, 3, cell, tile, height), SCREEN_COLOURS[edit])
    # the cup's narrower tiles are centred in their cells, on the background
    x0, y0, _, _ = tile_box(5, 0, cell, (40, 40), height)
    assert sheet.getpixel((x0 - 1, y0)) == BACKGROUND
    # the label strip above a row holds text (dark pixels), the header too
    label = np.asarray(sheet.crop((GAP, GAP + HEADER_HEIGHT, GAP + 60, GAP + HEADER_HEIGHT + LABEL_HEIGHT)))
    assert label.min() < 128
    assert np.asarray(sheet.crop((GAP, GAP, GAP + 30, GAP + HEADER_HEIGHT))).min() < 128


def test_gallery_widens_for_long_labels(sweep: Path):
    report.gallery(report.table(report.collect(sweep)), sweep, tile_height=8)
    with Image.open(sweep / "gallery.png") as sheet:
        assert sheet.size[0] > GAP + 4 * (16 + GAP)  # "edit=silver, seed=1" is wider than four 16 px tiles
        assert sheet.size[1] == GAP + HEADER_HEIGHT + 5 * (LABEL_HEIGHT + 8 + GAP)


def test_gallery_html_references_existing_files_and_escapes_labels(tmp_path: Path, inputs):
    folder = tmp_path / "sweep"
    prompts = ['a "fancy" <cat>', "R&D cat"]
    for i, prompt in enumerate(prompts):
        for seed in (0, 1):
            make_run(folder, [f"comp_text={prompt}", f"seed={seed}"], {"clip_score": 0.25 + i, "other": 1.0},
                     inputs["cat" if i == 0 else "cup"], name=f"run{i}{seed}")  # fmt: skip
    tab = report.table(report.collect(folder))
    report.gallery(tab, folder, tile_height=24)
    # one copy per distinct input
    assert sorted(p.name for p in (folder / "gallery_inputs").iterdir()) == ["0.png", "1.png"]
    with Image.open(folder / "gallery_inputs" / "0.png") as img:
        assert img.size == (20, 10)  # the input as training saw it (resize_input=10)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, moved)
    shutil.rmtree(tmp_path / "in")  # the original inputs are gone too
    page = (moved / "gallery.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4 * 4
    for src in sources:
        path = unquote(html.unescape(src))
        assert not Path(path).is_absolute() and (moved / path).is_file(), path
    for prompt in prompts:
        for seed in (0, 1):
            assert f"comp_text={prompt}, seed={seed}" in html.unescape(page)
    assert "<cat>" not in page
    # every metric is a column: header, then 3 decimals shown and the full value to sort by
    assert '<th class="sortable">clip_score</th>' in page and '<th class="sortable">other</th>' in page
    assert '<td class="metric" data-value="0.25">0.250</td>' in page


LAYER_COLOURS = {"foreground": (200, 0, 0), "background": (0, 0, 200)}
LAYER_ALPHA = {"foreground": 0.5, "background": 0.2}  # at the middle frame (t = 2); frame t has t / 2 of it
GREEN = (0, 177, 64)


def write_video_run(folder: Path, tmp_path: Path) -> Path:
    """A video run: 5 solid input frames, edited.gif, and two edited layers' RGBA frames; prompts per layer."""
    frames_dir = tmp_path / "video" / "frames"
    for t in range(5):
        solid(frames_dir / f"{t:05d}.jpg" if t == 4 else frames_dir / f"{t:05d}.png", (48, 24), (t * 50, 0, 0))
    solid(frames_dir / "99999.png", (48, 24), (255, 255, 255))  # beyond num_frames
    run = folder / "experiment=video,seed=0"
    run.mkdir(parents=True)
    cfg = {
        "frames_dir": str(frames_dir),
        "num_frames": 5,
        "edit_layers": ["foreground", "background"],
        "comp_text": None,
        "foreground": {"comp_text": ["crochet swan", "knitted swan"], "src_text": "swan", "screen_text": "crochet"},
        "background": {"comp_text": "frozen lake", "src_text": "lake", "screen_text": None},
    }
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (run / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(["experiment=video", "seed=0"])))
    gif = [np.full((12, 24, 3), (0, 40 * t, 0), dtype=np.uint8) for t in range(5)]
    imageio.mimwrite(run / "edited.gif", gif, format="GIF", duration=100, loop=0)
    for layer, a in LAYER_ALPHA.items():
        for t in range(5):
            rgba = (*LAYER_COLOURS[layer], round(255 * a * t / 2))
            solid(run / layer / "frames" / f"{t:05d}.png", (24, 12), rgba, "RGBA")
    metrics = {"foreground/clip_score": 0.3, "foreground/clip_directional_similarity": 0.1, "frame_consistency": 1}
    (run / "metrics.json").write_text(json.dumps({"kind": "video", "seed": 0, "metrics": metrics}))
    (run / "DONE").write_text("")
    return run


def test_gallery_of_a_video_run(tmp_path: Path):
    folder = tmp_path / "videos"
    write_video_run(folder, tmp_path)
    tab = report.table(report.collect(folder))
    report.gallery(tab, folder, tile_height=24)
    sheet = Image.open(folder / "gallery.png").convert("RGB")
    cell = 48  # every tile is 2:1
    assert sheet.size[1] == GAP + HEADER_HEIGHT + LABEL_HEIGHT + 24 + GAP
    assert_solid(sheet, tile_box(0, 0, cell, (48, 24), 24), (100, 0, 0))  # input frame 2 of 5
    assert_solid(sheet, tile_box(0, 1, cell, (48, 24), 24), (0, 80, 0))  # edited.gif frame 2
    a = {layer: round(255 * value) / 255 for layer, value in LAYER_ALPHA.items()}
    union = 1 - (1 - a["foreground"]) * (1 - a["background"])
    alpha = np.asarray(sheet.crop(tile_box(0, 2, cell, (48, 24), 24)))
    assert np.abs(alpha.astype(int) - round(255 * union)).max() <= 1
    # green screen: the background layer over green, the foreground over that
    screen = a["background"] * np.array(LAYER_COLOURS["background"]) + (1 - a["background"]) * np.array(GREEN)
    screen = a["foreground"] * np.array(LAYER_COLOURS["foreground"]) + (1 - a["foreground"]) * screen
    tile = np.asarray(sheet.crop(tile_box(0, 3, cell, (48, 24), 24))).reshape(-1, 3).astype(int)
    assert np.abs(tile - np.round(screen)).max() <= 1
    page = (folder / "gallery.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 4
    for src in sources:
        assert (folder / unquote(html.unescape(src))).is_file()
        assert src.startswith("gallery_inputs/")
    for metric, shown in (("foreground/clip_score", "0.300"), ("foreground/clip_directional_similarity", "0.100")):
        assert f'<th class="sortable">{metric}</th>' in page and f">{shown}</td>" in page
    assert '<td class="metric" data-value="1.0">1.000</td>' in page  # frame_consistency
    with Image.open(folder / "gallery_inputs" / "run0_alpha.png") as img:
        assert img.mode == "L" and abs(img.getpixel((0, 0)) - round(255 * union)) <= 1
    with Image.open(folder / "gallery_inputs" / "run0_greenscreen.png") as img:
        assert np.abs(np.asarray(img.getpixel((0, 0))) - np.round(screen)).max() <= 1


def test_video_prompts_per_layer(tmp_path: Path):
    folder = tmp_path / "videos"
    write_video_run(folder, tmp_path)
    (run,) = report.collect(folder)
    assert run.prompts == {
        "foreground/comp_text": "crochet swan / knitted swan",
        "foreground/src_text": "swan",
        "foreground/screen_text": "crochet",
        "background/comp_text": "frozen lake",
        "background/src_text": "lake",
    }
    tab = report.table([run])
    assert report.to_markdown(tab).splitlines()[0] == (
        "| foreground/comp_text | foreground/src_text | foreground/screen_text | background/comp_text "
        "| background/src_text | foreground/clip_score | foreground/clip_directional_similarity "
        "| frame_consistency | n |"
    )
    report.gallery(tab, folder, tile_height=24)
    page = (folder / "gallery.html").read_text()
    assert (
        "foreground/comp_text: crochet swan / knitted swan<br>" in page and "background/comp_text: frozen lake" in page
    )


def test_gallery_survives_a_missing_output(sweep: Path):
    next(sweep.glob("edit=silver*seed=1")).joinpath("composite.png").unlink()
    tab = report.table(report.collect(sweep))
    with pytest.warns(RunSkippedWarning, match="composite.png"):
        report.gallery(tab, sweep, tile_height=16)
    assert '<td class="missing">missing</td>' in (sweep / "gallery.html").read_text()


# prompts and the sortable page -----------------------------------------------------------------------------

PROMPTS = {
    "golden": {"comp_text": "golden cat", "src_text": "cat", "screen_text": "golden"},
    "silver": {"comp_text": ["silver | cat", "metal cat"], "src_text": "cat", "screen_text": None},
}


@pytest.fixture
def prompted(tmp_path: Path, inputs) -> Path:
    folder = tmp_path / "prompted"
    for edit in ("golden", "silver"):
        for seed in (0, 1):
            make_run(folder, [f"edit={edit}", f"seed={seed}"], {"clip_score": seed + 0.5}, inputs["cat"], edit=edit,
                     prompts=PROMPTS[edit])  # fmt: skip
    return folder


def test_tables_show_the_prompts_of_the_runs(prompted: Path):
    tab = report.table(report.collect(prompted))
    assert tab.prompts == ["comp_text", "src_text", "screen_text"]
    lines = report.to_markdown(tab).splitlines()
    assert lines[0] == "| edit | comp_text | src_text | screen_text | clip_score | n |"
    assert lines[1] == "| :--- | :--- | :--- | :--- | ---: | ---: |"
    assert lines[2] == "| golden | golden cat | cat | golden | 1.000 ± 0.707 | 2 |"
    assert lines[3] == "| silver | silver \\| cat / metal cat | cat | – | 1.000 ± 0.707 | 2 |"
    grouped = list(csv.DictReader(io.StringIO(report.to_csv(tab))))
    assert [(r["comp_text"], r["screen_text"]) for r in grouped] == [
        ("golden cat", "golden"),
        ("silver | cat / metal cat", ""),
    ]
    per_run = list(csv.DictReader(io.StringIO(report.to_runs_csv(tab))))
    assert [r["comp_text"] for r in per_run] == ["golden cat"] * 2 + ["silver | cat / metal cat"] * 2
    latex = report.to_latex(tab)
    assert "\\begin{tabular}{llllrr}" in latex
    assert "golden & golden cat & cat & golden & 1.000 $\\pm$ 0.707 & 2 \\\\" in latex
    assert "silver & silver | cat / metal cat & cat & -- &" in latex


def test_gallery_shows_prompts_green_screen_and_sorts(prompted: Path):
    tab = report.table(report.collect(prompted))
    report.gallery(tab, prompted, tile_height=16)
    page = (prompted / "gallery.html").read_text()
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", page)
    assert headers == ["#", "run", "prompts", "input", "composite", "alpha", "edit on green screen", "clip_score"]
    assert "comp_text: golden cat<br>src_text: cat<br>screen_text: golden</td>" in page
    assert "comp_text: silver | cat / metal cat<br>src_text: cat</td>" in page
    # the green-screen column links each run's edit_on_greenscreen.png
    sources = [unquote(html.unescape(src)) for src in re.findall(r'<img src="([^"]+)"', page)]
    assert sources[3::4] == [f"{run.path.name}/edit_on_greenscreen.png" for run in tab.runs]
    # sortable: clickable headers for the run, prompts and every metric, values to sort by, inline script only
    assert re.findall(r'<th class="sortable">([^<]*)</th>', page) == ["#", "run", "prompts", "clip_score"]
    assert page.count('data-value="') == 2 * len(tab.runs)  # the row number and each metric cell
    assert "<script>" in page and 'addEventListener("click"' in page and "aria-sort" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no external resources
    with Image.open(prompted / "gallery.png") as sheet:  # the prompts are in the contact sheet's labels
        assert sheet.size[0] > GAP + 4 * (16 + GAP)


# a partly finished sweep ------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def make_job(folder: Path, overrides: list[str], *, config: bool = True, logs: dict[str, str] | None = None) -> Path:
    """A job folder without DONE: the config of a run that started (or not), and its logs."""
    job = folder / ",".join(overrides)
    job.mkdir(parents=True)
    if config:
        (job / "config.yaml").write_text("seed: 0\n")
        (job / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
    for name, text in (logs or {}).items():
        (job / name).write_text(text)
    return job


@pytest.fixture
def partial(tmp_path: Path, inputs) -> Path:
    """edit x lambda: golden (2 seeds) and silver (1 seed) finished at lambda=0; golden at lambda=1 unfinished,
    silver at lambda=1 failed."""
    folder = tmp_path / "partial"
    for edit, seed, clip in (("golden", 0, 1.0), ("golden", 1, 2.0), ("silver", 0, 0.5)):
        overrides = ["+sweep=p", f"edit={edit}", "loss.lambda=0", f"seed={seed}"]
        make_run(folder, overrides, {"clip_score": clip, "psnr": 20.0 + seed}, inputs["cat"], edit=edit)
    make_job(folder, ["+sweep=p", "edit=golden", "loss.lambda=1", "seed=0"], logs={"launcher.log": "step 3/10\n"})
    error = "[2026-01-02 10:00:00,000][text2live][ERROR] - error: the loss became non-finite at step 4\n"
    make_job(folder, ["+sweep=p", "edit=silver", "loss.lambda=1", "seed=0"], logs={"train.log": "started\n" + error})
    return folder


def test_a_partial_sweep_keeps_every_swept_key_and_names_the_missing_jobs(partial: Path, capsys):
    main([str(partial), "--tile-height", "16"])
    captured = capsys.readouterr()
    out = captured.out
    lines = out.splitlines()
    # loss.lambda is a column although every finished run has lambda=0
    assert lines[0] == "| edit | loss.lambda | clip_score | psnr | n |"
    assert lines[2] == "| golden | 0 | 1.500 ± 0.707 | 20.500 ± 0.707 | 2 |"
    assert lines[3] == "| silver | 0 | 0.500 | 20.000 | 1 |"  # one seed: the value alone, no ±
    assert "not in the table: 1 unfinished and 1 failed of 5 job(s)" in out
    unfinished = next(line for line in lines if line.strip().startswith("unfinished"))
    failed = next(line for line in lines if line.strip().startswith("failed"))
    assert "edit=golden,loss.lambda=1,seed=0" in unfinished and "resumes" in unfinished
    assert "edit=silver,loss.lambda=1,seed=0" in failed
    assert "error: the loss became non-finite at step 4" in failed and "train.log" in failed
    assert "error:" not in captured.err
    # the CSVs: per group (no std of one value), and per seed
    grouped = read_csv(partial / "table.csv")
    assert [(r["edit"], r["loss.lambda"], r["clip_score_std"], r["n"]) for r in grouped] == [
        ("golden", "0", repr(math.sqrt(0.5)), "2"),
        ("silver", "0", "", "1"),
    ]
    per_seed = read_csv(partial / "table_runs.csv")
    assert list(per_seed[0]) == ["edit", "loss.lambda", "seed", "clip_score", "psnr", "run"]
    assert [(r["edit"], r["seed"], float(r["clip_score"]), float(r["psnr"])) for r in per_seed] == [
        ("golden", "0", 1.0, 20.0),
        ("golden", "1", 2.0, 21.0),
        ("silver", "0", 0.5, 20.0),
    ]
    assert [(partial / r["run"]).is_dir() for r in per_seed] == [True] * 3
    assert "0.500 ($n=1$)" not in (partial / "table.tex").read_text()  # the row's n is 1 already
    assert "silver & 0 & 0.500 & 20.000 & 1 \\\\" in (partial / "table.tex").read_text()


def test_a_sweep_with_no_result_yet_names_its_jobs_in_the_error(tmp_path: Path, capsys):
    make_job(tmp_path / "s", ["edit=golden", "seed=0"])
    make_job(tmp_path / "s", ["edit=silver", "seed=0"], config=False, logs={"launcher.log": "Traceback..."})
    code, out, err = run_cli([str(tmp_path / "s")], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: no finished run")
    assert "1 unfinished and 1 failed of 2 job(s)" in err
    assert "edit=golden,seed=0" in out and "edit=silver,seed=0" in out


TRACEBACK = "Traceback (most recent call last):\n  File ...\ntorch.OutOfMemoryError: CUDA out of memory\n"


@pytest.mark.parametrize(
    "config, logs, state, reason",
    [
        (True, {}, "unfinished", "no DONE yet"),
        (True, {"launcher.log": "step 5\n", "train.log": "[t][text2live][INFO] - step 5\n"}, "unfinished", "resumes"),
        (True, {"train.log": "error: bad input\n\n"}, "failed", "error: bad input (see "),
        (True, {"train.log": "[t][text2live][ERROR] - error: bad input\n"}, "failed", "error: bad input (see "),
        (
            True,
            {"launcher.log": "step 5\n[launcher] the job was killed by signal 9 (SIGKILL)\n"},
            "failed",
            "the job was killed by signal 9",
        ),
        (True, {"launcher.log": TRACEBACK}, "failed", "torch.OutOfMemoryError: CUDA out of memory"),
        (True, {"launcher.log": "error: stopped by SIGTERM\nstep 6\n"}, "unfinished", "resumes"),  # resumed since
        (False, {"launcher.log": "starting\n"}, "failed", "ended before its run started"),
        (False, {"train.log": "error: image_path=x does not exist\n"}, "failed", "error: image_path=x"),
    ],
)
def test_job_states(config: bool, logs: dict, state: str, reason: str, tmp_path: Path):
    make_job(tmp_path, ["edit=golden", "seed=0"], config=config, logs=logs)
    (job,) = report.find_jobs(tmp_path)
    assert (job.state, job.overrides) == (state, {"edit": "golden", "seed": "0"})
    assert reason in job.reason


def test_the_newer_log_tells_how_a_job_ended(tmp_path: Path):
    job = make_job(tmp_path, ["seed=0"], logs={"train.log": "error: boom\n", "launcher.log": "step 9\n"})
    ns = (job / "train.log").stat().st_mtime_ns
    os.utime(job / "launcher.log", ns=(ns + 10**9, ns + 10**9))
    assert report.find_jobs(tmp_path)[0].state == "unfinished"  # resumed: its output goes on after the error
    os.utime(job / "train.log", ns=(ns + 2 * 10**9, ns + 2 * 10**9))
    assert report.find_jobs(tmp_path)[0].state == "failed"


def test_keys_from_a_folder_name_count_only_where_named(tmp_path: Path, inputs):
    """A job that failed before writing overrides.yaml is named by the swept keys only: the others stay constant."""
    folder = tmp_path / "s"
    for edit in ("golden", "silver"):
        make_run(folder, ["+sweep=s", f"edit={edit}", "experiment=study_cat", "seed=0"], {"m": 1.0}, inputs["cat"],
                 edit=edit)  # fmt: skip
    make_job(folder, ["edit=bronze", "seed=0"], config=False, logs={"launcher.log": "error: no such edit\n"})
    jobs = report.find_jobs(folder)
    assert [job.state for job in jobs] == ["failed", "finished", "finished"]
    assert report.swept_keys(jobs) == ["edit"]


# the command line -------------------------------------------------------------------------------------------


def test_cli_writes_tables_and_gallery(sweep: Path, capsys):
    main([str(sweep), "--tile-height", "20"])
    out = capsys.readouterr().out
    assert "| golden | 2.333 ± 1.528 | 21.500 ± 2.121 | 3 |" in out
    assert "not in the table" not in out
    for name in ("table.md", "table.csv", "table.tex", "table_runs.csv", "gallery.png", "gallery.html"):
        assert (sweep / name).is_file()
        assert f"wrote {sweep / name}" in out
    assert (sweep / "table.md").read_text() in out
    assert not list(sweep.rglob("*.part*"))
    assert Image.open(sweep / "gallery.png").size[1] == GAP + HEADER_HEIGHT + 5 * (LABEL_HEIGHT + 20 + GAP)


def test_cli_out_metrics_and_no_gallery(sweep: Path, tmp_path: Path, capsys):
    out = tmp_path / "paper" / "fur"
    main([str(sweep), "--out", str(out), "--metrics", "preservation_psnr", "--no-gallery"])
    assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md", "table.tex", "table_runs.csv"]
    assert (out / "table.md").read_text().splitlines()[0] == "| edit | preservation_psnr | n |"
    assert not (sweep / "table.md").exists()
    per_run = read_csv(out / "table_runs.csv")
    assert len(per_run) == 5 and all((out / r["run"] / "metrics.json").is_file() for r in per_run)
    assert [r["preservation_psnr"] for r in per_run] == ["20.0", "", "23.0", "", ""]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not a folder"),
        ("empty", "no finished run"),
        ("unevaluated", "t2l-eval"),
        ("bad_metric", "unknown metric"),
        ("bad_height", "too small"),
        ("no_metrics", "--metrics is empty"),
    ],
)
def test_cli_errors(case: str, message: str, tmp_path: Path, inputs, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    argv = [str(folder)]
    if case == "missing":
        argv = [str(tmp_path / "nope")]
    elif case == "unevaluated":
        make_run(folder, ["edit=golden", "seed=0"], None, inputs["cat"])
    elif case in ("bad_metric", "bad_height", "no_metrics"):
        make_run(folder, ["edit=golden", "seed=0"], {"clip_score": 1.0}, inputs["cat"])
        argv += {"bad_metric": ["--metrics", "clip,clip_score"], "bad_height": ["--tile-height", "2"],
                 "no_metrics": ["--metrics", " , "]}[case]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


def test_cli_warns_about_unevaluated_runs(sweep: Path, inputs, capsys):
    make_run(sweep, ["edit=golden", "seed=9"], None, inputs["cat"])
    main([str(sweep), "--no-gallery"])
    err = capsys.readouterr().err
    assert re.search(r"^warning: skipped .*seed=9.*t2l-eval", err, re.M)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "t2l-table" in text and "--metrics" in text and "t2l-eval" in text
    for words in ("table_runs.csv", "edit on green screen", "unfinished", "failed", "launcher.log", "n=1"):
        assert words in text


def test_module_help_runs_without_torch(record_property):
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "text2live.cli.table", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    record_property("help_seconds", round(time.perf_counter() - start, 3))
    assert result.returncode == 0 and "usage: t2l-table" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line]
    assert "torch" not in imported and "text2live.reporting" not in imported


def test_reporting_imports_neither_torch_nor_the_entry_points():
    code = (
        "import sys, text2live.reporting; print([m for m in sys.modules if m.startswith(('torch', 'text2live.cli'))])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
