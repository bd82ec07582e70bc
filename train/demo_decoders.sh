#!/usr/bin/env bash
# One stage of decoder fine-tuning of a demo model: a fresh media-only procedural corpus, IMAGE_STEPS steps of the
# image tokenizer's decoder and AUDIO_STEPS steps of the audio codec's decoder (encoders and codebooks frozen, so the
# transformer's codes mean what they meant; 0 steps keeps that tokenizer as it is), a model folder of the transformer
# with the new tokenizers, and the 500-prompt evaluation. Every step resumes when re-run; each step's wall time is
# appended to OUT/stage_seconds.jsonl (read into RECIPE.json by `python train/recipe.py`).
#
#   bash train/demo_decoders.sh FROM_MODEL OUT SEED IMAGE_STEPS AUDIO_STEPS [VAL_SHARDS [IMAGE_SIZE]]
#
# FROM_MODEL: an exported model folder (the shipped one is chameleon_lite/assets/demo_model); VAL_SHARDS: validation
# shards for the evaluation's perplexities (the tokens do not change, so those of the model's last stage; none or
# "": no perplexities); IMAGE_SIZE: the corpus's picture side, which must be the image tokenizer's (default 64).
# Extra options of the two tokenizer trainers come from IMAGE_FLAGS and AUDIO_FLAGS in the environment and win over
# the defaults below, e.g. AUDIO_FLAGS="--lr 3e-4 --disc-start 1" (the STFT discriminator from the first step).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 5 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
from=$1 out=$2 seed=$3 image_steps=$4 audio_steps=$5 val=${6:-} image_size=${7:-64}
mkdir -p "$out"

. train/stage_timer.sh  # timed NAME CMD...: run CMD, append its wall time to OUT/stage_seconds.jsonl

if [ "$image_steps" -eq 0 ] && [ "$audio_steps" -eq 0 ]; then
  echo "demo_decoders.sh: IMAGE_STEPS and AUDIO_STEPS are both 0: nothing to fine-tune" >&2
  exit 2
fi
# (--task-weights gives the named forms weight 1, as every other form has by default: the corpus holds all six
# document forms, and each tokenizer run trains on the pictures or clips of all of them)
weights=()
[ "$image_steps" -eq 0 ] || weights+=(caption_to_image=1)
[ "$audio_steps" -eq 0 ] || weights+=(caption_to_audio=1)
[ -f "$out/corpus/manifest.jsonl" ] || timed corpus chameleon-lite data procedural --out "$out/corpus" --n 16000 \
  --seed "$seed" --task-weights "$(IFS=,; echo "${weights[*]}")" --image-size "$image_size" --workers 2
# learning rates: on the shipped tokenizers, 2000 image steps at 1e-3 took 200 held-out pictures from 85.5 % to
# 98.5 % checker agreement; 3000 audio steps at 5e-4 took 196 held-out clips from 74.0 % to 89.3 %; 600 more at
# 3e-4 with the discriminator (AUDIO_FLAGS="--lr 3e-4 --disc-start 1", 4x slower a step) gave 91.3 % in one run and
# 89.3 % (SI-SNR 17.6 -> 18.0 dB) in another: the decoder alone does not reliably lift timbre. With two attention
# blocks added in front of it (AUDIO_FLAGS="--model.decoder_attention=2 --segment-frames 128 --batch-size 8": every
# frame sees its whole clip), 1000 steps at 5e-4 gave 90.8 % and 1500 more (same flags but --model.decoder_attention) 98.0 %
if [ "$image_steps" -gt 0 ] && [ ! -f "$out/image/image_vq.safetensors" ]; then
  timed image-decoder chameleon-lite tokenizer train-image --manifest "$out/corpus/manifest.jsonl" --out "$out/image" \
    --finetune-decoder "$from" --steps "$image_steps" --lr 1e-3 --seed "$seed" ${IMAGE_FLAGS:-}
fi
if [ "$audio_steps" -gt 0 ] && [ ! -f "$out/audio/audio_codec.safetensors" ]; then
  timed audio-decoder chameleon-lite tokenizer train-audio --manifest "$out/corpus/manifest.jsonl" --out "$out/audio" \
    --finetune-decoder "$from" --steps "$audio_steps" --lr 5e-4 --seed "$seed" ${AUDIO_FLAGS:-}
fi
# the model folder: the transformer and text tokenizer as they were, the fine-tuned tokenizers
rm -rf "$out/model.tmp" && mkdir -p "$out/model.tmp"
for f in "$from"/*; do [ "$(basename "$f")" = RECIPE.json ] || cp "$f" "$out/model.tmp/"; done
[ "$image_steps" -eq 0 ] || cp "$out"/image/image_vq.* "$out/model.tmp/"
[ "$audio_steps" -eq 0 ] || cp "$out"/audio/audio_codec.* "$out/model.tmp/"
rm -rf "$out/model" && mv "$out/model.tmp" "$out/model"
[ -f "$out/eval/eval.json" ] || timed eval chameleon-lite eval --model "$out/model" --n 500 --batch 32 --samples 6 \
  ${val:+--shards "$val"} --out "$out/eval"
