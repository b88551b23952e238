#!/usr/bin/env bash
# The main job on a built-in default: install, build, make the demo model and data if missing (a small CNN trained
# for two epochs on Fashion-MNIST on the CPU), quantize it to 3.0 bits per weight with bayesq (the default,
# K-FAC; the data-free mode; the paper's diagonal method) and with the RTN and GPTQ baselines at 3 bits, evaluate,
# and print a table against the float model.
set -euo pipefail
cd "$(dirname "$0")/.."
python=/usr/bin/python3
demo=work/demo

scripts/setup.sh
scripts/build.sh
bayesq=build/bayesq

mkdir -p "$demo"
if [ ! -f "$demo/fmnist_calib.pt" ] || [ ! -f "$demo/fmnist_eval.pt" ]; then
  $python bench/fashion_mnist.py "$demo"
fi
if [ ! -f "$demo/small_cnn.pt" ]; then
  echo "training the demo model (two epochs, under a minute on 2 cores)..."
  $python bench/train_small_cnn.py "$demo/small_cnn.pt"
fi

$bayesq inspect "$demo/small_cnn.pt"
# The default method (with calibration data: K-FAC), then the design card's command as written (no data: the
# data-free mode, output beside the model), then the paper's diagonal method and the baselines.
$bayesq quantize --model "$demo/small_cnn.pt" --calib "$demo/fmnist_calib.pt" --bits 3.0 \
  -o "$demo/small_cnn-default3.pt" --report "$demo/small_cnn-default3.json" --html "$demo/small_cnn-default3.html"
$bayesq quantize --model "$demo/small_cnn.pt" --bits 3.0
$bayesq quantize --model "$demo/small_cnn.pt" --calib "$demo/fmnist_calib.pt" --bits 3.0 --method bayesq/hutchinson \
  -o "$demo/small_cnn-diag3.pt"
$bayesq quantize --model "$demo/small_cnn.pt" --method rtn --bits 3 -o "$demo/small_cnn-rtn3.pt"
$bayesq quantize --model "$demo/small_cnn.pt" --calib "$demo/fmnist_calib.pt" --method gptq --bits 3 \
  -o "$demo/small_cnn-gptq3.pt"

# Every model in one evaluation: the test set is read, and the float reference run, once for all six.
models=()
for m in small_cnn small_cnn-default3 small_cnn.bq3.0 small_cnn-diag3 small_cnn-rtn3 small_cnn-gptq3; do
  models+=(--model "$demo/$m.pt")
done
$bayesq eval "${models[@]}" --data "$demo/fmnist_eval.pt" --reference "$demo/small_cnn.pt" --json > "$demo/eval.json"
echo
echo "Fashion-MNIST test set (10,000 images):"
$python bench/table.py \
  "float32=$demo/eval.json:$demo/small_cnn.pt" \
  "bayesq (default: kfac) 3.0 bits=$demo/eval.json:$demo/small_cnn-default3.pt" \
  "bayesq data-free 3.0 bits=$demo/eval.json:$demo/small_cnn.bq3.0.pt" \
  "bayesq/hutchinson (paper) 3.0 bits=$demo/eval.json:$demo/small_cnn-diag3.pt" \
  "rtn 3 bits=$demo/eval.json:$demo/small_cnn-rtn3.pt" \
  "gptq 3 bits=$demo/eval.json:$demo/small_cnn-gptq3.pt"
echo
echo "The default run's report, with charts (open it in a browser): $demo/small_cnn-default3.html"
