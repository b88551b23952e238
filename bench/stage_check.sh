#!/usr/bin/env bash
# Issue 17's first budget per stage on the GPU machine, one run at a time with nothing else on the machine:
#   bench/stage_check.sh [MODEL...]      resnet50, mobilenet, bert (default: resnet50 mobilenet)
# Per model: the default `quantize` at its first budget (BITS, default 2; BERT: BITS_BERT, default 3, the budgets
# that open bench/refine_check.sh's runs), the same run again with CUDA_LAUNCH_BLOCKING=1 (every kernel finishes
# before its launch returns, so each stage's host time holds its device time: the per-stage split of device time;
# its file must be the first run's; STAGE_BLOCKING=0 leaves it out), and `--method gptq` at the same budget.
# Needs the raw data under .gpu/raw (bench/prepare_gpu_carry.sh). Writes $OUT/stage_MODEL.json: per run every
# report timing, the peak device memory, the file's size and the calibration KL of the additive allocation, and
# whether the blocking run's file is the first run's.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.gpu
OUT=${OUT:-$W/out}
S=$W/stage
mkdir -p "$OUT" "$S"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet50 mobilenet)
log() { echo "[$(date +%H:%M:%S)] $*"; }
threads=$(nproc)
bench/gpu_prepare.sh "$OUT/stage_prepare.log" "${models[@]}"
for m in "${models[@]}"; do
  case $m in
    bert) args=(--model $W/models/bert.pt --calib $W/data/wordnet_calib512.pt --batch-size 16) bits=${BITS_BERT:-3} ;;
    resnet50) args=(--model $W/models/resnet50.pt --calib $W/data/fmnist_calib.pt) bits=${BITS:-2} ;;
    mobilenet) args=(--model $W/models/mobilenet_v2.pt --calib $W/data/fmnist_calib.pt) bits=${BITS:-2} ;;
    *) echo "unknown model $m" >&2; exit 2 ;;
  esac
  common=("${args[@]}" --device cuda --threads "$threads" --seed 0 --bits "$bits" -q)
  rm -f "$S/${m}"_*  # nothing of an earlier call on this machine
  log "$m: default"
  build-gpu/bayesq quantize "${common[@]}" -o "$S/${m}_default.pt" --report "$S/${m}_default.json" \
    > "$S/${m}_default.log" 2>&1
  runs="default gptq"
  if [ "${STAGE_BLOCKING:-1}" = 1 ]; then
    runs="default blocking gptq"
    log "$m: default, CUDA_LAUNCH_BLOCKING=1"
    CUDA_LAUNCH_BLOCKING=1 build-gpu/bayesq quantize "${common[@]}" -o "$S/${m}_blocking.pt" \
      --report "$S/${m}_blocking.json" > "$S/${m}_blocking.log" 2>&1
  fi
  log "$m: gptq"
  build-gpu/bayesq quantize "${common[@]}" --method gptq -o "$S/${m}_gptq.pt" --report "$S/${m}_gptq.json" \
    > "$S/${m}_gptq.log" 2>&1
  same=null
  [ -f "$S/${m}_blocking.pt" ] && { same=false; cmp -s "$S/${m}_default.pt" "$S/${m}_blocking.pt" && same=true; }
  python3 - "$S" "$m" "$same" "$OUT/stage_$m.json" "$runs" <<'PY'
import json, os, sys
S, m, same, out, runs = sys.argv[1:]
summary = {"model": m, "blocking_file_identical": json.loads(same), "runs": {}}
for run in runs.split():
    d = json.load(open(f"{S}/{m}_{run}.json"))
    j = d.get("joint_calibration_kl") or {}
    summary["runs"][run] = {
        "timings": d.get("timings"), "peak_memory": d.get("peak_memory"),
        "file_bytes": os.path.getsize(f"{S}/{m}_{run}.pt"),
        "calibration_kl": j.get("measured"), "refinement": j.get("refinement"),
        "bits_per_block": [b.get("bits") for b in d.get("blocks", [])]}
json.dump(summary, open(out, "w"), separators=(",", ":"))
t = {r: v["timings"] for r, v in summary["runs"].items()}
print(m, "blocking file identical:", summary["blocking_file_identical"])
for k in sorted(t["default"]):
    print(f"  {k:28s} {t['default'][k]:8.3f} {t.get('blocking', {}).get(k, 0):8.3f}")
print(f"  gptq quantize_total {t['gptq'].get('quantize_total', 0):.3f}")
PY
done
