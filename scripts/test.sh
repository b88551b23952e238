#!/usr/bin/env bash
# From nothing to a green test run: install dependencies, build, run every test (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh
cd build
# One test per core: each test's bayesq on one thread (OMP_NUM_THREADS caps bayesq's and libtorch's threads), or
# the tests' OpenMP threads oversubscribe the cores and spin (the suite took twice as long).
OMP_NUM_THREADS=1 ctest --output-on-failure -j "$(nproc)" --timeout 900
