"""``t2l-eval <run or sweep folder>``: the metrics of finished runs, in ``metrics.json`` and TensorBoard."""

from __future__ import annotations

import argparse
from pathlib import Path

from text2live.cli.common import fail, one_line_errors


def _reason(exc: Exception) -> str:
    from text2live.errors import Text2LiveError

    if isinstance(exc, Text2LiveError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="t2l-eval",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Compute the metrics of finished text2live runs (CLIP score, CLIP directional similarity, structure\n"
            "distance, preservation L1/PSNR/SSIM outside the edit, alpha coverage; for videos also frame\n"
            "consistency). Each run's edit is re-rendered from its checkpoint and scored with the CLIP of its own\n"
            "config; the metrics go to <run>/metrics.json and to <run>/tb (TensorBoard's HParams view)."
        ),
        epilog=(
            "examples:\n"
            "  t2l-eval outputs/golden_cat/seed0     one run\n"
            "  t2l-eval outputs                      every finished run below outputs/\n"
            "  t2l-eval outputs --force              also the runs whose metrics.json is up to date\n"
            "  tensorboard --logdir outputs          then open the HPARAMS tab to compare runs\n"
            "\n"
            "One line per run: its folder and three key metrics. Exit status 2 (with one 'error:' line) when the\n"
            "folder does not exist, holds no finished run, or some runs could not be evaluated; the other runs'\n"
            "metrics are still written."
        ),
    )
    parser.add_argument("folder", help="a run folder, or a folder holding runs at any depth (a sweep, outputs/)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="also re-evaluate the runs whose metrics.json is up to date (newer than their checkpoint)",
    )
    parser.add_argument("--device", default=None, help="where to render and score: cpu, cuda, cuda:1 (default: auto)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with one_line_errors("evaluation"):
        _evaluate(args)


def _evaluate(args: argparse.Namespace) -> None:
    import json

    import torch
    from tqdm import tqdm

    from text2live import runs
    from text2live.evaluate import build_eval_guide, clip_key, default_device, evaluate_run, is_up_to_date, summary
    from text2live.runs import METRICS_FILE, find_runs, load_config

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        fail(f"{folder} is not a folder: pass a run folder or a folder of runs (e.g. outputs/)")
    found = find_runs(folder)
    if not found:
        fail(f"no finished run (a folder with {runs.CONFIG_FILE} and {runs.DONE_FILE}) at or below {folder}")
    try:
        device = torch.device(args.device) if args.device else default_device()
    except RuntimeError:
        fail(f"--device={args.device} is not a torch device: use cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device={args.device} asks for CUDA but torch sees no GPU here: use --device=cpu")
    guides = {}
    failed: list[tuple[Path, str]] = []
    for run_dir in tqdm(found, desc="t2l-eval", unit="run", disable=None):
        try:
            if not args.force and is_up_to_date(run_dir):
                record = json.loads((run_dir / METRICS_FILE).read_text())
                tqdm.write(summary(run_dir, record["metrics"], "  (up to date)"))
                continue
            cfg = load_config(run_dir)
            key = clip_key(cfg)
            if key not in guides:
                guides[key] = build_eval_guide(cfg, device)
            record = evaluate_run(run_dir, guides[key], device)
            tqdm.write(summary(run_dir, record["metrics"]))
        except Exception as exc:  # one broken run must not stop the others
            failed.append((run_dir, _reason(exc)))
    if failed:
        listed = "; ".join(f"{path}: {reason}" for path, reason in failed)
        fail(f"{len(failed)} of {len(found)} runs could not be evaluated: {listed}")


if __name__ == "__main__":
    main()
