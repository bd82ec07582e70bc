"""Byte-level BPE: training time and encode throughput on the procedural corpus and on real text.

    python bench/bench_text_tokenizer.py [--quick] [--threads 2] [--out bench/results/text_tokenizer.json]

Real text = the Python standard library's own .py/.txt files (present on every machine that runs this).
Encode throughput is reported for single-string `encode` calls and for `encode_batch` (HF's Rust thread pool).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import sysconfig
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, print_table, write_json  # noqa: E402

from chameleon_lite.tokenizers.text import TextTokenizer, iter_manifest_texts  # noqa: E402


def stdlib_texts(max_bytes: int) -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(
        glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
        + glob.glob(os.path.join(root, "**", "*.txt"), recursive=True)
    )
    out, total = [], 0
    for f in files:
        if "site-packages" in f:
            continue
        try:
            s = open(f, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        out.append(s)
        total += len(s.encode())
        if total >= max_bytes:
            break
    return out


def procedural_texts(n: int) -> list[str]:
    from chameleon_lite.data.procedural import write_corpus

    with tempfile.TemporaryDirectory() as d:
        m = write_corpus(d, n=n, seed=1234, progress=False)
        return list(iter_manifest_texts(m))


def bench_corpus(name: str, texts: list[str], vocab_size: int, repeats: int) -> dict:
    nbytes = sum(len(t.encode()) for t in texts)
    t0 = time.perf_counter()
    tok = TextTokenizer.train(texts, vocab_size=vocab_size, progress=False)
    train_s = time.perf_counter() - t0
    n_tokens = sum(len(x) for x in tok.encode_batch(texts))
    single = median_time(lambda: [tok.encode(t) for t in texts], repeats=repeats)
    batch = median_time(lambda: tok.encode_batch(texts), repeats=repeats)
    return {
        "corpus": name,
        "MB": nbytes / 1e6,
        "vocab": tok.vocab_size,
        "train_s": train_s,
        "tokens": n_tokens,
        "bytes/token": nbytes / max(n_tokens, 1),
        "encode tok/s": n_tokens / single,
        "encode_batch tok/s": n_tokens / batch,
        "batch/single": single / batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small corpora, fewer repeats")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="bench/results/text_tokenizer.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    repeats = 2 if args.quick else 5
    rows = [
        bench_corpus("procedural", procedural_texts(500 if args.quick else 5000), 4096, repeats),
        bench_corpus("python-stdlib", stdlib_texts(1_000_000 if args.quick else 8_000_000), 16384, repeats),
    ]
    table = print_table(rows, list(rows[0].keys()))
    print(
        "wrote",
        write_json(args.out, {"bench": "text_tokenizer", "threads": args.threads, "rows": rows, "table": table}),
    )


if __name__ == "__main__":
    main()
