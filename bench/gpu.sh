#!/usr/bin/env bash
# The fast-gpu benchmark, one prepared run: decode the archive once, train fast-gpu for SEEDS seeds
# (one fresh process each: the first compiles cold, the rest reuse the compile cache), run the
# `airbench` package's train94 for as many seeds on the same images (where it is importable), then
# print and save one table with the ratio.
#
#   bench/gpu.sh ARCHIVE [SEEDS=10] [OUT_DIR=$OUT or bench/results]
#
# BENCH_BUDGET (seconds, default none): start no further blitz seed after this long, so a leased
# machine's time limit still leaves the table.
#
# BENCH_EXTRA adds options to each `blitz train`, e.g. a dry run of the script on a CPU:
#   BENCH_EXTRA="--device cpu --max-steps 2" bench/gpu.sh DATA 2
set -euo pipefail
archive=$(realpath "${1:?usage: bench/gpu.sh ARCHIVE [SEEDS] [OUT_DIR]}")
seeds=${2:-10}
out=$(realpath -m "${3:-${OUT:-bench/results}}")
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BLITZ_DATA="${BLITZ_DATA:-$PWD/.cache/blitz}"
mkdir -p "$out/runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
# untimed: decode the archive into the cache, as a user's first command would
python3 -m blitz show --data "$archive" --count 8 --out "$out/train_images.png"
train() {
  python3 -m blitz train --preset fast-gpu --data "$archive" --seed "$1" \
    --out "$out/runs/seed$1" --overwrite --quiet ${BENCH_EXTRA:-}
}
train 0  # cold compile cache
compared=()
if python3 -c "import airbench" 2>/dev/null; then
  if python3 bench/vs_airbench.py "$archive" "$out/airbench" --seeds "$seeds" \
    --json "$out/airbench.json"; then
    compared=(--airbench "$out/airbench.json")
  fi
fi
for seed in $(seq 1 $((seeds - 1))); do
  if [[ -n "${BENCH_BUDGET:-}" && $SECONDS -gt $BENCH_BUDGET ]]; then
    echo "BENCH_BUDGET reached: $seed of $seeds blitz seeds ran"
    break
  fi
  train "$seed"
done
python3 bench/gpu.py "$out"/runs/seed* --json "$out/gpu.json" "${compared[@]}" | tee "$out/gpu.md"
