#!/usr/bin/env bash
# Copies the raw datasets the GPU benchmark needs into .gpu/raw (ignored by git), to be carried to the GPU
# machine: Fashion-MNIST's IDX files and WordNet's data files, gzipped (about 37 MB together).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh wordnet-base
mkdir -p .gpu/raw/fashion .gpu/raw/wordnet
cp -u /usr/share/datasets/fashion-mnist/*.gz .gpu/raw/fashion/
for pos in noun verb adj adv; do
  [ -f .gpu/raw/wordnet/data.$pos.gz ] || gzip -9 -c /usr/share/wordnet/data.$pos > .gpu/raw/wordnet/data.$pos.gz
done
du -sh .gpu/raw
