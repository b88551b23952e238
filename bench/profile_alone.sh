#!/usr/bin/env bash
# Issue 17's per-stage profile: the default method and GPTQ at one budget on each model, one compare at a time
# with nothing else on the machine (data, training and the build finish first), on all host threads.
#   bench/profile_alone.sh [MODEL...]      resnet50, bert, mobilenet (default: resnet50 bert)
# PROFILE_TF32=1 also runs each compare with --tf32; PROFILE_GRAPHS_OFF=1 the default alone with --cuda-graphs off,
# comparing its file with the first compare's (profile_MODEL_graphs_cmp.txt). Then the gpu_bench.sh stages in PROFILE_STAGES (default
# "calibration-settings design"; empty: none): with the trained vision models, Hutchinson calibration per cuDNN
# setting and with grouped convolutions unfolded or not (calibration_settings.jsonl; CAL_EXAMPLES images, default
# 512; CAL_MODELS), and the codebook design alone on the host (design.jsonl).
# Needs the raw data under .gpu/raw (bench/prepare_gpu_carry.sh). Per model, $OUT/profile_MODEL.{json,md,log}: the
# compare's per-stage wall times (shared_timings: capture, codebook design, feedback, measured-table forwards and
# quantization), each row's quantize time and peak device memory.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.gpu
OUT=${OUT:-$W/out}
mkdir -p "$OUT"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(resnet50 bert)
log() { echo "[$(date +%H:%M:%S)] $*"; }
threads=$(nproc)
bench/gpu_prepare.sh "$OUT/profile_prepare.log" "${models[@]}"
for m in "${models[@]}"; do
  case $m in
    bert) args=(--model $W/models/bert.pt --calib $W/data/wordnet_calib512.pt --data $W/data/wordnet_eval.pt --batch-size 16) ;;
    resnet50) args=(--model $W/models/resnet50.pt --calib $W/data/fmnist_calib.pt --data $W/data/fmnist_eval.pt) ;;
    mobilenet) args=(--model $W/models/mobilenet_v2.pt --calib $W/data/fmnist_calib.pt --data $W/data/fmnist_eval.pt) ;;
  esac
  log "profile $m (threads $threads)"
  build-gpu/bayesq compare "${args[@]}" --device cuda --threads "$threads" --seed 0 --bits 3 --methods bayesq,gptq \
    --keep-models $W/kept/$m --json-output "$OUT/profile_$m.json" --markdown-output "$OUT/profile_$m.md" \
    > "$OUT/profile_$m.log" 2>&1
  cat "$OUT/profile_$m.md"
  if [ "${PROFILE_GRAPHS_OFF:-0}" = 1 ]; then  # the default without replayed forwards: its time, the same file?
    log "profile $m --cuda-graphs off"
    build-gpu/bayesq compare "${args[@]}" --device cuda --threads "$threads" --seed 0 --bits 3 --methods bayesq \
      --cuda-graphs off --keep-models $W/kept/${m}_graphs_off --json-output "$OUT/profile_${m}_graphs_off.json" \
      --markdown-output "$OUT/profile_${m}_graphs_off.md" > "$OUT/profile_${m}_graphs_off.log" 2>&1
    for f in $W/kept/$m/bayesq*; do
      if cmp -s "$f" "$W/kept/${m}_graphs_off/$(basename "$f")"; then echo "$(basename "$f"): identical with --cuda-graphs off"
      else echo "$(basename "$f"): DIFFERS with --cuda-graphs off"; fi
    done | tee "$OUT/profile_${m}_graphs_cmp.txt"
  fi
  if [ "${PROFILE_TF32:-0}" = 1 ]; then  # the same compare with TF32 allowed (Note [TF32 off by default])
    log "profile $m --tf32"
    build-gpu/bayesq compare "${args[@]}" --device cuda --threads "$threads" --seed 0 --bits 3 --methods bayesq,gptq \
      --tf32 --json-output "$OUT/profile_${m}_tf32.json" --markdown-output "$OUT/profile_${m}_tf32.md" \
      > "$OUT/profile_${m}_tf32.log" 2>&1
    cat "$OUT/profile_${m}_tf32.md"
  fi
done
stages=${PROFILE_STAGES-calibration-settings design}
[ -n "$stages" ] || exit 0
log "then: $stages"
THREADS=$threads OUT=$OUT bench/gpu_bench.sh $stages > "$OUT/profile_extra.log" 2>&1 || \
  { echo "$stages failed: $OUT/profile_extra.log" >&2; tail -5 "$OUT/profile_extra.log" >&2; }
