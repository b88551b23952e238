#!/usr/bin/env bash
# Issue 17 item 3, the option prefilter (Note [Option prefilter] in include/bayesq/table/option_prefilter.h), on
# the GPU machine, one run at a time with nothing else on it:
#   bench/prefilter_check.sh [MODEL...]      resnet50, mobilenet, bert (default: resnet50 mobilenet)
# Per model: `quantize --bits 2.5,3,4` with every option measured and predicted (--prefilter-window 8, every
# window holding every option) and with the default (window 1); their bits and codebook per block compared;
# bayesq_bench_prefilter on each full report (windows 0, 1, 2: are the full table's choices inside?); then the
# default against GPTQ at 3 bits through `compare`, as bench/profile_alone.sh runs it.
# Needs the raw data under .gpu/raw (bench/prepare_gpu_carry.sh). Writes $OUT/prefilter_MODEL.json (a summary:
# per budget and run the timings, prefilter counts, KLs, bits per block and file sizes; the blocks that differ; the
# bench_prefilter lines) and $OUT/profile_MODEL.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.gpu
OUT=${OUT:-$W/out}
S=$W/prefilter
mkdir -p "$OUT" "$S"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet50 mobilenet)
log() { echo "[$(date +%H:%M:%S)] $*"; }
threads=$(nproc)
bench/gpu_prepare.sh "$OUT/prefilter_prepare.log" "${models[@]}"
for m in "${models[@]}"; do
  case $m in
    bert) model=$W/models/bert.pt calib=$W/data/wordnet_calib512.pt data=$W/data/wordnet_eval.pt extra=(--batch-size 16) ;;
    resnet50) model=$W/models/resnet50.pt calib=$W/data/fmnist_calib.pt data=$W/data/fmnist_eval.pt extra=() ;;
    mobilenet) model=$W/models/mobilenet_v2.pt calib=$W/data/fmnist_calib.pt data=$W/data/fmnist_eval.pt extra=() ;;
  esac
  common=(--model "$model" --calib "$calib" "${extra[@]}" --device cuda --threads "$threads" --seed 0)
  for run in full default; do
    window=1; [ $run = full ] && window=8
    log "$m: quantize --bits 2.5,3,4 --prefilter-window $window"
    build-gpu/bayesq quantize "${common[@]}" --bits 2.5,3,4 --prefilter-window $window \
      -o "$S/${m}_${run}_{bits}.pt" --report "$S/${m}_${run}_{bits}.json" > "$S/${m}_${run}.log" 2>&1
  done
  build-gpu/bayesq_bench_prefilter "$S/${m}_full_3.json" --bits 2.5,3,4 --windows 0,1,2 > "$S/${m}_bound.jsonl"
  log "$m: compare bayesq,gptq --bits 3"
  build-gpu/bayesq compare "${common[@]}" --data "$data" --bits 3 --methods bayesq,gptq \
    --json-output "$OUT/profile_$m.json" --markdown-output "$OUT/profile_$m.md" > "$S/${m}_compare.log" 2>&1
  cat "$OUT/profile_$m.md"
  python3 - "$S" "$m" "$OUT/prefilter_$m.json" <<'PY'
import json, sys
S, m, out = sys.argv[1:]
summary = {"model": m, "runs": {}, "blocks_that_differ": {}, "bound": []}
for run in ("full", "default"):
    for bits in ("2.5", "3", "4"):
        r = json.load(open(f"{S}/{m}_{run}_{bits}.json"))
        summary["runs"].setdefault(run, {})[bits] = {
            "timings": r["timings"], "prefilter": r["details"].get("prefilter"),
            "joint_calibration_kl": r.get("joint_calibration_kl"), "holdout": r.get("holdout"),
            "totals": r["totals"], "peak_memory": r["peak_memory"],
            "bits_per_block": [b.get("bits", 0) for b in r["blocks"]],
            "kinds": [b.get("kind", "fp") for b in r["blocks"]]}
# Not the files' bytes: TorchScript's class names in them count the modules the process made before.
for bits in ("2.5", "3", "4"):
    f, d = summary["runs"]["full"][bits], summary["runs"]["default"][bits]
    summary["blocks_that_differ"][bits] = sum(
        1 for a in zip(f["bits_per_block"], f["kinds"], d["bits_per_block"], d["kinds"]) if a[:2] != a[2:])
for line in open(f"{S}/{m}_bound.jsonl"):
    summary["bound"].append(json.loads(line))
json.dump(summary, open(out, "w"), separators=(",", ":"))
for bits, differ in summary["blocks_that_differ"].items():
    d, f = summary["runs"]["default"][bits], summary["runs"]["full"][bits]
    print(f"{m} {bits} bits: {differ} blocks differ; quantize_total full "
          f"{f['timings'].get('quantize_total', 0):.1f} s, default {d['timings'].get('quantize_total', 0):.1f} s; "
          f"options {d['prefilter']}; joint KL full {f['joint_calibration_kl']['measured']:.6g} "
          f"default {d['joint_calibration_kl']['measured']:.6g}")
for b in summary["bound"]:
    print(m, "bound", json.dumps({k: b[k] for k in ("bits", "window", "selected", "options", "full_choices_outside",
                                                    "changed_blocks")}))
PY
done
