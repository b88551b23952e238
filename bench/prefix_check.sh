#!/usr/bin/env bash
# Issue 17 item 3 on the GPU machine: the measured table's and the joint refinement's forwards from cached prefixes
# (Note [Cached prefix], Note [Suffix in the plain interpreter] in include/bayesq/measure/suffix_forward.h) against
# full forwards, one run at a time with nothing else on the machine:
#   bench/prefix_check.sh [MODEL...]      resnet50, mobilenet, bert (default: resnet50 mobilenet)
# Per model: `quantize --bits 2.5,3,4` with `--cached-prefix off` and `on`, then `--method gptq --bits 3`.
# PREFIX_SETTINGS (default "off on") picks the settings. Needs the raw data under .gpu/raw
# (bench/prepare_gpu_carry.sh). Writes $OUT/prefix_MODEL.json: per setting and budget the timings, KLs, file size
# and bits and codebook per block; the blocks whose bits or codebook differ between the settings; GPTQ's timings.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.gpu
OUT=${OUT:-$W/out}
S=$W/prefix
mkdir -p "$OUT" "$S"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet50 mobilenet)
settings=(${PREFIX_SETTINGS:-off on})
log() { echo "[$(date +%H:%M:%S)] $*"; }
threads=$(nproc)
bench/gpu_prepare.sh "$OUT/prefix_prepare.log" "${models[@]}"
for m in "${models[@]}"; do
  case $m in
    bert) model=$W/models/bert.pt calib=$W/data/wordnet_calib512.pt extra=(--batch-size 16) ;;
    resnet50) model=$W/models/resnet50.pt calib=$W/data/fmnist_calib.pt extra=() ;;
    mobilenet) model=$W/models/mobilenet_v2.pt calib=$W/data/fmnist_calib.pt extra=() ;;
  esac
  common=(--model "$model" --calib "$calib" "${extra[@]}" --device cuda --threads "$threads" --seed 0)
  for p in "${settings[@]}"; do
    log "$m: quantize --bits 2.5,3,4 --cached-prefix $p"
    build-gpu/bayesq quantize "${common[@]}" --bits 2.5,3,4 --cached-prefix "$p" \
      -o "$S/${m}_${p}_{bits}.pt" --report "$S/${m}_${p}_{bits}.json" > "$S/${m}_${p}.log" 2>&1
  done
  log "$m: quantize --method gptq --bits 3"
  build-gpu/bayesq quantize "${common[@]}" --method gptq --bits 3 -o "$S/${m}_gptq_3.pt" \
    --report "$S/${m}_gptq_3.json" > "$S/${m}_gptq.log" 2>&1
  python3 - "$S" "$m" "$OUT/prefix_$m.json" "${settings[@]}" <<'PY'
import json, os, sys
S, m, out, *settings = sys.argv[1:]
summary = {"model": m, "runs": {}, "blocks_that_differ": {}}
for p in settings:
    for bits in ("2.5", "3", "4"):
        r = json.load(open(f"{S}/{m}_{p}_{bits}.json"))
        summary["runs"].setdefault(p, {})[bits] = {
            "timings": r["timings"], "joint_calibration_kl": r.get("joint_calibration_kl"),
            "holdout": r.get("holdout"), "peak_memory": r.get("peak_memory"),
            "bytes": os.path.getsize(f"{S}/{m}_{p}_{bits}.pt"),
            "bits_per_block": [b.get("bits", 0) for b in r["blocks"]],
            "kinds": [b.get("kind", "fp") for b in r["blocks"]]}
g = json.load(open(f"{S}/{m}_gptq_3.json"))
summary["gptq_3"] = {"timings": g["timings"], "peak_memory": g.get("peak_memory")}
if len(settings) == 2:
    a, b = (summary["runs"][p] for p in settings)
    for bits in ("2.5", "3", "4"):
        summary["blocks_that_differ"][bits] = sum(
            1 for x in zip(a[bits]["bits_per_block"], a[bits]["kinds"], b[bits]["bits_per_block"], b[bits]["kinds"])
            if x[:2] != x[2:])
json.dump(summary, open(out, "w"), separators=(",", ":"))
print(m, "gptq quantize_total", round(g["timings"].get("quantize_total", 0), 2))
for p in settings:
    for bits in ("2.5", "3", "4"):
        r = summary["runs"][p][bits]
        t = r["timings"]
        print(m, p, bits, "quantize_total", round(t.get("quantize_total", 0), 2), "joint", round(t.get("joint_allocation", 0), 2),
              "table", round(t.get("table", 0), 2), "kl", r["joint_calibration_kl"]["measured"],
              "holdout", r["holdout"]["kl"] if r["holdout"] else None, "bytes", r["bytes"])
print(m, "blocks that differ", summary["blocks_that_differ"])
PY
done
