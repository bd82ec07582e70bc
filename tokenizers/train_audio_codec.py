"""Train the audio codec on the audio segments of a JSONL manifest.

    python tokenizers/train_audio_codec.py --manifest data/manifest.jsonl --preset tiny --out artifacts/codec_tiny

Same as ``chameleon-lite tokenizer train-audio``; run it again with the same --out to resume.
"""

import sys

from chameleon_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenizer", "train-audio", *sys.argv[1:]]))
