set -e
W=.gpu; mkdir -p $OUT
THREADS=16 bench/gpu_bench.sh build data-wordnet train-bert > $OUT/prepare.log 2>&1 || { tail -20 $OUT/prepare.log; exit 1; }
date
build-gpu/bayesq compare --model $W/models/bert.pt --calib $W/data/wordnet_calib512.pt --data $W/data/wordnet_eval.pt --batch-size 16 --device cuda --threads 16 --seed 0 --bits 3 --methods bayesq --json-output $OUT/ahead_bert.json --markdown-output $OUT/ahead_bert.md > $OUT/ahead_bert.log 2>&1
cat $OUT/ahead_bert.md; date
