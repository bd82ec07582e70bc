"""Unified-id classification (chameleon_lite.vocab.classify_ids, a pure-PyTorch range lookup) at its callers' sizes.

Maps ids to (modality, local code, audio level) as UnifiedVocab.classify does, at the sizes its callers use: the
targets of a training batch (train/metrics.loss_stats, once per micro-step; the eval harness, once per batch) and
decode-size inputs of 1 to 64 ids. Sides: classify_ids (comparisons with the range starts, one floor division; no
torch.bucketize, whose parallel_for splits even a few thousand ids across threads) and the where-chain formulation
of the former reference (three nested torch.where, % and //). For scale: the input-embedding gather of the same ids
at width 256 (the tiny preset), which a step also runs. All sides check the id range, run at the same thread count
in one process, timed in turn (interleaved) so that load from other processes hits them alike; times are medians of
calls.

    python bench/bench_classify.py            # ids [8, 2048], [32, 4096], [1], [8], [64]
    python bench/bench_classify.py --quick    # smoke run: [8, 2048] and [8]

Writes bench/results/classify.json and bench/results/classify.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402

from chameleon_lite.vocab import AUDIO, IMAGE, TEXT, UnifiedVocab, VocabError, classify_ids  # noqa: E402

VOCAB = UnifiedVocab(text_size=16384, image_codebook=8192, audio_levels=8, audio_codebook=1024)
SHAPES = [(8, 2048), (32, 4096), (1,), (8,), (64,)]
QUICK_SHAPES = [(8, 2048), (8,)]
EMBED_DIM = 256  # the tiny preset's width


def where_chain(ids, text_offset, image_offset, audio_offset, audio_codebook, vocab_size):
    """The former reference: nested torch.where over the ranges, % and // for the audio split."""
    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)].flatten()[0]
        raise VocabError(f"token id {int(bad)} is outside the valid range [0, {vocab_size})")
    modality = torch.where(ids >= audio_offset, AUDIO, torch.where(ids >= image_offset, IMAGE, TEXT)).to(torch.int8)
    k = max(audio_codebook, 1)
    local = torch.where(
        ids >= audio_offset,
        (ids - audio_offset) % k,
        torch.where(ids >= image_offset, ids - image_offset, torch.where(ids >= text_offset, ids - text_offset, ids)),
    )
    level = torch.where(ids >= audio_offset, (ids - audio_offset) // k, torch.full_like(ids, -1))
    return modality, local, level


def interleaved_medians(fns: dict, repeats: int, number: int) -> dict:
    """Median seconds per call of each side; each sample times `number` calls, the sides in turn."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[name].append((time.perf_counter() - t0) / number)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(shapes: list[tuple[int, ...]], repeats: int) -> list[dict]:
    v = VOCAB
    args = (v.text_offset, v.image_offset, v.audio_offset, v.audio_codebook, v.size)
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(v.size, EMBED_DIM, generator=gen)  # context: the input-embedding gather of the same ids
    rows = []
    for shape in shapes:
        ids = torch.randint(0, v.size, shape, generator=gen)
        want = classify_ids(ids, *args)
        sides = {
            "classify_ids": lambda ids=ids: classify_ids(ids, *args),
            "where_chain": lambda ids=ids: where_chain(ids, *args),
        }
        for name, fn in sides.items():
            assert all(torch.equal(g, w.to(g.dtype)) for g, w in zip(fn(), want)), f"{name} disagrees"
        number = max(1, min(200, 2_000_000 // max(1, ids.numel()) // 50))
        sides["embedding"] = lambda ids=ids: torch.nn.functional.embedding(ids, table)
        t = interleaved_medians(sides, repeats, number)
        row = {"ids": "x".join(map(str, shape)), "n": ids.numel(), **{f"{k}_us": s * 1e6 for k, s in t.items()}}
        row["where_over_lookup"] = t["where_chain"] / t["classify_ids"]
        row["lookup_over_embedding"] = t["classify_ids"] / t["embedding"]
        rows.append(row)
        print(
            f"ids {row['ids']:>9s}  classify_ids {row['classify_ids_us']:8.1f} us  "
            f"where-chain {row['where_chain_us']:8.1f} us  embedding {row['embedding_us']:8.1f} us",
            flush=True,
        )
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [
        ("classify_ids_us", "classify_ids (range lookup)"),
        ("where_chain_us", "where-chain"),
        ("embedding_us", f"scale: embedding gather, dim {EMBED_DIM}"),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / len(sides)
    for i, (key, label) in enumerate(sides):
        ax.bar([x + i * w for x in range(len(rows))], [r[key] for r in rows], width=w, label=label)
    ax.set_xticks([x + w for x in range(len(rows))], [f"ids {r['ids']}" for r in rows], fontsize=8)
    ax.set(yscale="log", ylabel="us per call (median)", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two shapes and few repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every side")
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per measurement (median)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    isa = torch.backends.cpu.get_cpu_capability()
    repeats = args.repeats or (5 if args.quick else 21)
    rows = run(QUICK_SHAPES if args.quick else SHAPES, repeats)
    print(f"\nCPU ISA: {isa}  threads={args.threads}  repeats={repeats} (median)  vocab size {VOCAB.size}")
    cols = ["ids", "classify_ids_us", "where_chain_us", "embedding_us", "where_over_lookup", "lookup_over_embedding"]
    table = print_table(rows, cols)
    os.makedirs(args.out, exist_ok=True)
    path = write_json(
        os.path.join(args.out, "classify.json"),
        {"benchmark": "classify", "quick": args.quick, "isa": isa, "repeats": repeats, "rows": rows, "table": table},
    )
    png = os.path.join(args.out, "classify.png")
    plot(rows, png, f"unified-id classification ({isa}, {args.threads} threads)")
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
