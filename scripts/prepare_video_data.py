"""Lay out the reference's video examples (frames and pretrained Neural Layered Atlases) for the video experiments.

    python scripts/prepare_video_data.py --source ~/Downloads/data.zip
    python scripts/prepare_video_data.py --source shape-aware-text-driven-layered-video-editing-release --link

The video experiments read, under the data folder (`data_dir=`, default `data`):

    <data_dir>/videos/<video>/*.jpg|*.png                 the frames, sorted by name (resized when loaded)
    <data_dir>/pretrained_nla_models/<video>/checkpoint   the video's NLA checkpoint (and NLA's config.json, if any)
    <data_dir>/images/                                    the image examples' photos (horse.jpg, cake.jpeg)

--source is a folder or a .zip archive in one of two layouts, found with or without a leading data/ folder:

  1. the Text2LIVE authors' data.zip (the Google Drive link in omerbt/Text2LIVE's README is dead, but copies
     circulate), all four videos:
         data/images/*   data/videos/<video>/*.jpg   data/pretrained_nla_models/<video>/checkpoint
  2. a clone of github.com/text-video-edit/shape-aware-text-driven-layered-video-editing-release (blackswan and
     car-turn only); pass the clone or its data/ folder (masks/ and edit_*/ are ignored):
         data/<video>/images/*.jpg   data/<video>/pretrained_nla_models/checkpoint   .../config.json

The reference videos and the number of frames their experiments use, which their NLA was trained on: blackswan 50,
car-turn 70, libby 49, lucia 70 (a video may hold more frames: the first ones are used).

Every video is checked before anything is written: enough frames, all of one size, a checkpoint that
text2live.nla.load_nla accepts (the four NLA networks, of NLA's default sizes) and, where NLA's config.json came
along, the frame count NLA was trained on. From a zip only the files needed are extracted. A destination file
identical to its source is left as it is, so running the script again is harmless; one that differs (and a frame
that the source lacks) is replaced (removed) only with --force. Errors are one `error:` line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import zipfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from text2live.errors import InputError

# Reference video -> the number of frames its experiments use (NLA was trained on exactly these).
NUM_FRAMES = {"blackswan": 50, "car-turn": 70, "libby": 49, "lucia": 70}
EXPERIMENTS = {
    "blackswan": ("crochet", "crystal", "cube", "gold"),
    "car-turn": ("nighttime", "winter", "rusty"),
    "libby": ("diamond", "giraffe", "gold", "leopard"),
    "lucia": ("fog", "winter", "wonderland"),
}
IMAGE_EXPERIMENTS = {"horse.jpg": "golden_horse", "cake.jpeg": "ice_cake"}
# The frames text2live.io.list_frames reads (a test keeps the two equal): importing text2live.io here would load
# torch and torchvision, seconds that --help and bad arguments should not wait for.
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
NLA_RESOLUTION = (768, 432)  # (resx, resy): the frame size the reference's NLA models were trained at
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
CHUNK = 1 << 20


class PrepareError(Exception):
    """Bad input: the message says what is wrong and what to do; main() prints it as one `error:` line."""


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


# sources: a folder or a zip archive, read through POSIX paths relative to its root ("" is the root) ------------


class FolderSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def is_dir(self, rel: str) -> bool:
        return (self.path / rel).is_dir()

    def is_file(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def children(self, rel: str) -> list[str]:
        return sorted(p.name for p in (self.path / rel).iterdir()) if self.is_dir(rel) else []

    def size(self, rel: str) -> int:
        return (self.path / rel).stat().st_size

    def open(self, rel: str) -> BinaryIO:
        return (self.path / rel).open("rb")

    def show(self, rel: str) -> str:
        return str(self.path / rel)

    def local(self, rel: str) -> Path | None:
        return self.path / rel

    def close(self) -> None:
        pass


class ZipSource:
    """A zip archive, indexed once; its folders are those its member names imply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise PrepareError(
                f"cannot read {path} as a zip archive ({exc}): download it again, or pass the extracted folder"
            ) from None
        self.files: dict[str, zipfile.ZipInfo] = {}
        self.tree: dict[str, set[str]] = {"": set()}
        for info in self.zip.infolist():
            parts = [part for part in info.filename.split("/") if part]
            if not parts or ".." in parts:
                continue
            for depth, part in enumerate(parts):
                self.tree.setdefault(_join(*parts[:depth]), set()).add(part)
            if info.is_dir():
                self.tree.setdefault(_join(*parts), set())
            else:
                self.files[_join(*parts)] = info

    def is_dir(self, rel: str) -> bool:
        return rel in self.tree

    def is_file(self, rel: str) -> bool:
        return rel in self.files

    def children(self, rel: str) -> list[str]:
        return sorted(self.tree.get(rel, ()))

    def size(self, rel: str) -> int:
        return self.files[rel].file_size

    def open(self, rel: str) -> BinaryIO:
        return self.zip.open(self.files[rel])

    def show(self, rel: str) -> str:
        return f"{self.path}:{rel}" if rel else str(self.path)

    def local(self, rel: str) -> Path | None:
        return None

    def close(self) -> None:
        self.zip.close()


Source = FolderSource | ZipSource


def open_source(path: Path) -> Source:
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        return ZipSource(path)
    raise PrepareError(
        f"--source {path} does not exist: pass the Text2LIVE data.zip (or the folder it extracts to) or a clone of "
        "text-video-edit/shape-aware-text-driven-layered-video-editing-release"
    )


# layouts ----------------------------------------------------------------------------------------------------


@dataclass
class Layout:
    kind: str
    videos: dict[str, tuple[str, str]]  # video -> (its frames folder, its NLA folder)
    images: str | None  # the folder of the image examples' photos


def _candidate_roots(source: Source) -> list[str]:
    """The source itself, its data/, and the same inside a single top folder (as zips of a folder have)."""
    roots = ["", "data"]
    top = [name for name in source.children("") if source.is_dir(name) and not name.startswith((".", "__MACOSX"))]
    if len(top) == 1 and top[0] != "data":
        roots += [top[0], _join(top[0], "data")]
    return roots


def detect_layout(source: Source) -> Layout:
    for root in _candidate_roots(source):
        if not source.is_dir(root):
            continue
        text2live = {v: (_join(root, "videos", v), _join(root, "pretrained_nla_models", v)) for v in NUM_FRAMES}
        found = {v: dirs for v, dirs in text2live.items() if any(source.is_dir(d) for d in dirs)}
        if found:
            images = _join(root, "images")
            return Layout("the Text2LIVE data.zip layout", found, images if source.is_dir(images) else None)
        shape_aware = {v: (_join(root, v, "images"), _join(root, v, "pretrained_nla_models")) for v in NUM_FRAMES}
        found = {v: dirs for v, dirs in shape_aware.items() if any(source.is_dir(d) for d in dirs)}
        if found:
            return Layout("the shape-aware repository layout", found, None)
    entries = ", ".join(source.children("")[:8]) or "nothing"
    raise PrepareError(
        f"{source.show('')} is in no known layout (it holds {entries}): expected, with or without a leading data/, "
        "videos/<video>/ and pretrained_nla_models/<video>/checkpoint (the Text2LIVE data.zip) or <video>/images/ "
        f"and <video>/pretrained_nla_models/checkpoint (the shape-aware repository), <video> among "
        f"{', '.join(NUM_FRAMES)}; see --help"
    )


# checks -----------------------------------------------------------------------------------------------------


@dataclass
class Video:
    name: str
    frames_dir: str
    frames: list[str]  # frame file names, sorted as the loader sorts them
    checkpoint: str
    config: str | None  # NLA's training config.json, when the source has it


def gather(source: Source, layout: Layout, name: str) -> Video:
    frames_dir, nla_dir = layout.videos[name]
    frames = [
        n
        for n in source.children(frames_dir)
        if Path(n).suffix.lower() in FRAME_SUFFIXES and not n.startswith(".") and source.is_file(_join(frames_dir, n))
    ]
    checkpoint = _join(nla_dir, "checkpoint")
    if not source.is_file(checkpoint):
        raise PrepareError(
            f"{name}: {source.show(checkpoint)} is missing: a video needs the NLA checkpoint trained on it; pass "
            f"--videos without {name}, or a source that has it"
        )
    config = _join(nla_dir, "config.json")
    return Video(name, frames_dir, frames, checkpoint, config if source.is_file(config) else None)


def check_frames(source: Source, video: Video) -> None:
    need = NUM_FRAMES[video.name]
    if len(video.frames) < need:
        raise PrepareError(
            f"{video.name}: {source.show(video.frames_dir)} holds {len(video.frames)} frames (jpg/png) but its "
            f"experiments need {need}: pass a source with the whole video, or leave {video.name} out with --videos"
        )
    first: tuple[str, tuple[int, int]] | None = None
    for name in video.frames:
        rel = _join(video.frames_dir, name)
        try:
            with source.open(rel) as f, Image.open(f) as img:
                size = img.size
        except (UnidentifiedImageError, OSError, SyntaxError, zipfile.BadZipFile) as exc:
            raise PrepareError(f"{video.name}: cannot read frame {source.show(rel)} ({exc}): replace it") from None
        if first is None:
            first = (name, size)
        elif size != first[1]:
            (a, (aw, ah)), (bw, bh) = first, size
            raise PrepareError(
                f"{video.name}: the frames in {source.show(video.frames_dir)} are not all the same size: {a} is "
                f"{aw}x{ah} but {name} is {bw}x{bh}; a video's frames must share one size"
            )


def check_checkpoint(source: Source, video: Video) -> None:
    """Load the checkpoint through ``load_nla`` (keys and shapes); a zip member is extracted to a temporary file."""
    from text2live.nla import load_nla  # imports torch: only once there is a checkpoint to check

    with source.open(video.checkpoint) as f:
        if f.read(len(LFS_POINTER)) == LFS_POINTER:
            raise PrepareError(
                f"{video.name}: {source.show(video.checkpoint)} is a Git LFS pointer, not the checkpoint: run "
                "`git lfs pull` in the clone first"
            )
    with tempfile.TemporaryDirectory() as tmp:
        path = source.local(video.checkpoint)
        if path is None:
            path = Path(tmp) / "checkpoint"
            with source.open(video.checkpoint) as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        try:
            load_nla(path, NUM_FRAMES[video.name])
        except InputError as exc:
            message = str(exc).replace(str(path), source.show(video.checkpoint))
            raise PrepareError(f"{video.name}: {message}") from None


def check_config(source: Source, video: Video) -> list[str]:
    """Warnings where NLA's config.json disagrees with the experiments (they may still run, misaligned)."""
    if video.config is None:
        return []
    where = source.show(video.config)
    try:
        with source.open(video.config) as f:
            config = json.load(f)
        max_frames = int(config["maximum_number_of_frames"])
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return [f"{video.name}: cannot read maximum_number_of_frames from {where} ({exc!r}); frame count not checked"]
    warnings = []
    # NLA trains on the first min(maximum_number_of_frames, frames in its folder) frames: blackswan's config in the
    # shape-aware repository says 70 for a 50-frame video.
    trained = min(max_frames, len(video.frames))
    if trained != NUM_FRAMES[video.name]:
        warnings.append(
            f"{video.name}: {where} gives maximum_number_of_frames={max_frames}, so its NLA was trained on {trained} "
            f"frames, but the experiments use {NUM_FRAMES[video.name]}: the edits may not follow the video"
        )
    resolution = (config.get("resx"), config.get("resy"))
    if None not in resolution and resolution != NLA_RESOLUTION:
        warnings.append(
            f"{video.name}: {where} says NLA was trained at {resolution[0]}x{resolution[1]}, but the experiments "
            f"assume {NLA_RESOLUTION[0]}x{NLA_RESOLUTION[1]}: the edits may not follow the video"
        )
    return warnings


# transfers --------------------------------------------------------------------------------------------------


@dataclass
class Transfer:
    rel: str  # the file in the source
    dest: Path
    state: str  # "new", "same" (identical content, left alone) or "differs"


def _same_file(source: Source, rel: str, dest: Path) -> bool:
    local = source.local(rel)
    if local is not None and dest.resolve() == local.resolve():
        return True
    if not dest.is_file() or dest.stat().st_size != source.size(rel):
        return False
    with source.open(rel) as a, dest.open("rb") as b:
        while True:
            chunk = a.read(CHUNK)
            if chunk != b.read(CHUNK):
                return False
            if not chunk:
                return True


def plan(source: Source, rel: str, dest: Path) -> Transfer:
    if not (dest.exists() or dest.is_symlink()):
        return Transfer(rel, dest, "new")
    return Transfer(rel, dest, "same" if _same_file(source, rel, dest) else "differs")


def stale_frames(folder: Path, keep: list[str]) -> list[Path]:
    """Frames in a destination folder that the source lacks: the loader would mix them into the video."""
    if not folder.is_dir():
        return []
    keep_names = set(keep)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.name not in keep_names)


def transfer(source: Source, item: Transfer, link: bool) -> None:
    """Copy or link through a temporary name, so an interrupted run never leaves a truncated file behind."""
    item.dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = item.dest.with_name(f".{item.dest.name}.part")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    local = source.local(item.rel)
    if link and local is not None:
        tmp.symlink_to(local.resolve())
    elif local is not None:
        shutil.copyfile(local, tmp)
    else:
        with source.open(item.rel) as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    os.replace(tmp, item.dest)


def _summary(items: list[Transfer], link: bool, removed: int = 0) -> str:
    counts = {
        "linked" if link else "copied": sum(t.state == "new" for t in items),
        "replaced": sum(t.state == "differs" for t in items),
        "unchanged": sum(t.state == "same" for t in items),
        "stale frames removed": removed,
    }
    return ", ".join(f"{n} {what}" for what, n in counts.items() if n)


# command line -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the data.zip, its extracted folder, or the clone")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where to lay out (default: data)")
    parser.add_argument("--videos", nargs="+", metavar="VIDEO", help=f"only these ({', '.join(NUM_FRAMES)})")
    parser.add_argument("--link", action="store_true", help="symlink the files of a folder source instead of copying")
    parser.add_argument(
        "--force", action="store_true", help="replace destination files that differ and remove stale frames"
    )
    return parser.parse_args(argv)


def select_videos(source: Source, layout: Layout, asked: list[str] | None) -> list[str]:
    wanted = list(dict.fromkeys(asked or sorted(layout.videos)))
    unknown = [v for v in wanted if v not in NUM_FRAMES]
    if unknown:
        raise PrepareError(
            f"--videos: unknown video {', '.join(unknown)}; the reference videos are {', '.join(NUM_FRAMES)}"
        )
    absent = [v for v in wanted if v not in layout.videos]
    if absent:
        raise PrepareError(
            f"--videos asks for {', '.join(absent)}, which {source.show('')} ({layout.kind}) does not hold; it holds "
            f"{', '.join(sorted(layout.videos))}"
        )
    return wanted


@dataclass
class Group:
    """The files behind one line of the report: a video, or the image examples' photos."""

    line: str
    items: list[Transfer]
    stale: list[Path]


def plan_video(source: Source, video: Video, data_dir: Path) -> Group:
    frames_dest = data_dir / "videos" / video.name
    nla_dest = data_dir / "pretrained_nla_models" / video.name
    items = [plan(source, _join(video.frames_dir, n), frames_dest / n) for n in video.frames]
    items.append(plan(source, video.checkpoint, nla_dest / "checkpoint"))
    if video.config is not None:
        items.append(plan(source, video.config, nla_dest / "config.json"))
    line = (
        f"{video.name}: {len(video.frames)} frames found, {NUM_FRAMES[video.name]} used; checkpoint OK -> "
        f"{frames_dest}/, {nla_dest / 'checkpoint'}"
    )
    return Group(line, items, stale_frames(frames_dest, video.frames))


def plan_images(source: Source, folder: str, data_dir: Path) -> Group:
    names = [n for n in source.children(folder) if not n.startswith(".") and source.is_file(_join(folder, n))]
    items = [plan(source, _join(folder, n), data_dir / "images" / n) for n in names]
    return Group(f"images: {len(items)} files -> {data_dir / 'images'}/", items, [])


def refuse_conflicts(groups: list[Group]) -> None:
    conflicts = [f"{t.dest} differs from the source" for g in groups for t in g.items if t.state == "differs"]
    conflicts += [f"{p} is a frame the source lacks" for g in groups for p in g.stale]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
        raise PrepareError(
            f"{conflicts[0]}{more}: pass --force to replace such files and remove stale frames, or another --data-dir"
        )


def runnable(videos: list[str], data_dir: Path) -> list[str]:
    override = ""
    if data_dir.resolve() != Path("data").resolve():
        override = f" data_dir={shlex.quote(str(data_dir.resolve()))}"
    experiments = [f"{video}_{edit}" for video in videos for edit in EXPERIMENTS[video]]
    experiments += [exp for image, exp in IMAGE_EXPERIMENTS.items() if (data_dir / "images" / image).is_file()]
    return [f"t2l-train experiment={experiment}{override}" for experiment in experiments]


def run(args: argparse.Namespace) -> int:
    with closing(open_source(args.source.expanduser())) as source:
        return lay_out(source, args)


def lay_out(source: Source, args: argparse.Namespace) -> int:
    if args.link and isinstance(source, ZipSource):
        raise PrepareError(f"--link needs a folder source, not {source.path}: drop --link, or unzip it and link")
    layout = detect_layout(source)
    videos = [gather(source, layout, name) for name in select_videos(source, layout, args.videos)]
    for video in videos:
        check_frames(source, video)
        check_checkpoint(source, video)
        for warning in check_config(source, video):
            print(f"warning: {warning}", file=sys.stderr)

    data_dir: Path = args.data_dir.expanduser()
    groups = [plan_video(source, video, data_dir) for video in videos]
    if layout.images is not None and (images := plan_images(source, layout.images, data_dir)).items:
        groups.append(images)
    if not args.force:
        refuse_conflicts(groups)

    for group in groups:
        for item in group.items:
            if item.state != "same":
                transfer(source, item, args.link)
        for path in group.stale:
            path.unlink()
        print(f"{group.line} ({_summary(group.items, args.link, len(group.stale))})")
    print("Runnable now:")
    for command in runnable([video.name for video in videos], data_dir):
        print(f"  {command}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except PrepareError as exc:
        message = str(exc)
    except (OSError, zipfile.BadZipFile) as exc:
        message = f"{exc}; nothing already laid out was removed: fix that and run the same command again"
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
