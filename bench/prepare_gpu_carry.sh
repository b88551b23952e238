#!/usr/bin/env bash
# Copies the raw datasets the GPU benchmark needs into .gpu/raw (ignored by git), to be carried to the GPU
# machine: Fashion-MNIST's IDX files and WordNet's data files (about 52 MB together).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/raw/fashion .gpu/raw/wordnet
cp -u /usr/share/datasets/fashion-mnist/*.gz .gpu/raw/fashion/
cp -u /usr/share/wordnet/data.noun /usr/share/wordnet/data.verb /usr/share/wordnet/data.adj /usr/share/wordnet/data.adv .gpu/raw/wordnet/
du -sh .gpu/raw
