#!/usr/bin/env bash
# The GPU benchmark, in resumable stages (each skips work whose output already exists):
#   bench/gpu_bench.sh STAGE...
# Stages: build data-fmnist data-wordnet train-mobilenet train-resnet50 train-bert micro calibration-settings design
#         agreement compare-mobilenet estimators-mobilenet prefix-check
#         distill-mobilenet sweep ablation compare-resnet50 compare-bert
# Expects the raw data under .gpu/raw (see bench/prepare_gpu_carry.sh) and python3 with torch (and transformers for
# BERT). Results (markdown, JSON, logs) go to $OUT (default .gpu/out). Two chains can share a 2-GPU machine:
# CUDA_VISIBLE_DEVICES=0 bench/gpu_bench.sh ... & CUDA_VISIBLE_DEVICES=1 bench/gpu_bench.sh ...; THREADS (default
# 16) sets each chain's CPU threads.
set -euo pipefail
cd "$(dirname "$0")/.."
W=.gpu
OUT=${OUT:-$W/out}
mkdir -p "$W/data" "$W/models" "$OUT"
B=${BAYESQ:-build-gpu/bayesq}
THREADS=${THREADS:-16}
export FASHION_MNIST_DIR=$W/raw/fashion WORDNET_DIR=$W/raw/wordnet PYTHONUNBUFFERED=1
log() { echo "[$(date +%H:%M:%S)] $*"; }

compare() {  # compare NAME MODEL CALIB EVAL ARGS...
  local name=$1 model=$2 calib=$3 eval=$4
  shift 4
  log "compare $name"
  $B compare --model "$model" --calib "$calib" --data "$eval" --device cuda --threads $THREADS -q \
    --json-output "$OUT/$name.json" --markdown-output "$OUT/$name.md" "$@" > /dev/null
  cat "$OUT/$name.md"
}

for stage in "$@"; do
  case $stage in
    build)
      [ -x "$B" ] || { log build
      BAYESQ_BUILD_BENCH=ON BAYESQ_BUILD_TESTS=OFF \
        scripts/build.sh "$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')" build-gpu | tail -1; } ;;
    data-wordnet) [ -f $W/data/wordnet_eval.pt ] || python3 bench/wordnet.py $W/data ;;
    data-fmnist)
      [ -f $W/data/fmnist_eval.pt ] || python3 bench/fashion_mnist.py $W/data
      for n in 16 32 64 128 256 1024; do
        [ -f $W/data/fmnist_calib$n.pt ] || python3 -c "
import sys; sys.path.insert(0, 'bench'); import torch, fashion_mnist as f
x, y = f.load_split('train'); i = f.calibration_indices($n, 0)
torch.save({'inputs': x[i].clone(), 'labels': y[i].clone()}, '$W/data/fmnist_calib$n.pt')"
      done ;;
    train-mobilenet) [ -f $W/models/mobilenet_v2.pt ] || { log train mobilenet_v2; python3 bench/train_vision.py mobilenet_v2 $W/models/mobilenet_v2.pt --epochs ${EPOCHS:-12}; cp $W/models/mobilenet_v2.json "$OUT/train_mobilenet_v2.json"; } ;;
    train-resnet50) [ -f $W/models/resnet50.pt ] || { log train resnet50; python3 bench/train_vision.py resnet50 $W/models/resnet50.pt --epochs ${EPOCHS:-12}; cp $W/models/resnet50.json "$OUT/train_resnet50.json"; } ;;
    train-bert) [ -f $W/models/bert.pt ] || { log train bert; python3 bench/train_bert.py $W/data $W/models/bert.pt --epochs ${BERT_EPOCHS:-3}; cp $W/models/bert.json "$OUT/train_bert.json"; } ;;
    micro)
      log micro-benchmarks
      python3 bench/models.py $W/models > /dev/null
      build-gpu/bayesq_bench_calibration $W/models/resnet50_random.pt $W/data/fmnist_calib.pt --device cuda --probes 8 --examples 512 --batch-size 64 | tee "$OUT/bench_calibration_cuda.json"
      build-gpu/bayesq_bench_table $W/models/resnet50_random.pt --threads 16 | tee "$OUT/bench_table_h100.json" ;;
    calibration-settings)
      # Issue 17 item 4: Hutchinson calibration time against one forward + backward, per model and cuDNN setting
      # (bayesq runs deterministic, no benchmarking), and the Fisher estimator beside it. Trained models.
      for m in ${CAL_MODELS:-mobilenet_v2 resnet50}; do
        [ -f $W/models/$m.pt ] || continue
        for s in "1 0 unfold" "1 0 keep" "0 0 keep" "0 1 keep"; do
          read -r det bm gc <<< "$s"
          log "calibration $m deterministic=$det benchmark=$bm grouped-convs=$gc"
          build-gpu/bayesq_bench_calibration $W/models/$m.pt $W/data/fmnist_calib.pt --device cuda --probes 8 \
            --examples ${CAL_EXAMPLES:-512} --batch-size 32 --deterministic $det --cudnn-benchmark $bm --grouped-convs $gc \
            | tee -a "$OUT/calibration_settings.jsonl"
        done
        build-gpu/bayesq_bench_calibration $W/models/$m.pt $W/data/fmnist_calib.pt --device cuda --examples ${CAL_EXAMPLES:-512} \
          --batch-size 32 --estimator fisher | tee -a "$OUT/calibration_settings.jsonl"
      done ;;
    design)
      # Codebook design alone (quantize_block_options, every option of every block) on the host's threads.
      [ -f $W/models/resnet50.pt ] && build-gpu/bayesq_bench_table $W/models/resnet50.pt --options --threads $THREADS \
        | tee -a "$OUT/design.jsonl" ;;
    agreement)
      log cpu-cuda agreement
      for d in cpu cuda; do
        $B calibrate --model $W/models/mobilenet_v2.pt --calib $W/data/fmnist_calib128.pt --device $d --probes 8 \
          --seed 1 --threads $THREADS -o $W/post_$d.bqp -q
      done
      python3 bench/posterior_agreement.py $W/post_cpu.bqp $W/post_cuda.bqp | tee "$OUT/agreement.txt" ;;
    compare-mobilenet)
      compare mobilenet_v2 $W/models/mobilenet_v2.pt $W/data/fmnist_calib.pt $W/data/fmnist_eval.pt --bits ${BITS:-2,2.5,3,3.5,4} \
        --match-uniform --methods ${METHODS:-rtn,gptq,gptq/act,hawq,bayesq/hutchinson,bayesq/kfac} ;;
    prefix-check)
      # Note [Cached prefix] on CUDA: the default method with full forwards and from cached prefixes must write the
      # same file (and the report gives each run's stage times).
      for m in ${PREFIX_MODELS:-resnet50}; do
        case $m in
          bert) pargs=(--model $W/models/bert.pt --calib $W/data/wordnet_calib512.pt --batch-size 16) ;;
          *) pargs=(--model $W/models/$m.pt --calib $W/data/fmnist_calib.pt) ;;
        esac
        for p in off on; do
          log "prefix $p: $m"
          $B quantize "${pargs[@]}" --bits 3 --device cuda --threads $THREADS --seed 0 --cached-prefix $p -q \
            -o $W/prefix_${m}_$p.pt --report "$OUT/prefix_${m}_$p.json"
        done
        if cmp -s $W/prefix_${m}_off.pt $W/prefix_${m}_on.pt; then r=identical; else r=DIFFER; fi
        echo "$m: files with and without the cached prefix: $r" | tee -a "$OUT/prefix_check.txt"
      done ;;
    estimators-mobilenet)
      # Issue 17 item 4: does the Fisher diagonal (one backward per probe) allocate as well as Hutchinson's?
      compare mobilenet_v2_estimators $W/models/mobilenet_v2.pt $W/data/fmnist_calib.pt $W/data/fmnist_eval.pt \
        --bits ${BITS:-2.5,3,4} --methods bayesq/hutchinson,bayesq/fisher ;;
    distill-mobilenet)
      compare mobilenet_v2_distill $W/models/mobilenet_v2.pt $W/data/fmnist_calib.pt $W/data/fmnist_eval.pt --bits 2,2.5,3 \
        --methods bayesq/hutchinson,bayesq/hutchinson+distill,bayesq/kfac,bayesq/kfac+distill ;;
    sweep)
      for n in ${SWEEP:-16 32 64 128 256 1024}; do
        compare sweep_calib$n $W/models/mobilenet_v2.pt $W/data/fmnist_calib$n.pt $W/data/fmnist_eval.pt --bits 3 --methods bayesq/hutchinson,bayesq/kfac
      done ;;
    ablation)
      compare ablation $W/models/mobilenet_v2.pt $W/data/fmnist_calib.pt $W/data/fmnist_eval.pt --bits 2.5 \
        --methods ${METHODS_ABLATION:-bayesq/hutchinson,bayesq/hutchinson/expected,bayesq/kfac,bayesq/kfac/expected,bayesq/hutchinson/lloyd,bayesq/hutchinson/uniform,bayesq/hutchinson/tau1,bayesq/hutchinson/greedy} ;;
    compare-resnet50)
      compare resnet50 $W/models/resnet50.pt $W/data/fmnist_calib.pt $W/data/fmnist_eval.pt --bits 2,2.5,3,3.5,4 \
        --match-uniform --one-shot --methods ${METHODS_RN50:-rtn,gptq,bayesq/hutchinson,bayesq/kfac} ;;
    compare-bert)
      compare bert $W/models/bert.pt $W/data/wordnet_calib512.pt $W/data/wordnet_eval.pt --bits ${BITS_BERT:-2,2.5,3,3.5,4} \
        --match-uniform --batch-size 16 --methods ${METHODS_BERT:-rtn,gptq,bayesq/hutchinson,bayesq/kfac} ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
