#!/usr/bin/env bash
# One stage of continued pretraining of a demo model: a fresh procedural corpus (task weights as given) tokenized with
# the model's own tokenizers, STEPS steps of 8 x 512 tokens from the model's weights (a fresh warm-up, cosine to
# 0.1 x LR), export, curves and the 500-prompt evaluation. Every step resumes when re-run; each step's wall time is
# appended to OUT/stage_seconds.jsonl (read into RECIPE.json by `python train/recipe.py`).
#
#   bash train/demo_continue.sh FROM_MODEL TOKENIZERS OUT SEED LR WARMUP STEPS WEIGHTS [IMAGE_SIZE] [VAL_SHARDS]
#
# FROM_MODEL: an exported model folder (the shipped one is chameleon_lite/assets/demo_model); TOKENIZERS: the folder
# of its tokenizers (an exported model folder holds them too); WEIGHTS: `chameleon-lite data procedural
# --task-weights`; IMAGE_SIZE: the corpus's picture side, which must be the image tokenizer's (default 48);
# VAL_SHARDS: validation shards (default: 2 % of the new corpus, held out). Extra trainer options come from the
# environment variable PRETRAIN_FLAGS, e.g. PRETRAIN_FLAGS=--compile=true (model and loss compiled as one graph:
# 0.93 s instead of 1.70 s per step on 2 AVX-512/AMX cores, after a minute of compiling). More from the environment:
# N_DOCS (corpus documents, default 48000), CORPUS_FLAGS (extra `data procedural` flags), VAL_EVERY (default 100),
# EXPORT_FLAGS (extra `export` flags) and EVAL_FLAGS (extra `eval` flags; default --shards VAL_SHARDS). A stage on the
# conversation corpus (docs/conversations.md) passes CORPUS_FLAGS="--unconditional-rate 0.1 --exclude-reserved",
# EXPORT_FLAGS="--format chat" and EVAL_FLAGS="--corpus OUT/corpus/manifest.jsonl ...": its eval is the held-out one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 8 ]; then
  sed -n '2,18p' "$0" >&2
  exit 2
fi
from=$1 tokenizers=$2 out=$3 seed=$4 lr=$5 warmup=$6 steps=$7 weights=$8 image_size=${9:-48} val=${10:-}
mkdir -p "$out"

. train/stage_timer.sh  # timed NAME CMD...: run CMD, append its wall time to OUT/stage_seconds.jsonl

[ -f "$out/corpus/manifest.jsonl" ] || timed corpus chameleon-lite data procedural --out "$out/corpus" --n "${N_DOCS:-48000}" \
  --seed "$seed" --task-weights "$weights" --image-size "$image_size" --workers 2 ${CORPUS_FLAGS:-}
held_out=0  # with no VAL_SHARDS, 2 % of the new corpus is held out as the stage's validation shards
[ -n "$val" ] || { val=$out/shards/val; held_out=0.02; }
[ -f "$out/shards/train/meta.json" ] || timed tokenize chameleon-lite data tokenize --manifest "$out/corpus/manifest.jsonl" \
  --tokenizers "$tokenizers" --out "$out/shards" --workers 2 --seed "$seed" --val-fraction "$held_out"
timed pretrain python train/pretrain.py --config tiny --data "$out/shards/train" --val-data "$val" --out "$out/run" \
  --tokenizers="$tokenizers" --init_from="$from" --steps="$steps" --lr="$lr" --warmup="$warmup" --min_lr_ratio=0.1 \
  --parallel=none --ckpt_every=100 --val_every="${VAL_EVERY:-100}" --val_batches=4 --seed=$((seed / 100)) ${PRETRAIN_FLAGS:-}
timed export chameleon-lite export "$out/run" --out "$out/model" ${EXPORT_FLAGS:-}
chameleon-lite plot "$out/run" --title "demo model: continued pretraining from $from"
[ -f "$out/eval/eval.json" ] || timed eval chameleon-lite eval --model "$out/model" --n 500 --batch 32 --samples 6 \
  ${EVAL_FLAGS:---shards "$val"} --out "$out/eval"
