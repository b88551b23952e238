#!/usr/bin/env bash
# Configures and builds bayesq.
#   scripts/build.sh                      Debian's libtorch (CPU), build folder ./build
#   scripts/build.sh TORCH_PREFIX [DIR]   another libtorch, e.g. a PyTorch wheel's:
#       scripts/build.sh "$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" build-cuda
set -euo pipefail
cd "$(dirname "$0")/.."

prefix="${1:-}"
build_dir="${2:-build}"
args=(-S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release)
command -v ninja >/dev/null && args+=(-G Ninja)
[ -n "$prefix" ] && args+=("-DCMAKE_PREFIX_PATH=$prefix")
[ -n "${BAYESQ_PYTHON:-}" ] && args+=("-DBAYESQ_PYTHON=$BAYESQ_PYTHON")
[ -n "${BAYESQ_BUILD_BENCH:-}" ] && args+=("-DBAYESQ_BUILD_BENCH=$BAYESQ_BUILD_BENCH")
[ -n "${BAYESQ_BUILD_TESTS:-}" ] && args+=("-DBAYESQ_BUILD_TESTS=$BAYESQ_BUILD_TESTS")

cmake "${args[@]}" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
echo "build: $build_dir/bayesq"
