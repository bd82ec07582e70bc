"""`chameleon-lite vocab`: build or inspect vocab.json."""

from __future__ import annotations

import argparse
import os

from chameleon_lite import argtypes as at
from chameleon_lite.errors import UserError


def _vocab(args: argparse.Namespace) -> int:
    from chameleon_lite.vocab import UnifiedVocab

    if args.show:
        v = UnifiedVocab.load(args.show)
        print(v.describe())
        return 0
    if args.tokenizers:
        from chameleon_lite.tokenizers.loader import vocab_from_tokenizer_dir

        v = vocab_from_tokenizer_dir(args.tokenizers)
    else:
        missing = [
            n for n in ("text_size", "image_codebook", "audio_levels", "audio_codebook") if getattr(args, n) is None
        ]
        if missing:
            raise UserError(
                "give --tokenizers DIR, --show FILE, or all of "
                + ", ".join("--" + m.replace("_", "-") for m in missing)
            )
        v = UnifiedVocab(args.text_size, args.image_codebook, args.audio_levels, args.audio_codebook, args.num_special)
    print(v.describe())
    if args.out:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UserError(f"{args.out}: exists and is not a folder; give --out the tokenizer folder")
        os.makedirs(args.out, exist_ok=True)
        print("wrote", v.save(args.out))
    return 0


def register(cli) -> None:
    p = cli.command("vocab", "build the unified vocabulary (vocab.json) or describe an existing one", _vocab)
    p.add_argument("--show", metavar="FILE", help="describe an existing vocab.json (or a folder holding one)")
    p.add_argument("--tokenizers", metavar="DIR", help="derive the vocabulary from trained tokenizer artifacts in DIR")
    p.add_argument("--text-size", type=at.int_range(1, 1 << 24), help="number of text BPE ids")
    p.add_argument("--image-codebook", type=at.int_range(0, 1 << 24), help="image VQ codebook size")
    p.add_argument("--audio-levels", type=at.int_range(0, 64), help="audio residual VQ levels")
    p.add_argument("--audio-codebook", type=at.int_range(0, 1 << 24), help="codes per audio level")
    p.add_argument(
        "--num-special", type=at.int_range(8, 4096), default=16, help="size of the special-token range (default 16)"
    )
    p.add_argument("--out", metavar="DIR", help="write vocab.json into DIR")
