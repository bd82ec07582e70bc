#!/usr/bin/env bash
# The recipe of the shipped demo model (chameleon_lite/assets/demo_model/; RECIPE.json records every stage's time
# and the evaluation): the quickstart with a 240-minute budget, then continued pretraining on a fresh corpus that
# weights the tasks the quickstart's model was weakest at, then the 500-prompt evaluation. About 6 hours on 2 CPU
# cores; every step resumes when re-run.
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

# continue_from FROM OUT SEED LR WARMUP STEPS WEIGHTS: a new 48 000-document corpus from SEED with task weights WEIGHTS
# (see `chameleon-lite data procedural --task-weights`), tokenized with the quickstart's tokenizers; STEPS steps of
# 8 x 512 tokens from FROM/model (a fresh warm-up, cosine to 0.1 x LR); export, curves and the 500-prompt evaluation.
continue_from() {
  local from=$1 out=$2 seed=$3 lr=$4 warmup=$5 steps=$6 weights=$7
  mkdir -p "$out"
  [ -f "$out/corpus/manifest.jsonl" ] || timed "$out" corpus chameleon-lite data procedural --out "$out/corpus" --n 48000 --seed "$seed" \
    --task-weights "$weights" --workers 2
  [ -f "$out/shards/train/meta.json" ] || timed "$out" tokenize chameleon-lite data tokenize --manifest "$out/corpus/manifest.jsonl" \
    --tokenizers "$first/tokenizers" --out "$out/shards" --workers 2 --seed "$seed"
  timed "$out" pretrain python train/pretrain.py --config tiny --data "$out/shards/train" --val-data "$first/shards/val" --out "$out/run" \
    --tokenizers="$first/tokenizers" --init_from="$from/model" --steps="$steps" --lr="$lr" --warmup="$warmup" --min_lr_ratio=0.1 \
    --parallel=none --ckpt_every=100 --val_every=100 --val_batches=4 --seed=$((seed / 100))
  timed "$out" export chameleon-lite export "$out/run" --out "$out/model"
  chameleon-lite plot "$out/run" --title "demo model: continued pretraining from $from"
  [ -f "$out/eval/eval.json" ] || timed "$out" eval chameleon-lite eval --model "$out/model" --n 500 --batch 32 --samples 6 --shards "$first/shards/val" --out "$out/eval"
}

# 1. Corpus (48 000 documents), tokenizers at their full recipes, shards, and pretraining from scratch for the rest of
#    the budget.
chameleon-lite quickstart --out "$first" --budget-minutes 240 --seed 0

# 2. Continued pretraining on a corpus from another seed in which reading pictures and clips (image_to_caption,
#    audio_to_caption: their loss is only the caption's dozen tokens) weighs 3x, writing clips 1.5x, and the long
#    mixed documents 0.5x.
continue_from "$first" "$runs/demo2" 100 0.001 30 1500 \
  "caption_to_image=1,image_to_caption=3,caption_to_audio=1.5,audio_to_caption=3,interleaved=0.5,instruction=0.5"

# 3. The demo model itself, with the recipe assembled from every stage's records.
python -m chameleon_lite.demo "$first" "$runs/demo2" > "$runs/demo2/recipe.json"
chameleon-lite ship-demo --model "$runs/demo2/model" --recipe "$runs/demo2/recipe.json"
