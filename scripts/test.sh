#!/usr/bin/env bash
# From nothing to a green test run: install dependencies, build, run every test (GoogleTest through CTest).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "$(nproc)" --timeout 900
