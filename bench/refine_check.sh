#!/usr/bin/env bash
# The joint refinement's threshold on the GPU machine (Note [Refine where the sum misses] in
# include/bayesq/measure/joint_allocation.h), one run at a time with nothing else on the machine:
#   bench/refine_check.sh [MODEL...]      resnet50, mobilenet, bert (default: resnet50 mobilenet)
# Per model, `compare --methods bayesq` on the test data with `--joint-threshold 0` (rounds at every budget, as
# before the threshold), `--joint-rounds 0` (none) and the default threshold, then GPTQ; budgets BITS (default
# 2,2.5,3,4; BERT: BITS_BERT, default 3); SETTINGS (NAME:FLAG words) picks the settings. Needs the raw data under .gpu/raw (bench/prepare_gpu_carry.sh). Writes
# $OUT/refine_MODEL.json: per setting and budget the test KL and top-1, the calibration and held-out KL, the
# refinement's record (measured and additive KL of the additive allocation, rounds), quantize_total, the
# joint refinement's time, bits and codebook per block; GPTQ's test KL and time.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.gpu
OUT=${OUT:-$W/out}
S=$W/refine
mkdir -p "$OUT" "$S"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet50 mobilenet)
log() { echo "[$(date +%H:%M:%S)] $*"; }
threads=$(nproc)
bench/gpu_prepare.sh "$OUT/refine_prepare.log" "${models[@]}"
for m in "${models[@]}"; do
  case $m in
    bert) model=$W/models/bert.pt calib=$W/data/wordnet_calib512.pt eval=$W/data/wordnet_eval.pt extra=(--batch-size 16)
          bits=${BITS_BERT:-3} ;;
    resnet50) model=$W/models/resnet50.pt calib=$W/data/fmnist_calib.pt eval=$W/data/fmnist_eval.pt extra=()
              bits=${BITS:-2,2.5,3,4} ;;
    mobilenet) model=$W/models/mobilenet_v2.pt calib=$W/data/fmnist_calib.pt eval=$W/data/fmnist_eval.pt extra=()
               bits=${BITS:-2,2.5,3,4} ;;
    *) echo "unknown model $m" >&2; exit 2 ;;
  esac
  common=(--model "$model" --calib "$calib" --data "$eval" "${extra[@]}" --device cuda --threads "$threads" --seed 0
          --bits "$bits" -q)
  for setting in ${SETTINGS:-always:--joint-threshold=0 none:--joint-rounds=0 default: gptq:--methods=gptq}; do
    name=${setting%%:*} flag=${setting#*:}
    methods=(--methods bayesq)
    [ "$name" = gptq ] && methods=()
    log "$m: compare $flag"
    build-gpu/bayesq compare "${common[@]}" "${methods[@]}" ${flag:+"$flag"} --keep-models "$S/${m}_$name" \
      --json-output "$S/${m}_$name.json" > "$S/${m}_$name.log" 2>&1
  done
  python3 - "$S" "$m" "$OUT/refine_$m.json" <<'PY'
import json, sys
S, m, out = sys.argv[1:]
summary = {"model": m, "settings": {}}
for name in ("always", "none", "default", "gptq"):
    try:
        d = json.load(open(f"{S}/{m}_{name}.json"))
    except FileNotFoundError:  # a setting SETTINGS left out
        continue
    rows = {}
    for r in d["rows"]:
        if r["method"] == "float":
            summary["float"] = {"top1": r.get("top1"), "nll": r.get("nll")}
            continue
        j = r.get("joint_calibration_kl") or {}
        rows[str(r["bits"])] = {
            "test_kl": r["mean_kl"], "top1": r.get("top1"), "file_bytes": r["file_bytes"],
            "calibration_kl": j.get("measured"), "predicted": j.get("predicted"),
            "refinement": j.get("refinement"), "holdout": r.get("holdout"),
            "quantize_total": r["timings"].get("quantize_total"),
            "joint_allocation": r["timings"].get("joint_allocation"),
            "peak_device_bytes": r.get("peak_device_bytes"),
            "bits_per_block": r.get("bits_per_block")}
    summary["settings"][name] = {"rows": rows, "shared_timings": d.get("shared_timings")}
json.dump(summary, open(out, "w"), separators=(",", ":"))
for name, s in summary["settings"].items():
    for bits, r in s["rows"].items():
        ref = r["refinement"] or {}
        ratio = ref["initial_kl"] / ref["additive_kl"] if ref.get("additive_kl") else None
        print(m, name, bits, "test_kl %.6g" % r["test_kl"], "top1", r["top1"],
              "ratio %.3f" % ratio if ratio else "", "rounds", len(ref.get("rounds", [])) if ref else "-",
              "skipped" if ref.get("skipped") else "", "qt %.2f" % (r["quantize_total"] or 0),
              "joint %.2f" % (r["joint_allocation"] or 0))
PY
done
