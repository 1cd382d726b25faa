"""Time the training step of an image or video edit on this machine, or compare versions of the code.

    python scripts/benchmark.py                                   # golden-horse settings, random ViT-B/32
    python scripts/benchmark.py --small --steps 10                # the small CPU settings (tiny CLIP, 96 px)
    python scripts/benchmark.py --steps 20 clip=tiny trainer=cpu  # any t2l-train override after the flags
    python scripts/benchmark.py --video --steps 30                # a video example's settings (blackswan)
    python scripts/benchmark.py --video edit_layers=[foreground,background]
    python scripts/benchmark.py --small --compare HEAD --steps 10            # HEAD against the working tree
    python scripts/benchmark.py --small --compare HEAD~1 main --rounds 5     # three versions, five rounds
    python scripts/benchmark.py --video --compare HEAD --steps 6 --rounds 2  # video settings, two versions
    python scripts/benchmark.py --small --steps 10 --variants default compile=true generator_precision=bf16

What is measured, per step, from Lightning's ``on_train_batch_start`` to its ``on_train_batch_end``: the
``training_step`` (generator, CLIP views and losses), the backward pass, the optimiser step and zero_grad, the LR
scheduler step and the logging of the step's values (in Lightning 2.x's automatic optimisation all of these run
between the two hooks). Loading the step's crop and moving it to the device happen before the first hook and are
not timed. On CUDA the device is synchronised before each clock reading.

- wall: ``time.perf_counter``; CPU: ``time.process_time`` (CPU time of every thread of the process, so it can
  exceed the wall time when torch uses several threads). Both as min and median over the timed steps; the first
  ``--warmup`` of the ``--steps`` steps are run but left out, and so is any later step during which
  ``torch.compile`` compiled something (``compile=true``: the first steps compile, and a new input shape may
  compile again); the record lists those steps and the wall time they took.
- aten ops per step: every aten operator dispatched below autograd (composite ops counted as the ops they
  decompose into; forward, backward and optimiser), counted with a ``TorchDispatchMode`` during ``--count-steps``
  extra steps run after the timed ones (counting slows a step down, so those steps are not timed). Under such a
  mode ``torch.compile``d code runs eagerly, so with ``compile=true`` these are the eager step's operators.
- memory: the process's peak RSS (``ru_maxrss``, KiB on Linux: imports and model building included), the peak
  RSS of the timed steps alone (``VmHWM`` after resetting it through /proc/self/clear_refs, where Linux allows it;
  the reset happens when the warm-up ends), the RSS at that moment and, on CUDA, ``torch.cuda.max_memory_allocated``
  of the timed steps (its peak is reset at the same moment).

Settings: the demo photo unless image_path= is given; CLIP defaults to ``random_vit_b32`` (ViT-B/32 sized, random
weights: the compute of the real model without a download); golden-horse settings (512 px) with bootstrapping on
for every step, as in the first 1000 steps of golden_horse. ``--small``: ``clip=tiny trainer=cpu
generator.channels_down=16 generator.channels_up=16 generator.num_scales=4 loss.n_aug=16 data.resize_input=96``,
still bootstrapping. With ``--video`` the edit runs through a synthetic NLA checkpoint of the real architecture
(``text2live.nla.synthetic_nla``) over 50 frames of 768x432 (the demo photo, repeated), with the video examples'
settings; setting up the atlases is not timed. Overrides given after the flags win over both.

``--compare REV [REV ...]`` measures each git revision (checked out with ``git worktree add --detach`` into a
temporary folder, removed at the end) and the working tree (``work``) in one invocation: ``--rounds`` rounds, each
running every version once in a fresh process (the first version of a round rotates) that imports ``text2live``
from that version's folder while measuring with this script. The figures pool the steps of all rounds; the table
gives the ratio of each version to the first. Only a comparison within one run is meaningful on a shared machine.
``--variants OVERRIDES [OVERRIDES ...]`` compares settings of the working tree the same way (e.g. ``default
compile=true generator_precision=bf16 clip.checkpoint_views=true``; an entry may hold several overrides, quoted;
overrides shared by every variant go before the flag); with ``--compare`` every version runs every variant.

Writes a JSON record (every figure, the overrides, the git revision, torch version, device, threads) to ``--json``
or under outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]

# The small CPU settings (image); bootstrapping stays on, as in the default settings.
SMALL = [
    "clip=tiny",
    "trainer=cpu",
    "generator.channels_down=16",
    "generator.channels_up=16",
    "generator.num_scales=4",
    "loss.n_aug=16",
    "data.resize_input=96",
]

# Overrides every run gets unless given: no logger, no checkpoints, no progress bar, no summary.
QUIET = [
    "~logger",
    "++trainer.enable_checkpointing=false",
    "++trainer.enable_model_summary=false",
    "++trainer.enable_progress_bar=false",
]


# --------------------------------------------------------------------------------------------------- measuring


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched while it is active, by name (``aten.convolution``), overloads merged."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _reset_peak_rss() -> bool:
    """Reset the process's VmHWM (Linux, clear_refs "5"); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status_kib(field: str) -> int | None:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of this process from /proc/self/status, in KiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def compile_events() -> int:
    """How many compilation phases ``torch.compile`` has timed in this process so far (dynamo, AOTAutograd and
    inductor, the lazily compiled backward included); 0 while it was never used."""
    utils = sys.modules.get("torch._dynamo.utils")
    metrics = getattr(utils, "compilation_time_metrics", None) or {}
    return sum(len(times) for times in metrics.values())


def _max_rss_kib() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


class StepMeter(pl.Callback):
    """Times the first ``timed`` steps, then counts the aten ops of the next ``counted`` steps.

    A step is what runs between ``on_train_batch_start`` and ``on_train_batch_end`` (see the module's docstring).
    The peaks of memory are reset at the start of step ``warmup`` and read at the end of the last timed step.
    ``compiled[i]`` tells whether ``torch.compile`` compiled anything during timed step ``i``.
    """

    def __init__(self, timed: int, warmup: int, counted: int) -> None:
        self.timed, self.warmup, self.counted = timed, warmup, counted
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.compiled: list[bool] = []
        self.ops: list[Counter[str]] = []
        self.index = 0
        self.peak_rss_kib: int | None = None
        self.rss_before_steps_kib: int | None = None
        self._peak_before_steps_kib = 0
        self.peak_rss_steps_kib: int | None = None
        self.peak_cuda_bytes: int | None = None
        self._hwm_reset = False
        self._mode: OpCounter | None = None
        self._wall0 = self._cpu0 = 0.0
        self._compile_events0 = 0

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        device = pl_module.device
        if self.index == min(self.warmup, self.timed - 1):
            self._sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            # resetting VmHWM resets ru_maxrss too on Linux: keep the peak so far for the process's peak
            self._peak_before_steps_kib = _max_rss_kib()
            self.rss_before_steps_kib = _proc_status_kib("VmRSS")
            self._hwm_reset = _reset_peak_rss()
        if self.index < self.timed:
            self._compile_events0 = compile_events()
            self._sync(device)
            self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        elif self.index < self.timed + self.counted:
            self._mode = OpCounter()
            self._mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        index, self.index = self.index, self.index + 1
        if index < self.timed:
            device = pl_module.device
            self._sync(device)
            self.wall.append(time.perf_counter() - self._wall0)
            self.cpu.append(time.process_time() - self._cpu0)
            self.compiled.append(compile_events() != self._compile_events0)
            if index == self.timed - 1:
                self.peak_rss_kib = max(self._peak_before_steps_kib, _max_rss_kib())
                self.peak_rss_steps_kib = _proc_status_kib("VmHWM") if self._hwm_reset else None
                if device.type == "cuda":
                    self.peak_cuda_bytes = torch.cuda.max_memory_allocated(device)
        elif self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.ops.append(self._mode.counts)
            self._mode = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None


def make_video_inputs(folder: Path, frames: int) -> None:
    """A synthetic NLA checkpoint (``folder/checkpoint``) and ``frames`` frames for it (``folder/frames``)."""
    from text2live.config import ASSETS_DIR
    from text2live.nla import synthetic_nla

    folder.mkdir(parents=True, exist_ok=True)
    torch.save(synthetic_nla(frames, 432, 768).checkpoint(), folder / "checkpoint")
    (folder / "frames").mkdir()
    photo = (ASSETS_DIR / "cat.png").read_bytes()
    for t in range(frames):
        (folder / "frames" / f"{t:05d}.png").write_bytes(photo)


def settings_overrides(video: bool, total_steps: int, video_dir: Path | None, frames: int) -> list[str]:
    """The benchmark's own overrides (before the user's) for a fit of ``total_steps`` steps."""
    if video:
        return [
            "experiment=video",
            f"nla_checkpoint={video_dir / 'checkpoint'}",
            f"frames_dir={video_dir / 'frames'}",
            f"num_frames={frames}",
            "comp_text=golden swan",
            "src_text=swan",
            "screen_text=golden",
            "clip=random_vit_b32",
            f"steps={total_steps}",
            *QUIET,
        ]
    return [
        "experiment=golden_cat",
        "clip=random_vit_b32",
        "comp_text=golden horse",
        "src_text=horse",
        "screen_text=golden horse",
        "bootstrap_text=horse",
        f"steps={total_steps}",
        f"loss.bootstrap_steps={10 * total_steps}",
        *QUIET,
    ]


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*layers: list[str]) -> list[str]:
    """Later layers win: an override is dropped when a later layer sets the same key."""
    merged: list[str] = []
    for layer in layers:
        keys = {_key(o) for o in layer}
        merged = [o for o in merged if _key(o) not in keys] + list(layer)
    return merged


def git_revision(folder: Path) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``folder``, plus ``-dirty`` if tracked files differ."""
    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if changes else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"


def _min_median(name: str, values: list[float]) -> dict:
    return {
        f"{name}_min": min(values) if values else None,
        f"{name}_median": statistics.median(values) if values else None,
    }


def measure(
    overrides: list[str],
    *,
    steps: int,
    warmup: int,
    count_steps: int = 2,
    video: bool = False,
    small: bool = False,
    frames: int = 50,
    video_dir: Path | None = None,
) -> dict:
    """Fit ``steps + count_steps`` steps with the given t2l-train overrides (after the benchmark's settings) and
    return the record of the measurement. Imports ``text2live`` from wherever ``sys.path`` finds it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import text2live
    from text2live.config import CONF_DIR

    try:
        from text2live.build import build_system
    except ImportError:  # a version from before text2live.build
        from text2live.train import build_system

    with tempfile.TemporaryDirectory(prefix="t2l-benchmark-") as scratch:
        if video and video_dir is None:
            video_dir = Path(scratch) / "video"
            make_video_inputs(video_dir, frames)
        total = steps + count_steps
        ours = settings_overrides(video, total, video_dir, frames)
        merged = merge_overrides(ours, SMALL if small else [], [f"run_dir={scratch}/run"], overrides)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=merged)
        system, datamodule = build_system(cfg)
        meter = StepMeter(steps, warmup, count_steps)
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[meter])
        trainer.fit(system, datamodule=datamodule)
        device = trainer.strategy.root_device

    if len(meter.wall) < steps or len(meter.ops) < count_steps:
        raise RuntimeError(f"the fit ran {meter.index} steps, fewer than the {total} asked for")
    kept = [i for i in range(warmup, steps) if not meter.compiled[i]]
    if not kept:
        raise RuntimeError(f"torch.compile compiled during every timed step: raise --steps above {steps}")
    wall, cpu = [meter.wall[i] for i in kept], [meter.cpu[i] for i in kept]
    compiled = [i for i, c in enumerate(meter.compiled) if c]
    steps_out = [i for i in compiled if i >= warmup]
    op_totals = [sum(c.values()) for c in meter.ops]
    all_ops: Counter[str] = sum(meter.ops, Counter())
    guides = getattr(system, "guides", None)
    source = Path(text2live.__file__).resolve().parents[1]
    shape = getattr(datamodule, "video" if video else "image", None)
    record = {
        "measured": (
            f"{len(wall)} steps of t2l-train (training_step + backward + optimiser step, between Lightning's "
            f"on_train_batch_start and on_train_batch_end) after {warmup} warm-up steps"
            + (f", leaving out {len(steps_out)} later steps that compiled" if steps_out else "")
            + f"; aten ops counted over {count_steps} further steps"
        ),
        "date": datetime.now().isoformat(timespec="seconds"),
        "settings": ("video" if video else "image") + (" small" if small else ""),
        "device": device_name(device),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "git_revision": git_revision(source),
        "text2live_file": text2live.__file__,
        "input_shape": list(shape.shape if video else shape.shape[-2:]) if shape is not None else None,
        "edit_layers": list(cfg.edit_layers) if video else None,
        "clip": cfg.clip.name,
        "clip_precision": str(guides()[0].dtype) if callable(guides) else None,
        "steps": steps,
        "warmup": warmup,
        "steps_timed": len(wall),
        "compiled_steps": compiled,
        "steps_left_out_compiling": len(steps_out),
        "compile_wall_s": sum(meter.wall[i] for i in compiled) if compiled else None,
        "count_steps": count_steps,
        "wall_s": wall,
        "cpu_s": cpu,
        **_min_median("wall_s", wall),
        **_min_median("cpu_s", cpu),
        "seconds_per_step_median": statistics.median(wall),
        "seconds_per_step_mean": statistics.fmean(wall),
        "ops_per_step": op_totals,
        **_min_median("ops_per_step", op_totals),
        "ops_top10": [[name, n / len(meter.ops)] for name, n in all_ops.most_common(10)],
        "ops_by_name": {name: n / len(meter.ops) for name, n in all_ops.most_common()},
        "peak_rss_mib": meter.peak_rss_kib / 1024 if meter.peak_rss_kib else None,
        "peak_rss_steps_mib": meter.peak_rss_steps_kib / 1024 if meter.peak_rss_steps_kib else None,
        "rss_before_steps_mib": meter.rss_before_steps_kib / 1024 if meter.rss_before_steps_kib else None,
        "peak_cuda_mib": meter.peak_cuda_bytes / 2**20 if meter.peak_cuda_bytes is not None else None,
        "peak_gpu_memory_gib": meter.peak_cuda_bytes / 2**30 if meter.peak_cuda_bytes is not None else None,
        "overrides": merged,
    }
    return record


# --------------------------------------------------------------------------------------------------- reporting

ROWS = (  # (label, key in a summary, format)
    ("wall s/step, min", "wall_s_min", "{:.4f}"),
    ("wall s/step, median", "wall_s_median", "{:.4f}"),
    ("CPU s/step, min", "cpu_s_min", "{:.4f}"),
    ("CPU s/step, median", "cpu_s_median", "{:.4f}"),
    ("aten ops/step, min", "ops_per_step_min", "{:.0f}"),
    ("aten ops/step, median", "ops_per_step_median", "{:.0f}"),
    ("peak RSS MiB, process", "peak_rss_mib", "{:.0f}"),
    ("peak RSS MiB, timed steps", "peak_rss_steps_mib", "{:.0f}"),
    ("RSS MiB before timed steps", "rss_before_steps_mib", "{:.0f}"),
    ("peak CUDA MiB, timed steps", "peak_cuda_mib", "{:.0f}"),
    ("timed steps", "steps_timed", "{:d}"),
    ("steps left out: compiling", "steps_left_out_compiling", "{:d}"),
    ("wall s of compiling steps, max", "compile_wall_s", "{:.1f}"),
)
COUNTS = ("steps_timed", "steps_left_out_compiling")  # rows without a ratio


def table(columns: dict[str, dict]) -> str:
    """One row per figure, one column per version, then each version's ratio to the first."""
    names = list(columns)
    ratios = [f"{n}/{names[0]}" for n in names[1:]]
    width = max([12, *(len(n) + 2 for n in names + ratios)])
    lines = [f"{'':<28}" + "".join(f"{n:>{width}}" for n in names + ratios)]
    for label, key, fmt in ROWS:
        values = [columns[n].get(key) for n in names]
        if all(v is None for v in values):
            continue
        cells = [fmt.format(v) if v is not None else "-" for v in values]
        base = values[0]
        for v in values[1:]:
            ok = key not in COUNTS and v is not None and base
            cells.append(f"{v / base:.3f}" if ok else "")
        lines.append(f"{label:<28}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def summarise(records: list[dict]) -> dict:
    """Pool the steps of several runs of one version: min and median over all of them; memory peaks: the max."""
    wall = [t for r in records for t in r["wall_s"]]
    cpu = [t for r in records for t in r["cpu_s"]]
    ops = [n for r in records for n in r["ops_per_step"]]

    def peak(key: str) -> float | None:
        values = [r[key] for r in records if r.get(key) is not None]
        return max(values) if values else None

    compiling = [r["compile_wall_s"] for r in records if r.get("compile_wall_s")]

    by_name: Counter[str] = Counter()
    for r in records:
        by_name.update({name: n / len(records) for name, n in r["ops_by_name"].items()})
    return {
        "runs": len(records),
        "steps_timed": len(wall),
        **_min_median("wall_s", wall),
        **_min_median("cpu_s", cpu),
        **_min_median("ops_per_step", [float(n) for n in ops]),
        "ops_top10": [[name, n] for name, n in by_name.most_common(10)],
        "ops_by_name": dict(by_name.most_common()),
        "peak_rss_mib": peak("peak_rss_mib"),
        "peak_rss_steps_mib": peak("peak_rss_steps_mib"),
        "rss_before_steps_mib": peak("rss_before_steps_mib"),
        "peak_cuda_mib": peak("peak_cuda_mib"),
        "steps_left_out_compiling": sum(r.get("steps_left_out_compiling", 0) for r in records),
        "compile_wall_s": max(compiling) if compiling else None,
        "git_revision": records[0]["git_revision"],
        "text2live_file": records[0]["text2live_file"],
    }


def write_record(record: dict, path: Path | None, out: Path, stem: str) -> Path:
    if path is None:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def describe(record: dict, extra: str = "") -> str:
    lines = [
        f"measured: {record['measured']}",
        f"settings: {record['settings']}{extra}; input {record['input_shape']}, CLIP {record['clip']} "
        f"({record['clip_precision']})" + (f", layers {record['edit_layers']}" if record["edit_layers"] else ""),
        f"machine:  {record['device']}; torch {record['torch']}, {record['threads']} threads "
        f"(OMP_NUM_THREADS={record['omp_num_threads']})",
        f"overrides: {' '.join(record['overrides'])}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- comparing


def _run_git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def _worker_command(
    args: argparse.Namespace, source: Path, out: Path, video_dir: Path | None, extra: list[str]
) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(source), "--json", str(out)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--count-steps", str(args.count_steps)]
    if args.small:
        cmd.append("--small")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.video:
        cmd += ["--video", "--frames", str(args.frames), "--video-dir", str(video_dir)]
    return [*cmd, "--", *args.overrides, *extra]


def variant_overrides(spec: str) -> list[str]:
    """The overrides of a ``--variants`` entry: ``default`` (or nothing) is none, else space-separated overrides."""
    return [] if spec.strip() in ("", "default") else spec.split()


def compare(args: argparse.Namespace) -> int:
    """Measure the revisions and the working tree, each with every variant, in interleaved rounds; print and write
    the comparison."""
    scratch = Path(tempfile.mkdtemp(prefix="t2l-benchmark-compare-"))
    added: list[Path] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the worktrees are removed
    try:
        versions: dict[str, dict] = {}
        for i, rev in enumerate(args.compare or []):
            try:
                commit = _run_git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
            except subprocess.CalledProcessError:
                print(f"error: {rev} is not a revision of {REPO}", file=sys.stderr)
                return 2
            name = rev if rev not in versions and rev != "work" else f"{rev}#{i + 1}"
            path = scratch / f"v{i}"
            _run_git("worktree", "add", "--detach", str(path), commit)
            added.append(path)
            versions[name] = {"rev": rev, "commit": commit, "source": path}
        versions["work"] = {"rev": "work", "commit": git_revision(REPO), "source": REPO}
        if args.variants:
            specs = list(dict.fromkeys(v.strip() or "default" for v in args.variants))
            versions = {
                (spec if not args.compare else f"{name}:{spec}"): {**v, "overrides": variant_overrides(spec)}
                for name, v in versions.items()
                for spec in specs
            }
        video_dir = None
        if args.video:
            video_dir = scratch / "video"
            print(f"making the synthetic video ({args.frames} frames) shared by every version ...", flush=True)
            sys.path.insert(0, str(REPO))
            make_video_inputs(video_dir, args.frames)

        (scratch / "tmp").mkdir()
        names = list(versions)
        runs: dict[str, list[dict]] = {n: [] for n in names}
        failed: dict[str, str] = {}
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # the first of a round rotates
            for name in order:
                if name in failed:
                    continue
                out = scratch / f"round{r}-{len(runs[name])}-{names.index(name)}.json"
                log = out.with_suffix(".log")
                env = dict(os.environ, TMPDIR=str(scratch / "tmp"))  # a killed worker's files go with ours
                if args.threads:
                    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
                extra = versions[name].get("overrides", [])
                cmd = _worker_command(args, versions[name]["source"], out, video_dir, extra)
                with open(log, "w") as f:
                    rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
                if rc != 0 or not out.is_file():
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                    failed[name] = f"exit status {rc}"
                    print(f"round {r + 1}/{args.rounds} {name}: FAILED (exit status {rc}):\n{tail}", file=sys.stderr)
                    continue
                record = json.loads(out.read_text())
                runs[name].append(record)
                print(
                    f"round {r + 1}/{args.rounds} {name:>10}: wall {record['wall_s_median']:.4f} s/step median, "
                    f"CPU {record['cpu_s_median']:.4f}, {record['ops_per_step_median']:.0f} ops/step",
                    flush=True,
                )

        done = [n for n in names if runs[n]]
        summaries = {n: summarise(runs[n]) for n in done}
        record = {
            "compare": {
                n: {
                    "rev": versions[n]["rev"],
                    "commit": versions[n]["commit"],
                    "source": str(versions[n]["source"]),
                    "overrides": versions[n].get("overrides", []),
                }
                for n in names
            },
            "rounds": args.rounds,
            "failed": failed,
            "summary": summaries,
            "runs": runs,
        }
        path = write_record(record, args.json, args.out, "benchmark-compare")
        if done:
            first = runs[done[0]][0]
            print()
            print(describe(first, f"; {args.rounds} rounds, each a fresh process per version"))
            if args.variants:
                print(f"variants: {', '.join(done)} (the overrides above are the first one's)")
            for n in done:
                print(f"{n:>10}: {summaries[n]['git_revision']} (text2live from {summaries[n]['text2live_file']})")
            print()
            print(table(summaries))
        print(f"\nrecord: {path}")
        return 1 if failed else 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for path in added:
            try:
                _run_git("worktree", "remove", "--force", str(path))
            except subprocess.CalledProcessError:
                shutil.rmtree(path, ignore_errors=True)
                subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- entry


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="steps run and timed, warm-up included (default 50)")
    parser.add_argument(
        "--warmup", type=int, help="first steps left out of the statistics (default 3, at most --steps - 1)"
    )
    parser.add_argument(
        "--count-steps", type=int, default=2, help="extra steps after the timed ones whose aten ops are counted"
    )
    parser.add_argument("--small", action="store_true", help="the small CPU settings (tiny CLIP, 96 px; image)")
    parser.add_argument("--video", action="store_true", help="time a video edit (synthetic NLA, 768x432 frames)")
    parser.add_argument("--frames", type=int, default=50, help="frames of the synthetic video (default 50)")
    parser.add_argument("--threads", type=int, help="torch threads (and OMP_NUM_THREADS of compared processes)")
    parser.add_argument("--compare", nargs="+", metavar="REV", help="git revisions to compare with the working tree")
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="OVERRIDES",
        help='settings to compare, each a quoted list of overrides or "default", e.g. default compile=true '
        '"generator_precision=bf16 clip.checkpoint_views=true" (shared overrides go before this flag)',
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --compare or --variants (default 3)")
    parser.add_argument("--json", type=Path, help="where to write the JSON record")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"), help="folder of the JSON record")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # --compare's child: import text2live here
    parser.add_argument("--video-dir", type=Path, help=argparse.SUPPRESS)  # --compare's child: the shared video
    parser.add_argument("overrides", nargs="*", help="t2l-train overrides, e.g. clip=tiny trainer=cpu")
    args = parser.parse_args(argv)
    if args.compare:  # overrides right after the revisions land in --compare: tell them by their = (or ~, +)
        given = args.compare
        args.compare = [r for r in given if "=" not in r and not r.startswith(("~", "+"))]
        args.overrides = [r for r in given if r not in args.compare] + args.overrides
        if not args.compare:
            parser.error("--compare needs at least one git revision")
    if args.warmup is None:
        args.warmup = max(0, min(3, args.steps - 1))
    if args.steps <= args.warmup or args.warmup < 0:
        parser.error("--steps must be larger than --warmup (and --warmup >= 0)")
    if args.count_steps < 1:
        parser.error("--count-steps must be at least 1")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.small and args.video:
        parser.error("--small is an image setting: give video overrides after the flags instead")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare or args.variants:
        return compare(args)
    if args.worker is not None:
        if "text2live" in sys.modules:
            raise RuntimeError("text2live was imported before the worker chose its version")
        sys.path.insert(0, str(args.worker.resolve()))
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from text2live.errors import Text2LiveError
    except ImportError:  # a version without it
        Text2LiveError = ()  # noqa: N806
    try:
        record = measure(
            args.overrides,
            steps=args.steps,
            warmup=args.warmup,
            count_steps=args.count_steps,
            video=args.video,
            small=args.small,
            frames=args.frames,
            video_dir=args.video_dir,
        )
    except Text2LiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    if args.worker is not None:
        if not Path(record["text2live_file"]).resolve().is_relative_to(args.worker.resolve()):
            raise RuntimeError(f"text2live came from {record['text2live_file']}, not from {args.worker}")
        write_record(record, args.json, args.out, "benchmark")
        return 0
    path = write_record(record, args.json, args.out, "benchmark")
    print()
    print(describe(record))
    print(f"revision: {record['git_revision']} (text2live from {record['text2live_file']})")
    print()
    print(table({"this run": record}))
    print("top aten ops/step: " + ", ".join(f"{name} {n:.0f}" for name, n in record["ops_top10"]))
    print(f"\nrecord: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
