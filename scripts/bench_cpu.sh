#!/usr/bin/env bash
# The CPU variant of the benchmark, for work without a GPU: the quickstart's small CNN on Fashion-MNIST, one
# calibration shared by RTN, GPTQ and BayesQ (diagonal and K-FAC) at 2 and 3 bits, and at the bits RTN/GPTQ
# actually use with their metadata. A few minutes on 2 cores; prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
demo=work/demo

scripts/setup.sh
scripts/build.sh
mkdir -p "$demo"
[ -f "$demo/fmnist_eval.pt" ] || $python bench/fashion_mnist.py "$demo"
[ -f "$demo/small_cnn.pt" ] || $python bench/train_small_cnn.py "$demo/small_cnn.pt"
build/bayesq compare --model "$demo/small_cnn.pt" --calib "$demo/fmnist_calib.pt" --data "$demo/fmnist_eval.pt" \
  --bits 2,3 --match-uniform --methods rtn,gptq,bayesq,bayesq/kfac -q \
  --json-output "$demo/bench_cpu.json" --markdown-output "$demo/bench_cpu.md" "$@"
