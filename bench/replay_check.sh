#!/usr/bin/env bash
# On the GPU machine: build with the tests, run the tests with a CUDA path for replayed forwards, stacked-row
# chunks and per-stage peaks, then quantize the quickstart CNN and the separable fixture on CUDA with
# --cuda-graphs auto and off and compare the files byte for byte (Note [Replayed forwards] in
# include/bayesq/measure/kl_forward.h).
#   bench/replay_check.sh      TESTS (ctest -R regex) picks the tests
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.gpu/out}
S=.gpu/checks
mkdir -p "$OUT" "$S"
export CUDACXX=${CUDACXX:-$(command -v nvcc || true)} BAYESQ_PYTHON=${BAYESQ_PYTHON:-$(command -v python3)}
log() { echo "[$(date +%H:%M:%S)] $*"; }
log build
BAYESQ_BUILD_BENCH=ON BAYESQ_BUILD_TESTS=ON \
  scripts/build.sh "$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" build-gpu \
  > "$S/build.log" 2>&1 || { tail -40 "$S/build.log"; exit 1; }
log tests
(cd build-gpu && ctest -j 8 -R "${TESTS:-Replayed|StackedRows|KfacUniform|Writer.Packed|CachedPrefix}" \
  --output-on-failure) > "$OUT/ctest_replay.log" 2>&1 || true
grep -E "tests passed|Failed|\*\*\*|Skipped" "$OUT/ctest_replay.log" || true
F=build-gpu/tests/fixtures
for m in quickstart_cnn:quickstart_calib separable:separable_calib cov_mha:cov_mha_calib; do
  model=${m%%:*} calib=${m##*:}
  for g in auto off; do
    build-gpu/bayesq quantize --model $F/$model.pt --calib $F/$calib.pt --bits 3 --device cuda --threads 8 --seed 0 \
      --cuda-graphs $g -o "$S/$model-$g.pt" --report "$S/$model-$g.json" -q
  done
  if cmp -s "$S/$model-auto.pt" "$S/$model-off.pt"; then same=identical; else same=DIFFER; fi
  python3 - "$S/$model" "$same" <<'PY'
import json, sys
base, same = sys.argv[1], sys.argv[2]
for g in ("auto", "off"):
    r = json.load(open(f"{base}-{g}.json"))
    t, lt = r["timings"], r["loss_table"]
    print(base.split("/")[-1], g, "files", same, "replayed", lt.get("replayed_forwards", False),
          "table forwards %.3f s" % t.get("measure_table_forward", 0), "quantize_total %.3f s" % t.get("quantize_total", 0),
          "peaks", json.dumps(r["peak_memory"].get("device_bytes_by_stage")))
PY
done
