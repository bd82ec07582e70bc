"""Train the image VQ tokenizer on the image segments of a JSONL manifest.

    python tokenizers/train_image_vq.py --manifest data/manifest.jsonl --preset tiny --out artifacts/tok_tiny

Same as ``chameleon-lite tokenizer train-image``; run it again with the same --out to resume.
"""

import sys

from chameleon_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenizer", "train-image", *sys.argv[1:]]))
