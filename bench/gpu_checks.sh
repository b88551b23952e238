#!/usr/bin/env bash
# On the GPU machine: build with the tests against the wheel's libtorch (and the CUDA kernels when nvcc is there),
# run the tests that have a CUDA path, then one job of two processes under torchrun (its agent-store rendezvous)
# against one process, on the CPU and on the GPU (two processes share GPU 0 when only one is present), comparing
# the files byte for byte.
#   bench/gpu_checks.sh [resnet50]   TESTS (ctest -R regex) picks the tests; resnet50 also runs the default method
#                                    on ResNet-50 (bench/gpu_bench.sh's model and data; raw data in .gpu/raw) as
#                                    one process and as two under torchrun (sharing GPU 0 when only one is present)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.gpu/out}
S=.gpu/checks
mkdir -p "$OUT" "$S"
export CUDACXX=${CUDACXX:-$(command -v nvcc || true)} BAYESQ_PYTHON=${BAYESQ_PYTHON:-$(command -v python3)}
log() { echo "[$(date +%H:%M:%S)] $*"; }
log build
BAYESQ_BUILD_TESTS=ON scripts/build.sh "$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" build-gpu \
  > "$S/build.log" 2>&1 || { tail -40 "$S/build.log"; exit 1; }
grep -i "cuda kernels\|distributed" "$S/build.log" | head -5 || true
log tests
(cd build-gpu && ctest -j 8 -R "${TESTS:-Gptq|DesignBeside|Distributed|Curvature|Capture}" --output-on-failure) \
  > "$OUT/ctest.log" 2>&1 || true
grep -E "tests passed|Failed|\*\*\*" "$OUT/ctest.log" || true
F=build-gpu/tests/fixtures
args=(quantize --model $F/quickstart_cnn.pt --calib $F/quickstart_calib.pt --bits 2.5,3 --threads 4 --seed 0)
for dev in cpu cuda; do
  log "one process, $dev"
  build-gpu/bayesq "${args[@]}" --device $dev -o "$S/one-$dev-{bits}.pt" --report "$S/one-$dev-{bits}.json" -q
  log "torchrun, two processes, $dev"
  torchrun --nproc_per_node=2 --no-python build-gpu/bayesq "${args[@]}" --device $dev \
    -o "$S/two-$dev-{bits}.pt" --report "$S/two-$dev-{bits}.json" > "$OUT/torchrun_$dev.log" 2>&1 \
    || { echo "torchrun failed:"; tail -20 "$OUT/torchrun_$dev.log"; continue; }
  for f in "$S"/one-$dev-*.pt; do
    g=${f/one-/two-}
    if cmp "$f" "$g"; then echo "$(basename "$g"): identical to one process's"; else echo "$(basename "$g"): DIFFERS"; fi
  done
  for j in "$S"/two-$dev-*.json; do
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[1], r.get('device'), json.dumps(r.get('distributed')))" "$j"
  done
done

if [ "${1:-}" = resnet50 ]; then
  bench/gpu_bench.sh data-fmnist train-resnet50 > "$S/prepare.log" 2>&1 || { tail -20 "$S/prepare.log"; exit 1; }
  W=.gpu
  rargs=(quantize --model $W/models/resnet50.pt --calib $W/data/fmnist_calib.pt --bits 3 --device cuda --threads 8 --seed 0)
  log "resnet50: one process"
  build-gpu/bayesq "${rargs[@]}" -o "$S/rn50-one.pt" --report "$OUT/rn50_one.json" -q
  log "resnet50: torchrun, two processes"
  torchrun --nproc_per_node=2 --no-python build-gpu/bayesq "${rargs[@]}" -o "$S/rn50-two.pt" \
    --report "$OUT/rn50_two.json" > "$OUT/torchrun_rn50.log" 2>&1 || { tail -20 "$OUT/torchrun_rn50.log"; exit 1; }
  log done
  if cmp "$S/rn50-one.pt" "$S/rn50-two.pt"; then echo "resnet50: identical files"; else echo "resnet50: files DIFFER"; fi
  python3 -c "
import json
for n in ('one', 'two'):
    r = json.load(open('$OUT/rn50_' + n + '.json'))
    print(n, 'timings', json.dumps(r.get('timings')), 'distributed', json.dumps(r.get('distributed')))"
fi
