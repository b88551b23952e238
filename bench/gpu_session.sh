#!/usr/bin/env bash
# The GPU benchmark as two device calls on a 2-GPU machine, each running two stage chains of bench/gpu_bench.sh side
# by side (one per GPU, 16 CPU threads each), inside a wall-clock limit so that results come back before the
# call's limit:
#   bench/gpu_session.sh A SECONDS   build; MobileNetV2 and ResNet-50: train, compare
#   bench/gpu_session.sh B SECONDS   BERT: train, compare; MobileNetV2: distillation, ablation, calibration sweep,
#                                    CPU/CUDA curvature agreement
#   bench/gpu_session.sh C SECONDS   the K-FAC rows: MobileNetV2 (carried model; then agreement, ablation, sweep),
#                                    ResNet-50 and BERT (trained again, with GPTQ rows for the same weights)
#   bench/gpu_session.sh D SECONDS   what C could not finish, after the K-FAC speed-ups: K-FAC and K-FAC + distill
#                                    on MobileNetV2 (then ablation, sweep) and ResNet-50 (then BERT)
# A carried .gpu/models/mobilenet_v2.pt and .gpu/bin/bayesq (what call A returns) spare call B the training and
# the build when it lands on a fresh machine. Everything worth keeping is packed into $OUT/results_<call>.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
call=$1
deadline=$((SECONDS + $2))
W=.gpu
OUT=${OUT:-$W/out}
mkdir -p $W/out $W/bin "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*"; }
left() { echo $((deadline - SECONDS)); }
if [ -x $W/bin/bayesq ] && [ ! -x build-gpu/bayesq ]; then export BAYESQ=$W/bin/bayesq; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

chain() {  # chain GPU NAME STAGE...
  local gpu=$1 name=$2
  shift 2
  CUDA_VISIBLE_DEVICES=$gpu THREADS=${THREADS:-16} OUT=$W/out/$name timeout "$(left)" bench/gpu_bench.sh "$@" \
    > $W/out/$name.log 2>&1
  log "chain $name ended: $?"
}

case $call in
  A)
    bench/gpu_bench.sh data-fmnist > $W/out/data_fmnist.log 2>&1 &
    bench/gpu_bench.sh build 2>&1 | tail -3
    wait
    bench/gpu_bench.sh data-wordnet > $W/out/data_wordnet.log 2>&1 &
    chain 0 mobilenet train-mobilenet compare-mobilenet &
    chain 1 resnet50 train-resnet50 compare-resnet50 &
    wait
    cp $W/models/mobilenet_v2.pt "$OUT/" 2>/dev/null
    cp build-gpu/bayesq "$OUT/bayesq" 2>/dev/null ;;
  B)
    bench/gpu_bench.sh build 2>&1 | tail -3
    bench/gpu_bench.sh data-fmnist > $W/out/data_fmnist_b.log 2>&1 &
    bench/gpu_bench.sh data-wordnet > $W/out/data_wordnet_b.log 2>&1
    wait
    chain 0 bert train-bert compare-bert &
    chain 1 mobilenet_extra train-mobilenet distill-mobilenet ablation agreement sweep &
    wait ;;
  C)
    bench/gpu_bench.sh build 2>&1 | tail -3
    bench/gpu_bench.sh data-fmnist > $W/out/data_fmnist_c.log 2>&1
    (bench/gpu_bench.sh data-wordnet > $W/out/data_wordnet_c.log 2>&1
     METHODS_BERT=gptq,bayesq/kfac BITS_BERT=2,3 chain 0 bert_kfac train-bert compare-bert) &
    METHODS=bayesq/kfac BITS=2,2.248,2.5,3,3.248,3.5,4,4.248 SWEEP="64 256" \
      METHODS_ABLATION=bayesq/kfac/expected,bayesq/expected,bayesq/uniform,bayesq/tau1,bayesq/greedy \
      chain 0 mobilenet_kfac agreement compare-mobilenet ablation sweep &
    METHODS_RN50=gptq,bayesq/kfac chain 1 resnet50_kfac train-resnet50 compare-resnet50 &
    wait ;;
  D)
    bench/gpu_bench.sh build 2>&1 | tail -3
    bench/gpu_bench.sh data-fmnist > $W/out/data_fmnist_d.log 2>&1
    bench/gpu_bench.sh data-wordnet > $W/out/data_wordnet_d.log 2>&1 &
    METHODS=gptq/act,hawq,bayesq/kfac,bayesq/kfac+distill BITS=2,2.5,3,3.5,4 SWEEP="16 32 64 128 256 1024" \
      chain 0 mobilenet_kfac train-mobilenet compare-mobilenet ablation sweep &
    (METHODS_RN50=gptq,bayesq/kfac chain 1 resnet50_kfac train-resnet50 compare-resnet50
     METHODS_BERT=gptq,bayesq/kfac chain 1 bert_kfac train-bert compare-bert) &
    wait ;;
esac
for f in $W/out/*.log; do echo "== $f"; tail -n 25 "$f"; done
tar czf "$OUT/results_$call.tgz" -C $W out
ls -la "$OUT"
