#!/usr/bin/env bash
# A demo model from scratch with the quickstart's tokenizers (48-pixel pictures, 512 image codes, a codec on the
# corpus's 20 ms grid): the quickstart with a 240-minute budget, then continued pretraining (train/demo_continue.sh)
# on a fresh corpus that weights the tasks the quickstart's model was weakest at, then the 500-prompt evaluation and
# `ship-demo`. About 6 hours on 2 AVX2 CPU cores; every step resumes when re-run. (The shipped model's own recipe,
# with the code version of every stage, is in chameleon_lite/assets/demo_model/RECIPE.json.)
#
#   bash train/demo_recipe.sh [RUNS]        (default RUNS=runs; run from the repository root after install)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
first=$runs/demo

# 1. Corpus (48 000 documents), tokenizers at their full recipes, shards, and pretraining from scratch for the rest of
#    the budget.
chameleon-lite quickstart --out "$first" --budget-minutes 240 --seed 0

# 2. Continued pretraining on a corpus from another seed in which reading pictures and clips (image_to_caption,
#    audio_to_caption: their loss is only the caption's dozen tokens) weighs 3x, writing clips 1.5x, and the long
#    mixed documents 0.5x.
bash train/demo_continue.sh "$first/model" "$first/tokenizers" "$runs/demo2" 100 0.001 30 1500 \
  "caption_to_image=1,image_to_caption=3,caption_to_audio=1.5,audio_to_caption=3,interleaved=0.5,instruction=0.5" 48 \
  "$first/shards/val"

# 3. The demo model itself, with the recipe assembled from every stage's records.
python train/recipe.py "$first" "$runs/demo2" > "$runs/demo2/recipe.json"
chameleon-lite ship-demo --model "$runs/demo2/model" --recipe "$runs/demo2/recipe.json"
