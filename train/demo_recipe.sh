#!/usr/bin/env bash
# The recipe of the shipped demo model (chameleon_lite/assets/demo_model/, RECIPE.json records every stage's time
# and the evaluation): the 80-minute quickstart, then continued pretraining of its model on a fresh, larger
# procedural corpus with the same tokenizers. About 2.6 hours on 2 CPU cores; every step resumes when re-run.
#
#   bash train/demo_recipe.sh [RUNS]        (default RUNS=runs; run from the repository root after install)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
first=$runs/demo second=$runs/demo2
mkdir -p "$second"
# timed NAME CMD...: run CMD and append its wall time to $second/stage_seconds.jsonl (read into RECIPE.json).
timed() {
  local name=$1 t0=$EPOCHREALTIME; shift
  "$@"
  python -c "import json,sys; print(json.dumps({'stage': sys.argv[1], 'seconds': round(float(sys.argv[3]) - float(sys.argv[2]), 1)}))" \
    "$name" "$t0" "$EPOCHREALTIME" >> "$second/stage_seconds.jsonl"
}

# 1. Corpus (16 000 documents), tokenizers, shards and 719 steps of pretraining from scratch.
chameleon-lite quickstart --out "$first" --budget-minutes 80 --seed 0

# 2. A new corpus (another seed, 48 000 documents, 7.2 M tokens) in the same tokenizers' vocabulary.
[ -f "$second/corpus/manifest.jsonl" ] || timed corpus chameleon-lite data procedural --out "$second/corpus" --n 48000 --seed 100 --workers 2
[ -f "$second/shards/train/meta.json" ] || timed tokenize chameleon-lite data tokenize --manifest "$second/corpus/manifest.jsonl" \
  --tokenizers "$first/tokenizers" --out "$second/shards" --workers 2 --seed 100

# 3. Continued pretraining from the quickstart's model: 1500 steps of 8 x 512 tokens, a fresh warm-up and cosine.
timed pretrain python train/pretrain.py --config tiny --data "$second/shards/train" --val-data "$first/shards/val" --out "$second/run" \
  --tokenizers="$first/tokenizers" --init_from="$first/model" --steps=1500 --lr=0.0015 --warmup=50 --min_lr_ratio=0.1 \
  --parallel=none --ckpt_every=100 --val_every=100 --val_batches=4 --seed=1

# 4. Export, curves, the 500-prompt evaluation, and the demo model itself.
timed export chameleon-lite export "$second/run" --out "$second/model"
chameleon-lite plot "$second/run" --title "demo model: continued pretraining"
timed eval chameleon-lite eval --model "$second/model" --n 500 --batch 32 --shards "$first/shards/val" --out "$second/eval"
python -m chameleon_lite.demo "$first" "$second" > "$second/recipe.json"
chameleon-lite ship-demo --model "$second/model" --recipe "$second/recipe.json"
