"""Bad input through the command lines: one ``error:`` sentence, a non-zero exit, no traceback, nothing lost.

Every case runs an entry point (``t2l-train``, ``t2l-render``, ``t2l-eval``, the reference import script) on a
mistake a user can make: a bad image, prompt, config value, output folder, checkpoint or NLA file, a sweep with a
bad option, a file built to run code when unpickled. Each must end in exactly one line on stderr that starts with
``error: `` and names what is wrong and what to do, exit with 2 (input and config errors), print no traceback,
leave the files that were there before unchanged and write nothing that looks finished (``DONE``,
``composite.png``, ``checkpoints/final.ckpt``). Nothing read from a file is ever unpickled into code: the
malicious file of :func:`malicious_file` would create a marker file if it were.

Most cases run the entry point's ``main`` in this process (:func:`conftest.run_cli`); subprocesses are used only
where the process itself matters: the holder of a run folder's lock, the import script and one whole command.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY, VIDEO_TINY, CliResult, compose_config, run_cli, video_overrides
from PIL import Image

from text2live import runs, training
from text2live.cli import eval as eval_cli
from text2live.cli import render as render_cli
from text2live.cli import train as train_cli
from text2live.cli.common import check_overrides
from text2live.config import ASSETS_DIR
from text2live.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
IMPORT_SCRIPT = ROOT / "scripts" / "import_reference_generator.py"
PROMPTS = ["comp_text=golden cat", "src_text=cat", "screen_text=golden"]
STEPS = 4  # the module's image runs: 4 steps, a checkpoint every 2 (TINY); the unfinished run stops at step 2
FINISHED_LOOKING = ("DONE", "composite.png", "edit.png", "checkpoints/final.ckpt")
SUBPROCESS_TIMEOUT = 300


# helpers ----------------------------------------------------------------------------------------------------


class Evil:
    """Unpickling this object touches ``marker``: a file that holds one must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def malicious_file(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": Evil(marker)}, path)
    return path


def image_args(image: Path, run_dir: Path, *extra: str) -> list[str]:
    """The module's tiny image run (4 steps, no end-of-run evaluation) as command-line overrides."""
    return [f"image_path={image}", *PROMPTS, *TINY, f"steps={STEPS}", "evaluate=false", f"run_dir={run_dir}", *extra]


def files_of(folder: Path, skip: tuple[str, ...] = ("train.log", runs.LOCK_FILE)) -> dict[str, tuple[bytes, int]]:
    """Every file below ``folder`` with its bytes and mtime, but the log and the lock (bookkeeping of each try)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def assert_nothing_finished(run_dir: Path) -> None:
    for name in FINISHED_LOOKING:
        assert not (run_dir / name).exists(), f"{name} appeared in {run_dir} after a failure"


def assert_not_started(run_dir: Path) -> None:
    """Nothing of a run was written (the folder and Hydra's train.log may exist)."""
    assert_nothing_finished(run_dir)
    assert not (run_dir / runs.CONFIG_FILE).exists()
    assert not (run_dir / runs.CHECKPOINT_DIR).exists()


@dataclass
class Outcome(CliResult):
    """A command run in this process, with the warnings it raised that Python would print on stderr."""

    warnings: list[str] = field(default_factory=list)


def shown_by_default(category: type[Warning]) -> bool:
    """Python's default filters print every warning but the deprecation, import and resource ones."""
    hidden = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)
    return not issubclass(category, hidden)


def refused(result: Outcome, code: int = 2, warnings_allowed: bool = False) -> str:
    """The one ``error:`` line of a refused command, which exited with ``code``.

    In this process pytest catches the warnings a real command would print on stderr before its error line; they
    are counted as the second line they would be.
    """
    line = result.error_line()
    assert result.code == code, (result.code, line)
    assert "Traceback" not in result.stdout
    if not warnings_allowed:
        assert not result.warnings, f"stderr would also hold: {result.warnings}"
    return line


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    return env


def only_line(stderr: str) -> str:
    """The whole stderr of a subprocess is one ``error:`` line (no warnings, no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture
def cli(capsys, monkeypatch) -> Callable[..., Outcome]:
    """``cli(main, argv)``: an entry point run in this process."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def call(main, argv: list[str]) -> Outcome:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_cli(main, [str(a) for a in argv], capsys, monkeypatch)
        shown = [f"{w.category.__name__}: {w.message}" for w in caught if shown_by_default(w.category)]
        return Outcome(result.code, result.stdout, result.stderr, shown)

    return call


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_inputs")


@pytest.fixture(scope="module")
def cat(workdir: Path) -> Path:
    """The demo cat at 96 x 144 px."""
    path = workdir / "cat96.png"
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96), Image.LANCZOS).save(path)
    return path


@pytest.fixture(scope="module")
def unfinished(workdir: Path, cat: Path, one_thread) -> Path:
    """An image run stopped at step 2 of 4: ``checkpoints/last.ckpt`` (step 2), no previous.ckpt, no DONE."""
    run_dir = train(compose_config(image_args(cat, workdir / "unfinished", "trainer.max_steps=2")))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "checkpoints" / "previous.ckpt").exists()
    assert_nothing_finished(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def finished(workdir: Path, cat: Path, one_thread) -> Path:
    """A finished 2-step image run: config.yaml, checkpoints/final.ckpt and DONE."""
    run_dir = train(compose_config(image_args(cat, workdir / "finished", "steps=2")))
    assert (run_dir / runs.DONE_FILE).is_file() and (run_dir / "checkpoints" / "final.ckpt").is_file()
    return run_dir


@pytest.fixture
def run_copy(unfinished: Path, tmp_path: Path) -> Path:
    """A private copy of the unfinished run (mtimes kept)."""
    return Path(shutil.copytree(unfinished, tmp_path / "run"))


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """The file an unpickled :class:`Evil` would create; asserted absent after each use."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a file was unpickled: its code ran"


# images -----------------------------------------------------------------------------------------------------


def _missing(path: Path) -> Path:
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _text(path: Path) -> Path:
    path.write_text("this is not a picture\n")
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _truncated(path: Path) -> Path:
    Image.open(ASSETS_DIR / "cat.png").convert("RGB").resize((144, 96)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_IMAGES = {
    "missing": (_missing, "does not exist: pass the path of an image file"),
    "folder": (_folder, "pass the path of an image file"),
    "text": (_text, "as an image (cannot identify image file"),
    "zero_bytes": (_empty, "as an image (cannot identify image file"),
    "truncated_png": (_truncated, "as an image (image file is truncated"),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_a_bad_image_is_refused_before_anything_is_written(cli, tmp_path, kind):
    make, expected = BAD_IMAGES[kind]
    image = make(tmp_path / "input.png")
    run_dir = tmp_path / "run"
    line = refused(cli(train_cli.main, image_args(image, run_dir)))
    assert str(image) in line and expected in line
    if kind not in ("missing", "folder"):
        assert "pass a PNG or JPEG file" in line
    assert_not_started(run_dir)
    assert line in (run_dir / "train.log").read_text()  # the run folder's log keeps the reason


def test_an_image_path_that_is_a_folder_is_called_a_folder(cli, tmp_path):
    folder = _folder(tmp_path / "images")
    line = refused(cli(train_cli.main, image_args(folder, tmp_path / "run")))
    assert "folder" in line and "does not exist" not in line


# prompts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("comp_text=''", 'comp_text is empty: pass comp_text="<text>"'),
        ("src_text='   '", 'src_text is empty: pass src_text="<text>"'),
        ("screen_text=[golden,'']", 'screen_text is empty: pass screen_text="<text>" (a string or a list'),
        (None, "comp_text is not set: pass comp_text=... on the command line"),
    ],
    ids=["empty", "whitespace", "list_with_empty", "missing"],
)
def test_an_empty_or_missing_prompt_is_refused(cli, cat, tmp_path, override, expected):
    run_dir = tmp_path / "run"
    args = image_args(cat, run_dir)
    args = [a for a in args if not a.startswith("comp_text=")] if override is None else [*args, override]
    assert refused(cli(train_cli.main, args)).startswith(f"error: {expected}")
    assert_not_started(run_dir)


def test_an_unlexable_prompt_says_how_to_quote_it(cli, cat, tmp_path):
    run_dir = tmp_path / "run"
    line = refused(cli(train_cli.main, [*image_args(cat, run_dir), "comp_text=golden 🐱"]))
    assert "'comp_text=golden 🐱' cannot be read" in line
    assert "quote the value, e.g. 'comp_text=\"golden 🐱\"'" in line
    assert not run_dir.exists()  # refused before Hydra made the folder


def test_the_quoted_prompt_is_accepted(cat, tmp_path):
    cfg = check_overrides("train", [*image_args(cat, tmp_path / "run"), 'comp_text="golden 🐱"'], "t2l-train")
    assert cfg is not None and cfg.comp_text == "golden 🐱"


# config values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed=-1", "seed=-1 is not valid: use an integer >= 0"),
        ("steps=0", "steps=0 is not valid: use an integer >= 1"),
        ("checkpoint_every=0", "checkpoint_every=0 is not valid: use an integer >= 1"),
        ("steps=ten", "steps=ten is not valid: steps takes an integer"),
        ("optim.optimizer.lr=fast", "optim.optimizer.lr=fast is not valid: optim.optimizer.lr takes a number"),
        ("loss.n_aug=many", "loss.n_aug=many is not valid: loss.n_aug takes an integer"),
        ("foo=1", "unknown config key 'foo': `t2l-train --help` lists the keys (write +foo=1 to add a new one)"),
        ("clip=nope", "Could not find 'clip/nope'"),
        ("data.resize_input=big", "data.resize_input=big is not valid: data.resize_input takes an integer"),
        ("log_images_freq=often", "log_images_freq=often is not valid: log_images_freq takes an integer"),
        ("optim.lr_decay=slow", "optim.lr_decay=slow is not valid: optim.lr_decay takes a number"),
        ("generator.num_scales=four", "generator.num_scales=four is not valid: generator.num_scales takes an integer"),
    ],
)
def test_a_bad_config_value_is_refused(cli, cat, tmp_path, override, expected):
    """Also the non-numeric values of numeric keys: refused before the run starts, naming the key given."""
    run_dir = tmp_path / "run"
    line = refused(cli(train_cli.main, [*image_args(cat, run_dir), override]))
    assert expected in line
    assert_not_started(run_dir)


def test_an_unknown_group_option_lists_the_options(cli, cat, tmp_path):
    line = refused(cli(train_cli.main, [*image_args(cat, tmp_path / "run"), "clip=nope"]))
    assert "Available options in 'clip'" in line and "tiny" in line and "vit_b32" in line


def test_a_bad_resume_from_is_refused_when_resuming(cli, cat, run_copy):
    before = files_of(run_copy)
    line = refused(cli(train_cli.main, image_args(cat, run_copy, "resume_from=bogus")))
    assert line == "error: resume_from='bogus' is not valid: use last or previous"
    assert files_of(run_copy) == before
    assert_nothing_finished(run_copy)


def test_a_bad_resume_from_is_refused_on_a_new_run(cli, cat, tmp_path, monkeypatch):
    def build_system(cfg):
        raise AssertionError("training started despite resume_from=bogus")

    monkeypatch.setattr(training, "build_system", build_system)
    line = refused(cli(train_cli.main, image_args(cat, tmp_path / "run", "resume_from=bogus")))
    assert "resume_from='bogus' is not valid" in line


# output folders ---------------------------------------------------------------------------------------------


def test_a_run_dir_that_is_a_file_is_refused(cli, cat, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me\n")
    before = path.stat().st_mtime_ns
    line = refused(cli(train_cli.main, image_args(cat, path)))
    assert line == f"error: run_dir={path} is a file, not a folder: pass run_dir=<a folder> (new or a run's)"
    assert path.read_text() == "keep me\n" and path.stat().st_mtime_ns == before


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only tmpfs (needs root and the right to mount)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1M,ro", "tmpfs", str(folder)], capture_output=True, text=True
        )
    except OSError as exc:
        pytest.skip(f"cannot run mount ({exc}): a read-only file system is needed")
    if done.returncode != 0:
        pytest.skip(f"mounting a read-only tmpfs is not permitted here ({done.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("inside", [False, True], ids=["the_mount", "a_new_folder_in_it"])
def test_a_run_dir_on_a_read_only_file_system_is_refused(cli, cat, read_only_dir, inside):
    run_dir = read_only_dir / "run" if inside else read_only_dir
    line = refused(cli(train_cli.main, image_args(cat, run_dir)))
    assert str(run_dir) in line
    assert "pass run_dir=<a folder you can write to>" in line
    if inside:
        assert "(Read-only file system)" in line
    assert list(read_only_dir.iterdir()) == []


def test_a_folder_holding_another_run_is_refused_and_kept(cli, cat, run_copy):
    before = files_of(run_copy)
    line = refused(cli(train_cli.main, image_args(cat, run_copy, "comp_text=silver cat")))
    assert line.startswith(f"error: {run_copy} already holds a different run (comp_text: 'golden cat' -> 'silver cat'")
    assert line.endswith("): pass run_dir=<another folder> or remove that folder")
    assert files_of(run_copy) == before
    assert_nothing_finished(run_copy)
    assert line in (run_copy / "train.log").read_text()


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
time.sleep(600)
"""


def test_a_run_folder_locked_by_a_live_process_is_refused(cli, cat, run_copy):
    lock = run_copy / runs.LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = files_of(run_copy)
        line = refused(cli(train_cli.main, image_args(cat, run_copy)))
        assert line == (
            f"error: {run_copy} is being trained by process {holder.pid}: wait for it to finish (or stop it), "
            "or pass run_dir=<another folder>"
        )
        assert lock.read_text() == f"{holder.pid}\n"  # the holder's PID is not overwritten
        assert files_of(run_copy) == before
        assert_nothing_finished(run_copy)
    finally:
        holder.kill()
        holder.wait(timeout=30)


# checkpoints of an unfinished run ---------------------------------------------------------------------------


def _truncate(path: Path, marker: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero(path: Path, marker: Path) -> None:
    path.write_bytes(b"")


def _foreign(path: Path, marker: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _wrong_shape(path: Path, marker: Path) -> None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    key = next(k for k in state if k.startswith("generator.") and state[k].ndim == 4)
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    torch.save(checkpoint, path)


def _malicious(path: Path, marker: Path) -> None:
    malicious_file(path, marker)


BAD_CHECKPOINTS = {
    "truncated": (_truncate, "cannot be read as a checkpoint"),
    "zero_bytes": (_zero, "cannot be read as a checkpoint (EOFError)"),
    "foreign": (_foreign, "is not a text2live training checkpoint (it has no state_dict, global_step"),
    "wrong_shape": (_wrong_shape, "does not fit this run's generator (it has other shapes for generator."),
    "malicious": (_malicious, "it holds Python objects that are not tensors, which are never unpickled"),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_a_bad_last_checkpoint_names_the_file_and_restart(cli, cat, run_copy, marker, kind):
    damage, expected = BAD_CHECKPOINTS[kind]
    last = run_copy / "checkpoints" / "last.ckpt"
    damage(last, marker)
    before = files_of(run_copy)
    line = refused(cli(train_cli.main, image_args(cat, run_copy)))
    assert line.startswith(f"error: {last} ")
    assert expected in line
    assert line.endswith("run the same command with restart=true to start over")
    assert "resume_from=previous" not in line  # there is no previous.ckpt to offer
    assert files_of(run_copy) == before  # the bad file is still there, untouched
    assert_nothing_finished(run_copy)
    assert not marker.exists()


def test_resume_from_previous_without_a_previous_checkpoint(cli, cat, run_copy):
    before = files_of(run_copy)
    line = refused(cli(train_cli.main, image_args(cat, run_copy, "resume_from=previous")))
    previous = run_copy / "checkpoints" / "previous.ckpt"
    assert line == (f"error: {previous} does not exist: run without resume_from, or with restart=true to start over")
    assert files_of(run_copy) == before
    assert_nothing_finished(run_copy)


@pytest.fixture
def corrupt_with_previous(run_copy: Path) -> Path:
    """The run copy with a readable previous.ckpt (step 2) and a truncated last.ckpt."""
    folder = run_copy / "checkpoints"
    shutil.copy2(folder / "last.ckpt", folder / "previous.ckpt")
    _truncate(folder / "last.ckpt", folder)
    return run_copy


def test_a_bad_last_checkpoint_offers_the_previous_one(cli, cat, corrupt_with_previous):
    run_dir = corrupt_with_previous
    before = files_of(run_dir)
    line = refused(cli(train_cli.main, image_args(cat, run_dir)))
    previous = run_dir / "checkpoints" / "previous.ckpt"
    assert line.startswith(f"error: {run_dir / 'checkpoints' / 'last.ckpt'} cannot be read as a checkpoint")
    assert line.endswith(
        f"run the same command with resume_from=previous to resume from {previous} (step 2), or restart=true to "
        "start over"
    )
    assert files_of(run_dir) == before


def test_resume_from_previous_finishes_the_run(cli, cat, corrupt_with_previous):
    run_dir = corrupt_with_previous
    result = cli(train_cli.main, image_args(cat, run_dir, "resume_from=previous"))
    assert result.code == 0, result.stderr
    assert (run_dir / runs.DONE_FILE).read_text() == f"{STEPS} steps\n"


def test_restart_on_a_corrupt_run_starts_over_and_finishes(cli, cat, run_copy):
    (run_copy / "checkpoints" / "last.ckpt").write_bytes(b"garbage")
    (run_copy / "notes.txt").write_text("mine\n")
    result = cli(train_cli.main, image_args(cat, run_copy, "restart=true"))
    assert result.code == 0, result.stderr
    assert (run_copy / runs.DONE_FILE).read_text() == f"{STEPS} steps\n"
    assert (run_copy / "composite.png").is_file()
    assert torch.load(run_copy / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == STEPS
    assert (run_copy / "notes.txt").read_text() == "mine\n"  # not a run output: left alone


def test_the_whole_command_ends_in_one_line(cat, run_copy, tmp_path):
    """The real interpreter: exit status 2 and a stderr of exactly one line (warnings included), logged too."""
    last = run_copy / "checkpoints" / "last.ckpt"
    _wrong_shape(last, tmp_path)
    before = files_of(run_copy)
    done = subprocess.run(
        [sys.executable, "-m", "text2live.cli.train", *image_args(cat, run_copy)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 2, done.stderr
    line = only_line(done.stderr)
    assert line.startswith(f"error: {last} does not fit this run's generator")
    assert line.endswith("restart=true to start over")
    assert "Traceback" not in done.stdout
    assert files_of(run_copy) == before
    assert_nothing_finished(run_copy)
    assert line in (run_copy / "train.log").read_text()


# malicious files, on every path that reads a file -----------------------------------------------------------


def test_the_malicious_file_runs_code_when_unpickled(tmp_path):
    """The control: without weights_only the file does create its marker, so its absence elsewhere means something."""
    control = tmp_path / "CONTROL"
    path = malicious_file(tmp_path / "evil.pt", control)
    torch.load(path, weights_only=False)
    assert control.exists()


def test_a_malicious_nla_checkpoint_is_never_unpickled(cli, synthetic_video, tmp_path, marker):
    evil = malicious_file(tmp_path / "nla" / "checkpoint", marker)
    run_dir = tmp_path / "run"
    args = [*video_overrides(synthetic_video, run_dir), *VIDEO_TINY, f"nla_checkpoint={evil}"]
    line = refused(cli(train_cli.main, args))
    assert f"{evil} holds Python objects besides tensors, which are never unpickled" in line
    assert "weights_only=False" in line and "pass the new file" in line  # how to convert it, if trusted
    assert_not_started(run_dir)


def test_a_malicious_clip_checkpoint_is_never_unpickled(cli, cat, tmp_path, marker):
    evil = malicious_file(tmp_path / "clip.pt", marker)
    run_dir = tmp_path / "run"
    line = refused(cli(train_cli.main, image_args(cat, run_dir, *clip_file(evil))))
    assert f"cannot read the CLIP checkpoint {evil}" in line
    assert "pass a TorchScript archive from OpenAI or a saved state dict" in line
    assert_not_started(run_dir)


def clip_file(path: Path) -> list[str]:
    """A named CLIP read from ``path`` (no second model for relevancy)."""
    return ["clip.name=ViT-B/32", f"clip.checkpoint={path}", "clip.relevancy_name=null"]


def test_a_clip_checkpoint_that_is_not_clip_ends_in_one_line(cli, cat, tmp_path):
    path = tmp_path / "clip.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    run_dir = tmp_path / "run"
    line = refused(cli(train_cli.main, image_args(cat, run_dir, *clip_file(path))))
    assert line == f"error: {path} is not an OpenAI CLIP state dict (no visual.conv1.weight)"
    assert_not_started(run_dir)


@pytest.fixture
def finished_copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "finished"))


def test_a_malicious_final_checkpoint_is_never_rendered(cli, finished_copy, marker):
    final = malicious_file(finished_copy / "checkpoints" / "final.ckpt", marker)
    before = files_of(finished_copy)
    line = refused(cli(render_cli.main, [f"run_dir={finished_copy}"]))
    assert line.startswith(f"error: {final} cannot be read as a checkpoint")
    assert "which are never unpickled" in line
    assert not (finished_copy / "render").exists()
    assert files_of(finished_copy) == before


def test_a_malicious_final_checkpoint_is_never_evaluated(cli, finished_copy, marker):
    final = malicious_file(finished_copy / "checkpoints" / "final.ckpt", marker)
    before = files_of(finished_copy)
    line = refused(cli(eval_cli.main, [finished_copy]))
    assert line.startswith("error: 1 of 1 runs could not be evaluated: ")
    assert f"{final} cannot be read as a checkpoint" in line and "which are never unpickled" in line
    assert not (finished_copy / runs.METRICS_FILE).exists()
    assert files_of(finished_copy) == before


def test_a_malicious_reference_generator_is_never_imported(cat, tmp_path, marker):
    evil = malicious_file(tmp_path / "netG.pt", marker)
    out = tmp_path / "imported"
    done = subprocess.run(
        [sys.executable, str(IMPORT_SCRIPT), str(evil), "--image", str(cat), "--out", str(out)],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode != 0
    line = only_line(done.stderr)
    assert line.startswith(f"error: {evil} cannot be read as a checkpoint")
    assert "which are never unpickled" in line and "pass the reference generator's state dict file" in line
    assert not out.exists()


# NLA files --------------------------------------------------------------------------------------------------


def _nla_missing(path: Path) -> Path:
    return path


def _nla_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _nla_text(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a checkpoint\n")
    return path


def _nla_keyless(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": torch.zeros(3)}, path)
    return path


BAD_NLA = {
    "missing": (_nla_missing, "nla_checkpoint={path} does not exist: pass the NLA checkpoint of the video"),
    "folder": (_nla_folder, "nla_checkpoint={path} is a folder: pass the checkpoint file inside it"),
    "text": (_nla_text, "cannot read {path} as a PyTorch checkpoint ("),
    "keyless": (_nla_keyless, "{path} is not a Neural Layered Atlas checkpoint: it lacks model_F_mapping1_state_dict"),
}


@pytest.mark.parametrize("kind", list(BAD_NLA))
def test_a_bad_nla_checkpoint_is_refused(cli, synthetic_video, tmp_path, kind):
    make, expected = BAD_NLA[kind]
    path = make(tmp_path / "nla" / "checkpoint")
    run_dir = tmp_path / "run"
    args = [*video_overrides(synthetic_video, run_dir), *VIDEO_TINY, f"nla_checkpoint={path}"]
    line = refused(cli(train_cli.main, args))
    assert expected.format(path=path) in line
    if kind == "keyless":
        assert "pass the `checkpoint` file NLA's training wrote" in line
    assert_not_started(run_dir)


# sweeps -----------------------------------------------------------------------------------------------------


def test_a_bad_sweep_ends_in_one_line_before_any_job(cli, cat, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *image_args(cat, tmp_path / "unused"), f"hydra.sweep.dir={sweep}", "seed=0,1", "clip=nope"]
    line = refused(cli(train_cli.main, args))
    assert "Could not find 'clip/nope'" in line
    assert not sweep.exists()
    assert not (tmp_path / "unused").exists()


# running out of memory --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "where"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "GPU memory"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "memory"),
    ],
)
def test_running_out_of_memory_names_the_overrides_that_lower_it(cli, cat, tmp_path, monkeypatch, error, where):
    from text2live.losses import LossStack

    original, calls = LossStack.structure_loss, []

    def structure_loss(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # in step 3, after the step-2 checkpoint
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LossStack, "structure_loss", structure_loss)
    run_dir = tmp_path / "run"
    line = refused(cli(train_cli.main, image_args(cat, run_dir)))
    assert line.startswith(f"error: the run ran out of {where}: lower it with clip.checkpoint_views=true")
    assert "data.resize_input" in line and line.endswith("then run the same command again")
    assert_nothing_finished(run_dir)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
