"""Seconds per training step and peak memory of an image or video edit, measured on this machine.

    python scripts/benchmark.py                                   # golden-horse settings, random ViT-B/32
    python scripts/benchmark.py --steps 20 clip=tiny trainer=cpu  # any t2l-train override after the flags
    python scripts/benchmark.py --video --steps 30                # a video example's settings (blackswan)
    python scripts/benchmark.py --video edit_layers=[foreground,background]

Uses the demo photo unless image_path= is given. CLIP defaults to ``random_vit_b32`` (ViT-B/32 sized, random
weights: the compute of the real model without a download). Bootstrapping is on for every measured step, as in
the first 1000 steps of golden_horse. With ``--video`` the edit runs through a synthetic NLA checkpoint of the real
architecture (``text2live.nla.synthetic_nla``) over 50 frames of 768x432 (the demo photo, repeated), with the
video examples' settings; setting up the atlases is not timed. Writes a JSON record under outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from text2live.config import ASSETS_DIR, CONF_DIR
from text2live.errors import Text2LiveError
from text2live.nla import synthetic_nla
from text2live.train import build_system


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="steps to time (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the statistics")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"), help="folder of the JSON record")
    parser.add_argument("--video", action="store_true", help="time a video edit (synthetic NLA, 768x432 frames)")
    parser.add_argument("--frames", type=int, default=50, help="frames of the synthetic video (default 50)")
    parser.add_argument("overrides", nargs="*", help="t2l-train overrides, e.g. clip=tiny trainer=cpu")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")
    with tempfile.TemporaryDirectory() as scratch:
        run(args, Path(scratch))


def video_inputs(folder: Path, frames: int) -> list[str]:
    """A synthetic NLA checkpoint and frames for it; the overrides that point a video run at them."""
    checkpoint = folder / "checkpoint"
    torch.save(synthetic_nla(frames, 432, 768).checkpoint(), checkpoint)
    (folder / "frames").mkdir()
    photo = (ASSETS_DIR / "cat.png").read_bytes()
    for t in range(frames):
        (folder / "frames" / f"{t:05d}.png").write_bytes(photo)
    return [
        "experiment=video",
        f"nla_checkpoint={checkpoint}",
        f"frames_dir={folder / 'frames'}",
        f"num_frames={frames}",
        "comp_text=golden swan",
        "src_text=swan",
        "screen_text=golden",
        "clip=random_vit_b32",
        "~logger",
        "+trainer.enable_checkpointing=false",
        "trainer.enable_model_summary=false",
    ]


def run(args: argparse.Namespace, scratch: Path) -> None:
    if args.video:
        defaults = [*video_inputs(scratch, args.frames), f"steps={args.steps}"]
    else:
        defaults = [
            "experiment=golden_cat",
            "clip=random_vit_b32",
            "comp_text=golden horse",
            "src_text=horse",
            "screen_text=golden horse",
            "bootstrap_text=horse",
            f"steps={args.steps}",
            f"loss.bootstrap_steps={10 * args.steps}",
            "~logger",
            "+trainer.enable_checkpointing=false",
            "trainer.enable_model_summary=false",
        ]
    given = {o.split("=", 1)[0].lstrip("+~") for o in args.overrides}
    overrides = [o for o in defaults if o.split("=", 1)[0].lstrip("+~") not in given] + args.overrides
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    try:
        system, datamodule = build_system(cfg)
    except Text2LiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    timer = StepTimer()
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[timer])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(system, datamodule=datamodule)

    measured = timer.times[args.warmup :]
    device = trainer.strategy.root_device
    record = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "input_shape": list(datamodule.video.shape if args.video else datamodule.image.shape[-2:]),
        "edit_layers": list(cfg.edit_layers) if args.video else None,
        "clip": cfg.clip.name,
        "clip_precision": str(system.guides()[0].dtype),
        "steps_timed": len(measured),
        "seconds_per_step_median": statistics.median(measured),
        "seconds_per_step_mean": statistics.fmean(measured),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "overrides": overrides,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"benchmark-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    shown = ("device", "input_shape", "edit_layers", "clip", "clip_precision", "seconds_per_step_median")
    for key in (*shown, "peak_gpu_memory_gib"):
        print(f"{key:>26}: {record[key]}")
    print(f"{'record':>26}: {path}")


if __name__ == "__main__":
    main()
