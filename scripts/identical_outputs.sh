#!/usr/bin/env bash
# Fingerprints every file bayesq writes on the quickstart CNN, for refactors that must not move a byte.
#
#   scripts/identical_outputs.sh MANIFEST [BAYESQ_BINARY]
#
# Runs every method (rtn, gptq, gptq/act, hawq, bayesq/hutchinson, bayesq/kfac, the expected-loss table,
# bayesq/data-free), each without and with
# --distill-steps 50, at 2.5 and 3 bits (whole-bit methods at 2 and 3), in the packed and the fake format, plus
# `calibrate`, and writes one "sha256  file" line per output to MANIFEST. Record a manifest before a change and one
# after it, then `diff` them:
#
#   scripts/identical_outputs.sh /tmp/before.txt /tmp/old/bayesq && scripts/identical_outputs.sh /tmp/after.txt
#   diff /tmp/before.txt /tmp/after.txt && echo identical
#
# The model and data are scripts/quickstart.sh's (work/demo; made there if missing). Their hashes head the manifest,
# so two manifests of different models never compare equal. The .bqp header holds the calibration's wall-clock time
# (`seconds`): that one field is set aside before hashing; every other byte counts.
set -euo pipefail
cd "$(dirname "$0")/.."
manifest="$1"
bayesq="$(realpath "${2:-build/bayesq}")"
python=/usr/bin/python3
demo=work/demo
model="$demo/small_cnn.pt" calib="$demo/fmnist_calib.pt"
if [ ! -f "$model" ] || [ ! -f "$calib" ]; then
  echo "identical_outputs: $model or $calib missing: run scripts/quickstart.sh first" >&2
  exit 2
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

common=(--model "$model" --threads 2 --seed 0 -q)
run() {  # NAME BITS ARGS...: one quantize call per format and distillation setting
  local name=$1 bits=$2
  shift 2
  for format in packed fake; do
    for steps in 0 50; do
      "$bayesq" quantize "${common[@]}" --bits "$bits" --format "$format" --distill-steps "$steps" \
        -o "$out/$name-$format-d$steps-{bits}.pt" "$@"
    done
  done
}
run rtn 2,3 --method rtn --calib "$calib"
run gptq 2,3 --method gptq --calib "$calib"
run gptq_act 2,3 --method gptq --act-order --calib "$calib"
run hawq 2.5,3 --method hawq --calib "$calib"
run bayesq 2.5,3 --method bayesq/hutchinson --calib "$calib"
run bayesq_kfac 2.5,3 --method bayesq/kfac --calib "$calib"
run bayesq_expected 2.5,3 --method bayesq/hutchinson --table-loss expected --calib "$calib"
run bayesq_data_free 2.5,3 --method bayesq/data-free --calib "$calib"  # the calibration file only for distillation
"$bayesq" calibrate --model "$model" --calib "$calib" --threads 2 --seed 0 -o "$out/posterior.bqp" > /dev/null

{
  sha256sum "$model" "$calib" | sed "s|$demo/||"
  (cd "$out" && sha256sum *.pt)
  $python - "$out/posterior.bqp" <<'EOF'
import hashlib, json, struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:4] == b"BQP1"
n = struct.unpack("<Q", data[4:12])[0]
header = json.loads(data[12:12 + n])
header.pop("seconds", None)
h = hashlib.sha256(json.dumps(header, sort_keys=True).encode() + data[12 + n:])
print(h.hexdigest() + "  posterior.bqp (header without seconds)")
EOF
} > "$manifest"
echo "identical_outputs: $(wc -l < "$manifest") lines in $manifest"
