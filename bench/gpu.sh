#!/usr/bin/env bash
# Issue 33's GPU run, one prepared script (8 minutes on an H200: BENCH_BUDGET bounds it):
#   1. decode the archive into blitz's cache (untimed, as a user's first command would);
#   2. the step profile of fast-gpu (bench/step_profile.py: GPU time by kind of kernel and the
#      idle time per step, as markdown); its compile also fills the compile cache;
#   3. bench/compare.py: a fresh `blitz train --preset fast-gpu` process timed from its launch to
#      its printed accuracy (warm cache), then blitz fast-gpu, the `airbench` package's train94
#      and Keller Jordan's airbench94_muon as long-lived workers, each warmed up once, untimed,
#      interleaved seed by seed on the same images; then, budget left, the A/B of issue 33's
#      two candidates (optim.muon_batched, train.tta_share=0.25) against plain fast-gpu on the
#      first BENCH_AB_SEEDS seeds; one table with the ratios, rewritten after every seed.
# Everything lands in OUT_DIR; gpu.md holds the tables for bench/RESULTS.md.
#
#   bench/gpu.sh ARCHIVE [SEEDS=10] [OUT_DIR=$OUT or bench/results]
#
# Before, on a machine with the archive and a git copy of KellerJordan/cifar10-airbench:
#   bench/get_airbench.sh            # -> bench/external/ (git-ignored: someone else's code)
#   mkdir -p data && cp /work/shared/data/cifar10-jpeg.tar.gz data/   # /data/ is ignored too
# and then one call of the run tool (H200 or H100; 15 minutes of device time in all):
#   run(command="bench/gpu.sh data/cifar10-jpeg.tar.gz 10 $OUT",
#       carry=["bench/external", "data"], timeout_s=590)
#
# BENCH_BUDGET (seconds, default 480): no seed round starts that would end later than this
# after the script's start, and the profile gets at most a quarter of it; a table is always
# written. The airbench94_muon warm-up alone (max-autotune) took about 155 s on an H200.
# BENCH_AB_SEEDS (default 3): seeds of each candidate's A/B (0: none).
# BENCH_PROFILE: options of bench/step_profile.py (default: profile steps 33-52 of 200).
# BENCH_EXTRA adds options to each `blitz train`, e.g. a dry run on a CPU with a small archive
# (BENCH_CPU_DRY=1 runs the airbench contenders on the CPU, uncompiled: plumbing only):
#   BENCH_CPU_DRY=1 BENCH_PROFILE="--skip 2 --steps 2" BENCH_EXTRA="--device cpu --max-steps 6 \
#     --batch-size 200 --set model.options.widths=[16,32,32]" bench/gpu.sh SMALL.tar.gz 2 /tmp/b
set -euo pipefail
archive=$(realpath "${1:?usage: bench/gpu.sh ARCHIVE [SEEDS] [OUT_DIR]}")
seeds=${2:-10}
out=$(realpath -m "${3:-${OUT:-bench/results}}")
budget=${BENCH_BUDGET:-480}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export BLITZ_DATA="${BLITZ_DATA:-$PWD/.cache/blitz}"
mkdir -p "$out"
{
  date -u
  git log --oneline -1 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" || true
  python3 -c "import torchvision; print('torchvision', torchvision.__version__)" || true
  cat bench/external/COMMIT 2>/dev/null || echo "bench/external missing: run bench/get_airbench.sh"
} | tee "$out/machine.txt"
python3 -m blitz show --data "$archive" --count 8 --out "$out/train_images.png"
echo "== step profile (at most $((budget / 4)) s)"
timeout $((budget / 4)) python3 bench/step_profile.py ${BENCH_PROFILE:-} --markdown "$out/step_profile.md" -- \
  --preset fast-gpu --data "$archive" --out "$out/profile_run" --overwrite --quiet \
  ${BENCH_EXTRA:-} > "$out/step_profile.txt" 2>&1 || echo "step profile failed: $out/step_profile.txt"
tail -3 "$out/step_profile.txt"
echo "== fast-gpu, train94, airbench94_muon, seed by seed (budget: $((budget - SECONDS)) s left)"
python3 bench/compare.py "$archive" "$out" --seeds "$seeds" --budget $((budget - SECONDS)) \
  --ab-seeds "${BENCH_AB_SEEDS:-3}" --blitz-args="${BENCH_EXTRA:-}" || echo "compare.py failed"
{
  cat "$out/machine.txt"
  echo
  cat "$out/compare.md" 2>/dev/null || echo "no comparison table"
  echo
  echo "Step profile of fast-gpu (bench/step_profile.py):"
  echo
  cat "$out/step_profile.md" 2>/dev/null || echo "no step profile"
} > "$out/gpu.md"
cat "$out/gpu.md"
echo "gpu.sh: $SECONDS s in all"
