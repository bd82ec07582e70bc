"""Evaluate a trained image tokenizer on a (held-out) manifest: PSNR, checker agreement, codebook usage.

    python tokenizers/eval_image_vq.py --tokenizer artifacts/tok_tiny --manifest heldout/manifest.jsonl --n 2000 --json out.json

Same as ``chameleon-lite tokenizer eval-image``.
"""

import sys

from chameleon_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenizer", "eval-image", *sys.argv[1:]]))
