"""scripts/prepare_video_data.py on tiny fake sources: 8x6 px frames and one synthetic NLA checkpoint."""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from text2live.config import CONF_DIR
from text2live.io import FRAME_SUFFIXES
from text2live.nla import synthetic_nla

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_video_data.py"
_spec = importlib.util.spec_from_file_location("prepare_video_data", SCRIPT)
prep = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = prep
_spec.loader.exec_module(prep)

SHAPE_AWARE_REPO = "shape-aware-text-driven-layered-video-editing-release"


@pytest.fixture(scope="session")
def nla_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic NLA checkpoint (~14 MB), shared by every fake video."""
    path = tmp_path_factory.mktemp("nla") / "checkpoint"
    torch.save(synthetic_nla(50, 6, 8).checkpoint(), path)
    return path


def place(file: Path, dest: Path) -> None:
    """Put ``file`` at ``dest``: a hard link where possible (the checkpoint is large), else a copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(file, dest)
    except OSError:
        shutil.copyfile(file, dest)


def write_frames(folder: Path, count: int, suffix: str = ".png", size: tuple[int, int] = (8, 6)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, (5 * i % 256, 40, 90)).save(folder / f"{i:05d}{suffix}")


def text2live_source(root: Path, checkpoint: Path, frames: dict[str, int] | None = None) -> Path:
    """The authors' data.zip, extracted into ``root``: returns ``root/data``."""
    data = root / "data"
    for video, count in (frames or {"blackswan": 50, "libby": 49}).items():
        write_frames(data / "videos" / video, count)
        place(checkpoint, data / "pretrained_nla_models" / video / "checkpoint")
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (8, 6), "gold").save(data / "images" / "horse.jpg")
    Image.new("RGB", (8, 6), "white").save(data / "images" / "cake.jpeg")
    return data


def shape_aware_source(
    root: Path, checkpoint: Path, frames: dict[str, int] | None = None, max_frames: int = 70
) -> Path:
    """A clone of the shape-aware repository (its config.json says 70 frames for both videos): returns the clone."""
    repo = root / SHAPE_AWARE_REPO
    for video, count in (frames or {"blackswan": 50, "car-turn": 80}).items():
        folder = repo / "data" / video
        write_frames(folder / "images", count, suffix=".jpg")
        write_frames(folder / "masks", count)
        place(checkpoint, folder / "pretrained_nla_models" / "checkpoint")
        config = {"maximum_number_of_frames": max_frames, "resx": 768, "resy": 432, "data_folder": f"data/{video}"}
        (folder / "pretrained_nla_models" / "config.json").write_text(json.dumps(config))
        (folder / "edit_duck").mkdir()
        Image.new("RGB", (8, 6)).save(folder / "edit_duck" / "keyframe_edited.png")
    (repo / "README.md").write_text("# Shape-aware Text-driven Layered Video Editing\n")
    return repo


def zip_folder(folder: Path, zip_path: Path, prefix: str, folder_entries: bool = True) -> Path:
    """Zip the contents of ``folder`` under ``prefix`` ("" or "data/"), compressed as downloads are."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() or folder_entries:
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return zip_path


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def assert_same_files(source: Path, dest: Path) -> None:
    """``dest`` holds exactly the files directly in ``source``, byte for byte."""
    names = sorted(p.name for p in source.iterdir() if p.is_file())
    assert sorted(p.name for p in dest.iterdir()) == names
    for name in names:
        assert filecmp.cmp(source / name, dest / name, shallow=False), name


def prepare(*args: str | Path) -> int:
    return prep.main([str(arg) for arg in args])


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# sources ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pass_data_folder", [False, True])
def test_text2live_folder(tmp_path, nla_checkpoint, capsys, pass_data_folder):
    src = text2live_source(tmp_path / "src", nla_checkpoint)
    out = tmp_path / "out"
    assert prepare("--source", src if pass_data_folder else src.parent, "--data-dir", out) == 0
    for video in ("blackswan", "libby"):
        assert_same_files(src / "videos" / video, out / "videos" / video)
        assert_same_files(src / "pretrained_nla_models" / video, out / "pretrained_nla_models" / video)
    assert_same_files(src / "images", out / "images")
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "blackswan: 50 frames found, 50 used; checkpoint OK" in captured.out
    assert "libby: 49 frames found, 49 used; checkpoint OK" in captured.out
    assert f"{out / 'videos' / 'libby'}/" in captured.out
    assert "images: 2 files" in captured.out
    commands = [line.strip() for line in captured.out.splitlines() if "t2l-train" in line]
    assert len(commands) == 4 + 4 + 2  # blackswan, libby, golden_horse and ice_cake
    assert f"t2l-train experiment=blackswan_crochet data_dir={out.resolve()}" in commands
    assert any("experiment=golden_horse" in c for c in commands)
    assert not any("car-turn" in c or "lucia" in c for c in commands)


@pytest.mark.parametrize(("prefix", "folder_entries"), [("data/", True), ("", False)])
def test_text2live_zip(tmp_path, nla_checkpoint, capsys, prefix, folder_entries):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 52})
    write_frames(src / "videos" / "unknown-video", 3)  # not a reference video: never extracted
    (src / "notes.txt").write_text("not needed\n")
    archive = zip_folder(src, tmp_path / "data.zip", prefix, folder_entries)
    out = tmp_path / "out"
    assert prepare("--source", archive, "--data-dir", out) == 0
    assert_same_files(src / "videos" / "blackswan", out / "videos" / "blackswan")
    assert_same_files(src / "pretrained_nla_models" / "blackswan", out / "pretrained_nla_models" / "blackswan")
    assert_same_files(src / "images", out / "images")
    expected = {f"videos/blackswan/{i:05d}.png" for i in range(52)}
    expected |= {"pretrained_nla_models/blackswan/checkpoint", "images/horse.jpg", "images/cake.jpeg"}
    assert files_under(out) == expected
    assert "blackswan: 52 frames found, 50 used; checkpoint OK" in capsys.readouterr().out


@pytest.mark.parametrize("pass_data_folder", [False, True])
def test_shape_aware_repository(tmp_path, nla_checkpoint, capsys, pass_data_folder):
    repo = shape_aware_source(tmp_path, nla_checkpoint)
    out = tmp_path / "out"
    assert prepare("--source", repo / "data" if pass_data_folder else repo, "--data-dir", out) == 0
    for video in ("blackswan", "car-turn"):
        assert_same_files(repo / "data" / video / "images", out / "videos" / video)
        assert_same_files(repo / "data" / video / "pretrained_nla_models", out / "pretrained_nla_models" / video)
    assert not (out / "images").exists()
    captured = capsys.readouterr()
    # blackswan's config says 70 frames, but NLA trains on min(70, 50 frames): no warning
    assert captured.err == ""
    assert "blackswan: 50 frames found, 50 used; checkpoint OK" in captured.out
    assert "car-turn: 80 frames found, 70 used; checkpoint OK" in captured.out
    assert "t2l-train experiment=car-turn_rusty" in captured.out
    assert "golden_horse" not in captured.out


def test_nla_config_with_another_frame_count_warns(tmp_path, nla_checkpoint, capsys):
    repo = shape_aware_source(tmp_path, nla_checkpoint, {"car-turn": 80}, max_frames=60)
    assert prepare("--source", repo, "--data-dir", tmp_path / "out", "--videos", "car-turn") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: car-turn:")
    assert "maximum_number_of_frames=60" in err[0] and "use 70" in err[0]


# re-runs and existing files ---------------------------------------------------------------------------------


def test_rerun_leaves_identical_files_alone(tmp_path, nla_checkpoint, capsys):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50})
    out = tmp_path / "out"
    assert prepare("--source", src, "--data-dir", out) == 0
    assert "(51 copied)" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert prepare("--source", src, "--data-dir", out) == 0
    captured = capsys.readouterr()
    assert "blackswan: 50 frames found, 50 used; checkpoint OK" in captured.out
    assert "(51 unchanged)" in captured.out and "copied" not in captured.out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_link(tmp_path, nla_checkpoint, capsys):
    repo = shape_aware_source(tmp_path, nla_checkpoint, {"blackswan": 50})
    out = tmp_path / "out"
    assert prepare("--source", repo, "--data-dir", out, "--link") == 0
    frame = out / "videos" / "blackswan" / "00000.jpg"
    assert frame.is_symlink() and frame.resolve() == (repo / "data" / "blackswan" / "images" / "00000.jpg").resolve()
    assert (out / "pretrained_nla_models" / "blackswan" / "checkpoint").is_symlink()
    assert "(52 linked)" in capsys.readouterr().out
    assert prepare("--source", repo, "--data-dir", out, "--link") == 0
    assert "(52 unchanged)" in capsys.readouterr().out

    archive = zip_folder(repo, tmp_path / "repo.zip", "")
    assert prepare("--source", archive, "--data-dir", tmp_path / "out2", "--link") == 2
    assert "--link needs a folder source" in error_line(capsys)


def test_refuses_to_overwrite_a_different_file(tmp_path, nla_checkpoint, capsys):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50})
    out = tmp_path / "out"
    other = out / "pretrained_nla_models" / "blackswan" / "checkpoint"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"another checkpoint")
    assert prepare("--source", src, "--data-dir", out) == 2
    message = error_line(capsys)
    assert f"{other} differs from the source" in message and "--force" in message
    assert other.read_bytes() == b"another checkpoint"
    assert files_under(out) == {"pretrained_nla_models/blackswan/checkpoint"}  # nothing written at all


def test_force_replaces_different_files_and_removes_stale_frames(tmp_path, nla_checkpoint, capsys):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50})
    out = tmp_path / "out"
    assert prepare("--source", src, "--data-dir", out) == 0
    frames = out / "videos" / "blackswan"
    Image.new("RGB", (8, 6), "red").save(frames / "00003.png")
    Image.new("RGB", (8, 6), "red").save(frames / "99999.png")
    capsys.readouterr()

    assert prepare("--source", src, "--data-dir", out) == 2
    message = error_line(capsys)
    assert "00003.png differs from the source (and 1 more)" in message
    assert (frames / "99999.png").exists()

    assert prepare("--source", src, "--data-dir", out, "--force") == 0
    assert "(1 replaced, 50 unchanged, 1 stale frames removed)" in capsys.readouterr().out
    assert_same_files(src / "videos" / "blackswan", frames)


def test_failed_run_keeps_what_is_laid_out(tmp_path, nla_checkpoint, capsys):
    good = text2live_source(tmp_path / "good", nla_checkpoint, {"blackswan": 50})
    out = tmp_path / "out"
    assert prepare("--source", good, "--data-dir", out) == 0
    bad = text2live_source(tmp_path / "bad", nla_checkpoint, {"blackswan": 30})
    capsys.readouterr()
    assert prepare("--source", bad, "--data-dir", out, "--force") == 2
    error_line(capsys)
    assert_same_files(good / "videos" / "blackswan", out / "videos" / "blackswan")
    assert_same_files(good / "images", out / "images")


# failed checks ----------------------------------------------------------------------------------------------


def test_too_few_frames(tmp_path, nla_checkpoint, capsys):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50, "libby": 40})
    assert prepare("--source", src, "--data-dir", tmp_path / "out") == 2
    message = error_line(capsys)
    assert "libby:" in message and "holds 40 frames" in message and "need 49" in message
    assert not (tmp_path / "out").exists()


def test_frames_of_different_sizes(tmp_path, nla_checkpoint, capsys):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50})
    Image.new("RGB", (10, 6)).save(src / "videos" / "blackswan" / "00007.png")
    assert prepare("--source", src, "--data-dir", tmp_path / "out") == 2
    message = error_line(capsys)
    assert "00000.png is 8x6 but 00007.png is 10x6" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("as_zip", [False, True])
def test_checkpoint_without_a_network(tmp_path, nla_checkpoint, capsys, as_zip):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50})
    checkpoint = src / "pretrained_nla_models" / "blackswan" / "checkpoint"
    state = torch.load(nla_checkpoint, weights_only=True)
    del state["F_atlas_state_dict"]
    checkpoint.unlink()
    torch.save(state, checkpoint)
    source = zip_folder(src, tmp_path / "data.zip", "data/") if as_zip else src
    assert prepare("--source", source, "--data-dir", tmp_path / "out") == 2
    message = error_line(capsys)
    assert message.startswith("error: blackswan:") and "F_atlas_state_dict (atlas)" in message
    expected = f"{tmp_path / 'data.zip'}:data/pretrained_nla_models/blackswan/checkpoint" if as_zip else str(checkpoint)
    assert expected in message
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_is_a_git_lfs_pointer(tmp_path, nla_checkpoint, capsys):
    repo = shape_aware_source(tmp_path, nla_checkpoint, {"blackswan": 50})
    checkpoint = repo / "data" / "blackswan" / "pretrained_nla_models" / "checkpoint"
    checkpoint.unlink()
    checkpoint.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    assert prepare("--source", repo, "--data-dir", tmp_path / "out") == 2
    assert "git lfs pull" in error_line(capsys)


def test_video_without_checkpoint(tmp_path, nla_checkpoint, capsys):
    src = text2live_source(tmp_path / "src", nla_checkpoint, {"blackswan": 50})
    write_frames(src / "videos" / "lucia", 70)
    assert prepare("--source", src, "--data-dir", tmp_path / "out") == 2
    message = error_line(capsys)
    assert "lucia:" in message and "pretrained_nla_models/lucia/checkpoint is missing" in message
    assert prepare("--source", src, "--data-dir", tmp_path / "out", "--videos", "blackswan") == 0


# bad sources and arguments ----------------------------------------------------------------------------------


def test_missing_source(tmp_path, capsys):
    assert prepare("--source", tmp_path / "nowhere.zip", "--data-dir", tmp_path / "out") == 2
    message = error_line(capsys)
    assert "nowhere.zip does not exist" in message and SHAPE_AWARE_REPO in message


def test_unreadable_zip(tmp_path, capsys):
    (tmp_path / "data.zip").write_bytes(b"PK\x03\x04 truncated download")
    assert prepare("--source", tmp_path / "data.zip", "--data-dir", tmp_path / "out") == 2
    assert "cannot read" in error_line(capsys)


def test_unknown_layout(tmp_path, capsys):
    (tmp_path / "src" / "clips").mkdir(parents=True)
    write_frames(tmp_path / "src" / "clips" / "blackswan", 50)
    assert prepare("--source", tmp_path / "src", "--data-dir", tmp_path / "out") == 2
    message = error_line(capsys)
    assert "no known layout" in message and "clips" in message


def test_videos_asks_for_what_the_source_lacks(tmp_path, nla_checkpoint, capsys):
    repo = shape_aware_source(tmp_path, nla_checkpoint, {"blackswan": 50, "car-turn": 70})
    assert prepare("--source", repo, "--data-dir", tmp_path / "out", "--videos", "blackswan", "lucia") == 2
    message = error_line(capsys)
    assert "asks for lucia" in message and "it holds blackswan, car-turn" in message
    assert prepare("--source", repo, "--data-dir", tmp_path / "out", "--videos", "bear") == 2
    assert "unknown video bear" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_frame_suffixes_match_the_loader():
    assert prep.FRAME_SUFFIXES == FRAME_SUFFIXES


def test_videos_match_the_experiment_configs():
    """The script's videos, frame counts and experiments are those of conf/experiment/."""
    found = {}
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        if "nla_checkpoint" in cfg and path.stem != "video":
            video = Path(cfg["frames_dir"]).name
            assert cfg["frames_dir"] == f"${{data_dir}}/videos/{video}"
            assert cfg["nla_checkpoint"] == f"${{data_dir}}/pretrained_nla_models/{video}/checkpoint"
            found[path.stem] = (video, cfg["num_frames"])
    expected = {f"{v}_{edit}": (v, prep.NUM_FRAMES[v]) for v, edits in prep.EXPERIMENTS.items() for edit in edits}
    assert found == expected


# the command line -------------------------------------------------------------------------------------------


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_help():
    result = run_script("--help")
    assert result.returncode == 0
    assert "data.zip" in result.stdout and SHAPE_AWARE_REPO in result.stdout


def test_cli_run(tmp_path, nla_checkpoint):
    repo = shape_aware_source(tmp_path, nla_checkpoint, {"blackswan": 50})
    result = run_script("--source", repo, "--data-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [line.strip() for line in result.stdout.splitlines()[-4:]] == [
        f"t2l-train experiment=blackswan_{edit} data_dir={(tmp_path / 'out').resolve()}"
        for edit in ("crochet", "crystal", "cube", "gold")
    ]
    assert_same_files(repo / "data" / "blackswan" / "images", tmp_path / "out" / "videos" / "blackswan")
