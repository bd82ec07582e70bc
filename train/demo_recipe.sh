#!/usr/bin/env bash
# The recipe of the shipped demo model (chameleon_lite/assets/demo_model/, RECIPE.json records every stage's time
# and the evaluation): the 80-minute quickstart, then two stages of continued pretraining, each on a fresh
# procedural corpus (another seed) in the quickstart tokenizers' vocabulary, from the model of the stage before.
# About 4.5 hours on 2 CPU cores; every step resumes when re-run.
#
#   bash train/demo_recipe.sh [RUNS]        (default RUNS=runs; run from the repository root after install)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
first=$runs/demo

# timed OUT NAME CMD...: run CMD and append its wall time to OUT/stage_seconds.jsonl (read into RECIPE.json).
timed() {
  local out=$1 name=$2 t0=$EPOCHREALTIME; shift 2
  "$@"
  python -c "import json,sys; print(json.dumps({'stage': sys.argv[1], 'seconds': round(float(sys.argv[3]) - float(sys.argv[2]), 1)}))" \
    "$name" "$t0" "$EPOCHREALTIME" >> "$out/stage_seconds.jsonl"
}

# continue_from FROM OUT SEED LR WARMUP: a new 48 000-document corpus (7.2 M tokens) from SEED, tokenized with the
# quickstart's tokenizers; 1500 steps of 8 x 512 tokens from FROM/model (a fresh warm-up, cosine to 0.1 x LR);
# export, curves and the 500-prompt evaluation.
continue_from() {
  local from=$1 out=$2 seed=$3 lr=$4 warmup=$5
  mkdir -p "$out"
  [ -f "$out/corpus/manifest.jsonl" ] || timed "$out" corpus chameleon-lite data procedural --out "$out/corpus" --n 48000 --seed "$seed" --workers 2
  [ -f "$out/shards/train/meta.json" ] || timed "$out" tokenize chameleon-lite data tokenize --manifest "$out/corpus/manifest.jsonl" \
    --tokenizers "$first/tokenizers" --out "$out/shards" --workers 2 --seed "$seed"
  timed "$out" pretrain python train/pretrain.py --config tiny --data "$out/shards/train" --val-data "$first/shards/val" --out "$out/run" \
    --tokenizers="$first/tokenizers" --init_from="$from/model" --steps=1500 --lr="$lr" --warmup="$warmup" --min_lr_ratio=0.1 \
    --parallel=none --ckpt_every=100 --val_every=100 --val_batches=4 --seed=$((seed / 100))
  timed "$out" export chameleon-lite export "$out/run" --out "$out/model"
  chameleon-lite plot "$out/run" --title "demo model: continued pretraining from $from"
  [ -f "$out/eval/eval.json" ] || timed "$out" eval chameleon-lite eval --model "$out/model" --n 500 --batch 32 --samples 6 --shards "$first/shards/val" --out "$out/eval"
}

# 1. Corpus (16 000 documents), tokenizers, shards and 719 steps of pretraining from scratch.
chameleon-lite quickstart --out "$first" --budget-minutes 80 --seed 0

# 2. and 3. Continued pretraining, twice; the second time at a lower peak learning rate.
continue_from "$first" "$runs/demo2" 100 0.0015 50
continue_from "$runs/demo2" "$runs/demo3" 200 0.001 30

# 4. The demo model itself, with the recipe assembled from every stage's records.
python -m chameleon_lite.demo "$first" "$runs/demo2" "$runs/demo3" > "$runs/demo3/recipe.json"
chameleon-lite ship-demo --model "$runs/demo3/model" --recipe "$runs/demo3/recipe.json"
