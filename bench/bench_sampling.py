"""Fused constrained sampling vs the sort-based chain, torch.multinomial and argmax (the floor).

One decode step over logits [B, V]: temperature 0.8, top-k 50, top-p 0.9 for the fused op and the sort
chain (torch.sort + softmax + cumsum + multinomial, the usual PyTorch recipe); torch.multinomial on the
tempered softmax (no filters); and plain argmax, which reads the logits once and is the floor for anything
that must look at every logit. All sides run at the same thread count in one process, timed in turn (interleaved) so that load from
other processes hits them alike; times are medians.

    python bench/bench_sampling.py            # B in {1, 16, 32, 64} x V in {16384, 65536, 152064}
    python bench/bench_sampling.py --quick    # smoke run: B in {1, 32}, V in {16384, 65536}
    python bench/bench_sampling.py --device cuda   # the CUDA kernel against the same chain on the GPU (and
                                                   # FlashInfer's fused top-k/top-p sampler, if installed)

Writes bench/results/sampling.json and bench/results/sampling.png.
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

from chameleon_lite.ops import sample  # noqa: E402

TEMPERATURE, TOP_K, TOP_P = 0.8, 50, 0.9
GOAL_SHAPE = (32, 65536)
GOAL_VS_SORT = 10.0
GOAL_VS_ARGMAX = 3.0


def sort_chain(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Temperature + top-k + top-p with a full sort, softmax and multinomial."""
    x = logits.float() / TEMPERATURE
    srt, idx = torch.sort(x, dim=-1, descending=True)
    srt[:, TOP_K:] = float("-inf")
    probs = torch.softmax(srt, dim=-1)
    cum = torch.cumsum(probs, dim=-1)
    srt = srt.masked_fill(cum - probs > TOP_P, float("-inf"))
    choice = torch.multinomial(torch.softmax(srt, dim=-1), 1, generator=gen)
    return idx.gather(1, choice).squeeze(1)


def multinomial(logits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(torch.softmax(logits.float() / TEMPERATURE, dim=-1), 1, generator=gen).squeeze(1)


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2, device: str = "cpu") -> dict:
    """Median seconds per side, timing the sides in turn so load from other processes hits them alike
    (on CUDA each call is bracketed by synchronisations, so the times are whole calls)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def flashinfer_sampler(device: str):
    """FlashInfer's fused top-k + top-p sampling from logits (same T, k, p) where it is installed and the logits
    are on a GPU; None otherwise."""
    if device != "cuda":
        return None
    try:
        import flashinfer.sampling as fs
    except ImportError:
        return None

    def draw(logits: torch.Tensor) -> torch.Tensor:
        return fs.top_k_top_p_sampling_from_logits(logits.float() / TEMPERATURE, TOP_K, TOP_P)

    return draw


def run(batches: list[int], vocabs: list[int], repeats: int, dtype: torch.dtype, device: str = "cpu") -> list[dict]:
    rows = []
    data_gen = torch.Generator().manual_seed(0)
    gen = torch.Generator(device).manual_seed(0)  # the baselines' draws, on the logits' device
    for v in vocabs:
        for b in batches:
            logits = (torch.randn(b, v, generator=data_gen) * 3).to(device, dtype)
            step = [0]

            def fused():
                step[0] += 1
                return sample(logits, seed=1, step=step[0], temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P)

            def fused_greedy():
                return sample(logits, seed=1, step=0, temperature=0.0)

            sides = {
                "fused": fused,
                "fused_greedy": fused_greedy,
                "sort_chain": lambda: sort_chain(logits, gen),
                "multinomial": lambda: multinomial(logits, gen),
                "argmax": lambda: logits.argmax(-1),
            }
            flashinfer = flashinfer_sampler(device)
            if flashinfer is not None:
                sides["flashinfer"] = lambda: flashinfer(logits)
            t = interleaved_medians(sides, repeats, device=device)
            row = {"B": b, "V": v, **{f"{k}_ms": s * 1e3 for k, s in t.items()}}
            if "flashinfer" in t:
                row["x_vs_flashinfer"] = t["flashinfer"] / t["fused"]
            row["x_vs_sort"] = t["sort_chain"] / t["fused"]
            row["x_vs_multinomial"] = t["multinomial"] / t["fused"]
            row["fused_over_argmax"] = t["fused"] / t["argmax"]
            rows.append(row)
            print(
                f"B={b:3d} V={v:6d}  fused {row['fused_ms']:.3f} ms  sort {row['sort_chain_ms']:.2f} ms  "
                f"argmax {row['argmax_ms']:.3f} ms",
                flush=True,
            )
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for v in sorted({r["V"] for r in rows}):
        sub = [r for r in rows if r["V"] == v]
        bs = [r["B"] for r in sub]
        axes[0].plot(bs, [r["x_vs_sort"] for r in sub], marker="o", label=f"V={v}")
        axes[1].plot(bs, [r["fused_over_argmax"] for r in sub], marker="o", label=f"V={v}")
    axes[0].axhline(GOAL_VS_SORT, color="grey", ls="--", lw=1, label="goal")
    axes[1].axhline(GOAL_VS_ARGMAX, color="grey", ls="--", lw=1, label="goal")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="batch B",
        ylabel="speedup (sort chain / fused)",
        title="fused top-k+top-p vs sort-based chain",
    )
    axes[1].set(xscale="log", xlabel="batch B", ylabel="fused time / argmax time", title="fused vs argmax (floor)")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid and few repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every side")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: the CUDA kernel (chameleon_lite._C_cuda) against the same baselines on the GPU",
    )
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default=None, help="result file stem (default sampling, or sampling_cuda)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible on this machine; nothing to measure", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    batches = [1, 32] if args.quick else [1, 16, 32, 64]
    vocabs = [16384, 65536] if args.quick else [16384, 65536, 152064]
    repeats = args.repeats or (5 if args.quick else 15)
    rows = run(batches, vocabs, repeats, getattr(torch, args.dtype), args.device)

    cols = [
        "B",
        "V",
        "fused_ms",
        "fused_greedy_ms",
        "sort_chain_ms",
        "multinomial_ms",
        "argmax_ms",
        "x_vs_sort",
        "x_vs_multinomial",
        "fused_over_argmax",
    ]
    if any("x_vs_flashinfer" in r for r in rows):
        cols[7:7] = ["flashinfer_ms", "x_vs_flashinfer"]
    print(
        f"\ndevice={args.device} threads={args.threads} dtype={args.dtype} repeats={repeats} (median); "
        f"fused and sort chain: T={TEMPERATURE}, top-k={TOP_K}, top-p={TOP_P}"
    )
    table = print_table(rows, cols)
    goal = next((r for r in rows if (r["B"], r["V"]) == GOAL_SHAPE), None)
    goals = None
    if goal is not None:
        goals = {
            "shape": list(GOAL_SHAPE),
            "x_vs_sort": goal["x_vs_sort"],
            "x_vs_sort_goal": GOAL_VS_SORT,
            "fused_over_argmax": goal["fused_over_argmax"],
            "fused_over_argmax_goal": GOAL_VS_ARGMAX,
            "met": goal["x_vs_sort"] >= GOAL_VS_SORT and goal["fused_over_argmax"] <= GOAL_VS_ARGMAX,
        }
        print(
            f"\ngoal at B={GOAL_SHAPE[0]}, V={GOAL_SHAPE[1]}: {goal['x_vs_sort']:.1f}x the sort chain "
            f"(goal >= {GOAL_VS_SORT}), {goal['fused_over_argmax']:.2f}x argmax (goal <= {GOAL_VS_ARGMAX}) -> "
            f"{'met' if goals['met'] else 'NOT met'}"
        )
    os.makedirs(args.out, exist_ok=True)
    stem = args.name or ("sampling" if args.device == "cpu" else f"sampling_{args.device}")
    path = write_json(
        os.path.join(args.out, f"{stem}.json"),
        {
            "benchmark": "sampling",
            "device": args.device,
            "quick": args.quick,
            "dtype": args.dtype,
            "repeats": repeats,
            "settings": {"temperature": TEMPERATURE, "top_k": TOP_K, "top_p": TOP_P},
            "rows": rows,
            "goals": goals,
            "table": table,
        },
    )
    png = os.path.join(args.out, f"{stem}.png")
    plot(rows, png)
    print(f"wrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
