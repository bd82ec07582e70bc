"""Unified-id classification: the C++ op (classify_ids) vs pure-PyTorch range lookups.

Maps ids to (modality, local code, audio level) as UnifiedVocab.classify does, at the sizes its callers use: the
targets of a training batch (train/metrics.loss_stats, once per micro-step; the eval harness, once per batch) and
decode-size inputs of 1 to 64 ids. Sides: the C++ op (torch.ops.chameleon_lite.classify_ids, at::parallel_for),
the where-chain reference (chameleon_lite.vocab.classify_ids_reference) and a range lookup (comparisons with the
range starts, one floor division for the audio level; no torch.bucketize, whose parallel_for splits even a few
thousand ids across threads). Every side checks the id range; all run at the same thread count in one process,
timed in turn (interleaved) so that load from other processes hits them alike; times are medians of calls. For
scale: the input-embedding gather of the same ids at width 256 (the tiny preset), which a step also runs.

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

import chameleon_lite.ops  # noqa: E402, F401  (registers the C++ op)
from chameleon_lite.vocab import UnifiedVocab, VocabError, classify_ids_reference  # noqa: E402

VOCAB = UnifiedVocab(text_size=16384, image_codebook=8192, audio_levels=8, audio_codebook=1024)
SHAPES = [(8, 2048), (32, 4096), (1,), (8,), (64,)]
QUICK_SHAPES = [(8, 2048), (8,)]
EMBED_DIM = 256  # the tiny preset's width


def range_lookup(ids, text_offset, image_offset, audio_offset, audio_codebook, vocab_size):
    """The candidate pure-PyTorch lookup: comparisons with the range starts and one floor division."""
    if ids.numel():
        lo, hi = torch.aminmax(ids)
        if int(lo) < 0 or int(hi) >= vocab_size:
            bad = ids[(ids < 0) | (ids >= vocab_size)].flatten()[0]
            raise VocabError(f"token id {int(bad)} is outside the valid range [0, {vocab_size})")
    ids = ids.to(torch.int64)
    k = max(audio_codebook, 1)
    in_image, in_audio = ids >= image_offset, ids >= audio_offset
    modality = in_image.to(torch.int8) + in_audio.to(torch.int8)
    level = (ids - audio_offset).div_(k, rounding_mode="floor").clamp_(min=-1)
    text_start = torch.where(ids >= text_offset, text_offset, 0)
    start = torch.where(in_audio, level * k + audio_offset, torch.where(in_image, image_offset, text_start))
    return modality, ids - start, level


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
        want = classify_ids_reference(ids, *args)
        sides = {
            "cpp_op": lambda ids=ids: torch.ops.chameleon_lite.classify_ids(ids, *args),
            "where_chain": lambda ids=ids: classify_ids_reference(ids, *args),
            "range_lookup": lambda ids=ids: range_lookup(ids, *args),
        }
        for name, fn in sides.items():
            assert all(torch.equal(g, w.to(g.dtype)) for g, w in zip(fn(), want)), f"{name} disagrees"
        number = max(1, min(200, 2_000_000 // max(1, ids.numel()) // 50))
        sides["embedding"] = lambda ids=ids: torch.nn.functional.embedding(ids, table)
        t = interleaved_medians(sides, repeats, number)
        row = {"ids": "x".join(map(str, shape)), "n": ids.numel(), **{f"{k}_us": s * 1e6 for k, s in t.items()}}
        row["where_over_cpp"] = t["where_chain"] / t["cpp_op"]
        row["lookup_over_cpp"] = t["range_lookup"] / t["cpp_op"]
        row["lookup_over_embedding"] = t["range_lookup"] / t["embedding"]
        rows.append(row)
        print(
            f"ids {row['ids']:>9s}  C++ {row['cpp_op_us']:8.1f} us  where {row['where_chain_us']:8.1f} us  "
            f"lookup {row['range_lookup_us']:8.1f} us  embedding {row['embedding_us']:8.1f} us",
            flush=True,
        )
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [
        ("cpp_op_us", "C++ op"),
        ("where_chain_us", "torch where-chain"),
        ("range_lookup_us", "torch range lookup"),
        ("embedding_us", f"context: embedding gather, dim {EMBED_DIM}"),
    ]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.8 / len(sides)
    for i, (key, label) in enumerate(sides):
        ax.bar([x + i * w for x in range(len(rows))], [r[key] for r in rows], width=w, label=label)
    ax.set_xticks([x + 1.5 * w for x in range(len(rows))], [f"ids {r['ids']}" for r in rows], fontsize=8)
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
    cols = [
        "ids",
        "cpp_op_us",
        "where_chain_us",
        "range_lookup_us",
        "embedding_us",
        "where_over_cpp",
        "lookup_over_cpp",
        "lookup_over_embedding",
    ]
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
