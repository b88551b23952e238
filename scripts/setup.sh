#!/usr/bin/env bash
# Installs everything bayesq needs on Debian 12 with apt. Idempotent: does nothing when all is installed.
#   scripts/setup.sh [EXTRA_PACKAGE...]   also these (the GPU benchmark's carry needs wordnet-base)
set -euo pipefail

packages=(
  cmake g++ ninja-build
  libtorch-dev libeigen3-dev libcli11-dev libspdlog-dev nlohmann-json3-dev libgtest-dev
  libopenblas0-openmp  # libtorch-dev alone links the reference BLAS: matrix products 4-5x slower
  libgloo-dev  # Gloo headers for torch.distributed (multi-process jobs; the library itself comes with libtorch)
  python3-torch python3-torchvision
  dataset-fashion-mnist
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all packages present"
  exit 0
fi

echo "setup: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
