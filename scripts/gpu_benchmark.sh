#!/usr/bin/env bash
# Time the speed options on a CUDA machine, in under 8 minutes: 50 steps at golden-horse settings (512 px, a
# ViT-B/32-sized CLIP with random weights) and 30 steps at a video example's settings (a synthetic NLA of the real
# architecture, 50 frames of 768x432), each by default and with compile=true, generator_precision=bf16 and
# clip.checkpoint_views=true. One process and one JSON record per run (scripts/benchmark.py), then a table per
# setting. A run that would not end within the budget is cut (its record is missing and the table says so).
#
#   bash scripts/gpu_benchmark.sh                     # records under outputs/benchmarks/gpu-<date>/
#   bash scripts/gpu_benchmark.sh --out DIR --budget 420
#   bash scripts/gpu_benchmark.sh --tiny              # dry check on the CPU: tiny settings, 3 steps per run
set -euo pipefail
cd "$(dirname "$0")/.."

out="outputs/benchmarks/gpu-$(date +%Y%m%d-%H%M%S)"
budget=450 # seconds for every run together (process start and set-up included)
tiny=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tiny) tiny=1 ;;
        --out) out="$2"; shift ;;
        --budget) budget="$2"; shift ;;
        *) echo "error: unknown argument $1 (use --tiny, --out DIR, --budget SECONDS)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$tiny" = 1 ]; then
    image_args=(--small --steps 3 --warmup 1 --count-steps 1 -- data.resize_input=64 loss.n_aug=2)
    video_args=(--video --frames 5 --steps 3 --warmup 1 --count-steps 1 -- clip=tiny trainer=cpu
        generator.channels_down=16 generator.channels_up=16 generator.num_scales=4 data.height=36 data.width=64
        data.grid_resolution=200 data.mask_border=4 data.chunk_size=4096 loss.n_aug=2)
    cap_run=300
    cap_compile=600
else
    if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        echo "error: no CUDA device is visible to torch: run this on a GPU machine (or pass --tiny for a dry check)" >&2
        exit 2
    fi
    image_args=(--steps 50 --warmup 5 --count-steps 2 --)
    video_args=(--video --steps 30 --warmup 5 --count-steps 2 --)
    cap_run=120
    cap_compile=240
fi

mkdir -p "$out"
start=$SECONDS
# name | setting | overrides of the variant (the most wanted first: a cut budget drops the last)
runs=(
    "image-default|image|"
    "image-bf16|image|generator_precision=bf16"
    "image-compile|image|compile=true"
    "video-default|video|"
    "video-bf16|video|generator_precision=bf16"
    "video-compile|video|compile=true"
    "image-checkpoint_views|image|clip.checkpoint_views=true"
    "video-checkpoint_views|video|clip.checkpoint_views=true"
)
for run in "${runs[@]}"; do
    IFS="|" read -r name setting variant <<<"$run"
    left=$((budget - (SECONDS - start)))
    cap=$cap_run
    [[ "$variant" == *compile* ]] && cap=$cap_compile
    limit=$((left < cap ? left : cap))
    if [ "$limit" -lt 30 ]; then
        echo "$name: skipped (the budget of ${budget} s is spent)" | tee -a "$out/skipped.txt"
        continue
    fi
    if [ "$setting" = image ]; then args=("${image_args[@]}"); else args=("${video_args[@]}"); fi
    # the variant's overrides go after the shared ones (after --), so they win
    read -r -a extra <<<"$variant"
    echo "$name: ${variant:-default} (at most ${limit} s)"
    if ! timeout "$limit" python scripts/benchmark.py --json "$out/$name.json" "${args[@]}" "${extra[@]}" \
        >"$out/$name.log" 2>&1; then
        echo "$name: FAILED or cut (see $out/$name.log)" | tee -a "$out/skipped.txt"
    fi
done
echo "all runs: $((SECONDS - start)) s"

python - "$out" <<'EOF'
import importlib.util
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("benchmark", "scripts/benchmark.py")
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)
records = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "summary.json"}
summary = {}
for setting in ("image", "video"):
    columns = {n.split("-", 1)[1]: r for n, r in records.items() if n.startswith(setting + "-")}
    if not columns:
        continue
    order = ["default", *sorted(c for c in columns if c != "default")]
    columns = {c: columns[c] for c in order if c in columns}
    first = next(iter(columns.values()))
    print(f"\n{setting}: {first['settings']}, input {first['input_shape']}, CLIP {first['clip']} ({first['clip_precision']})")
    print(f"machine: {first['device']}; torch {first['torch']}")
    print(benchmark.table(columns))
    summary[setting] = {c: {k: r.get(k) for k in (key for _, key, _ in benchmark.ROWS)} for c, r in columns.items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
print(f"\nrecords: {out}")
EOF
