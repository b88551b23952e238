#!/usr/bin/env bash
# The common start of the GPU benchmark scripts: build bayesq (all host threads), make the Fashion-MNIST data and,
# per model, its data and trained model (bench/gpu_bench.sh stages; each skips what exists).
#   bench/gpu_prepare.sh LOG MODEL...      MODEL: resnet50, mobilenet, bert; the stages' output goes to LOG
set -euo pipefail
cd "$(dirname "$0")/.."
log_file=$1
shift
THREADS=$(nproc) bench/gpu_bench.sh build data-fmnist > "$log_file" 2>&1
for m in "$@"; do
  case $m in
    bert) bench/gpu_bench.sh data-wordnet train-bert >> "$log_file" 2>&1 ;;
    resnet50) bench/gpu_bench.sh train-resnet50 >> "$log_file" 2>&1 ;;
    mobilenet) bench/gpu_bench.sh train-mobilenet >> "$log_file" 2>&1 ;;
    *) echo "unknown model $m" >&2; exit 2 ;;
  esac
done
