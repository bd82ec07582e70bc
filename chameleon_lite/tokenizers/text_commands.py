"""CLI commands of the text tokenizer (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse
import time

from chameleon_lite import argtypes as at


def _train_text(args: argparse.Namespace) -> int:
    from chameleon_lite.errors import UserError
    from chameleon_lite.files import TOKENIZERS, check_output_dir
    from chameleon_lite.tokenizers.text import TextTokenizer, iter_manifest_texts

    if bool(args.manifest) == bool(args.files):
        raise UserError("give either --manifest or --files")
    check_output_dir(args.out, TOKENIZERS)
    t0 = time.perf_counter()
    if args.manifest:
        seen = [0]

        def texts():
            for t in iter_manifest_texts(args.manifest):
                seen[0] += 1
                yield t

        tok = TextTokenizer.train(texts(), vocab_size=args.vocab_size, min_frequency=args.min_frequency)
        if not seen[0]:
            raise UserError(f"{args.manifest}: no text segments to train on")
    else:
        tok = TextTokenizer.train(files=args.files, vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    path = tok.save(args.out)
    print(f"trained byte-level BPE with {tok.vocab_size} ids in {time.perf_counter() - t0:.1f} s: {path}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from chameleon_lite.tokenizers.text import TextTokenizer

    tok = TextTokenizer.load(args.tokenizer)
    ids = tok.encode(args.text)
    print(" ".join(map(str, ids)))
    return 0


def register(cli) -> None:
    p = cli.command("tokenizer train-text", "train the byte-level BPE text tokenizer (tokenizer.json)", _train_text)
    p.add_argument("--manifest", help="train on the text segments of this JSONL manifest")
    p.add_argument("--files", nargs="+", help="train on these text files instead")
    p.add_argument(
        "--vocab-size", type=at.int_range(260, 1 << 20), default=4096, help="target number of BPE ids (default 4096)"
    )
    p.add_argument(
        "--min-frequency", type=at.positive_int, default=2, help="minimum pair count for a merge (default 2)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write tokenizer.json into")

    p = cli.command("tokenizer encode-text", "print the local BPE ids of a string", _encode)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding tokenizer.json")
    p.add_argument("text", help="the string to encode")
