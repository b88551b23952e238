#!/usr/bin/env bash
# The GPU benchmark as queues of `bayesq compare` jobs run by workers side by side on one machine, inside a
# wall-clock limit, resumable across device calls on the same (warm) machine:
#   bench/gpu_queue.sh SECONDS [WORKERS]        WORKERS (default 3) share bench/gpu_jobs.txt
#   bench/gpu_queue.sh SECONDS JOBS_FILE...     one worker per jobs file
# A jobs file holds lines "NAME MODEL CALIB_SIZE BITS METHODS [compare options]" in priority order (see
# bench/gpu_jobs.txt); a line "# threads N" sets its worker's CPU threads (default: 16 / workers), a line
# "# gpu N" the GPU it runs on (CUDA_VISIBLE_DEVICES; default: all, so the first).
# First the build, the data and the models the jobs need (each skipped when its output exists; training runs in
# the background), then every worker takes the next job of its file that is not done, not taken by another worker
# and whose model and data exist. A job stopped at the limit keeps its rows (compare writes its JSON after every
# row); when it runs again in a later call the earlier rows are kept as NAME.partK.json beside the new ones.
# Results go to .gpu/out/jobs and are packed, with the logs, into $OUT/results_queue.tgz.
# Carry only .gpu/raw on later calls: a carried .gpu/models replaces the models trained there.
set -uo pipefail
cd "$(dirname "$0")/.."
deadline=$((SECONDS + $1))
shift
if [ $# -eq 0 ] || [[ $1 =~ ^[0-9]+$ ]]; then
  files=()
  for _ in $(seq 1 "${1:-3}"); do files+=(bench/gpu_jobs.txt); done
else
  files=("$@")
fi
W=.gpu
J=$W/out/jobs
OUT=${OUT:-$W/out}
mkdir -p $J $W/claims $W/data "$OUT"
rm -rf $W/claims/*  # taken by a call that has ended: not running any more
log() { echo "[$(date +%H:%M:%S)] $*"; }
left() { echo $((deadline - SECONDS)); }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
needed=$(cat "${files[@]}" | awk '$1 !~ /^#/ && NF >= 5 {print $2}' | sort -u | tr '\n' ' ')
log "models needed: $needed"

model_path() {
  case $1 in
    mobilenet) echo $W/models/mobilenet_v2.pt ;;
    resnet50) echo $W/models/resnet50.pt ;;
    bert) echo $W/models/bert.pt ;;
  esac
}
ready() {  # the model and its data exist
  case $1 in
    bert) [ -f $W/data/wordnet.ready ] && [ -f "$(model_path bert)" ] ;;
    *) [ -f $W/data/fmnist.ready ] && [ -f "$(model_path "$1")" ] ;;
  esac
}
data_args() {
  case $1 in
    bert) echo "--calib $W/data/wordnet_calib512.pt --data $W/data/wordnet_eval.pt --batch-size 16" ;;
    *) echo "--calib $W/data/fmnist_calib${2:-}.pt --data $W/data/fmnist_eval.pt" ;;
  esac
}

# Prerequisites: data then training in the background, the build in the foreground.
{
  bench/gpu_bench.sh data-fmnist > $W/out/data_fmnist.log 2>&1 && touch $W/data/fmnist.ready
  for m in mobilenet resnet50; do
    [[ " $needed " == *" $m "* ]] && timeout "$(left)" bench/gpu_bench.sh train-$m >> $W/out/train_vision.log 2>&1
  done
} &
if [[ " $needed " == *" bert "* ]]; then
  { bench/gpu_bench.sh data-wordnet > $W/out/data_wordnet.log 2>&1 && touch $W/data/wordnet.ready &&
    timeout "$(left)" bench/gpu_bench.sh train-bert > $W/out/train_bert.log 2>&1; } &
fi
bench/gpu_bench.sh build 2>&1 | tail -2

# One job: NAME MODEL CALIB_SIZE (- for the default 512) BITS METHODS [more compare options].
run_job() {
  local name=$1 model=$2 calib=$3 bits=$4 methods=$5
  shift 5
  [ "$calib" = - ] && calib=""
  if [ -f $J/$name.json ]; then  # rows of an earlier, stopped attempt
    local k=1
    while [ -f $J/$name.part$k.json ]; do k=$((k + 1)); done
    mv $J/$name.json $J/$name.part$k.json
  fi
  log "job $name (threads $threads)"
  # shellcheck disable=SC2046
  timeout "$(left)" ${BAYESQ:-build-gpu/bayesq} compare --model "$(model_path "$model")" $(data_args "$model" "$calib") \
    --device cuda --threads "$threads" --seed 0 --bits "$bits" --methods "$methods" \
    --json-output $J/$name.json --markdown-output $J/$name.md "$@" > $J/$name.log 2>&1
  local rc=$?
  [ $rc -eq 0 ] && touch $J/$name.done
  log "job $name ended: $rc"
}

worker() {  # worker JOBS_FILE
  local file=$1
  threads=$(awk '$1 == "#" && $2 == "threads" {print $3}' "$file" | head -1)
  threads=${threads:-$((16 / ${#files[@]}))}
  local gpu
  gpu=$(awk '$1 == "#" && $2 == "gpu" {print $3}' "$file" | head -1)
  [ -n "$gpu" ] && export CUDA_VISIBLE_DEVICES=$gpu
  while [ "$(left)" -gt 20 ]; do
    local took=0 waiting=0
    while read -r name model calib bits methods rest; do
      case $name in '' | '#'*) continue ;; esac
      [ -f $J/$name.done ] && continue
      if ! ready "$model"; then waiting=1; continue; fi
      mkdir $W/claims/$name 2>/dev/null || continue
      # shellcheck disable=SC2086
      run_job "$name" "$model" "$calib" "$bits" "$methods" $rest < /dev/null
      took=1
      break
    done < "$file"
    [ $took -eq 1 ] && continue
    [ $waiting -eq 1 ] || break  # nothing left for this worker
    sleep 5
  done
}

w=0
for f in "${files[@]}"; do
  w=$((w + 1))
  worker "$f" > $W/out/worker$w.log 2>&1 &
  sleep 1
done
wait
for f in $W/models/*.json; do cp "$f" $J/train_"$(basename "$f")" 2>/dev/null; done
for f in $W/out/worker*.log $W/out/train_*.log; do echo "== $f"; tail -n 8 "$f"; done
ls $J
tar czf "$OUT/results_queue.tgz" -C $W out
[ -x build-gpu/bayesq ] && cp build-gpu/bayesq "$OUT/bayesq"
ls -la "$OUT"
