"""Train the byte-level BPE text tokenizer.

    python tokenizers/train_text.py --manifest corpus/manifest.jsonl --out tok/ [--vocab-size 4096]
    python tokenizers/train_text.py --files a.txt b.txt --out tok/

Same as `chameleon-lite tokenizer train-text`.
"""

import sys

from chameleon_lite.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenizer", "train-text", *sys.argv[1:]]))
