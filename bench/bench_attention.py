"""Fused modality-aware attention vs PyTorch SDPA with the mask materialised, in one process, same threads.

Packed rows like training sees them: B=2 rows of L tokens, each holding 4 documents of random lengths, one of them
with a bidirectional image span of 256 tokens; 8 query heads over 8 or 2 key/value heads (GQA), head dim 64.
Forward and forward+backward at L in {512, 2048}, fp32 and bf16. Decode: one new query per row against a KV cache
of 512 or 4096 positions, B=4. The baseline is ``torch.nn.functional.scaled_dot_product_attention`` with the boolean
[B, 1, L, L] mask built from doc/span ids (what the model ran before the fused kernel; for decode the causal-and-
length mask). Both sides are timed in turn (interleaved), medians of repeated runs.

    python bench/bench_attention.py [--quick] [--threads 2] [--device cpu|cuda] [--out bench/results]

Writes bench/results/attention.json and attention.png.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, save_bar_chart, write_json  # noqa: E402

from chameleon_lite.ops.attention import attention_mask_reference, modality_attention  # noqa: E402
from chameleon_lite.ops.attention import modality_attention_decode, modality_attention_sdpa  # noqa: E402

HEADS, DIM = 8, 64


def packed_ids(B: int, L: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    doc = torch.zeros(B, L, dtype=torch.int32)
    span = torch.zeros(B, L, dtype=torch.int32)
    for b in range(B):
        cuts = sorted(torch.randperm(L - 1, generator=g)[:3].add(1).tolist())
        for d, c in enumerate(cuts):
            doc[b, c:] = d + 1
        s = int(torch.randint(0, L - 256, (1,), generator=g)) if L > 256 else 0
        span[b, s:s + min(256, L)] = 1
    return doc.to(device), span.to(device)


def timed_pair(fns: dict[str, callable], repeats: int) -> dict[str, float]:
    """Median seconds of each fn, run in turn so that outside load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_full(L: int, hkv: int, dtype: torch.dtype, backward: bool, repeats: int, device: str) -> dict:
    B = 2
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, L, HEADS, DIM, generator=g).to(device, dtype).requires_grad_(backward)
    k = torch.randn(B, L, hkv, DIM, generator=g).to(device, dtype).requires_grad_(backward)
    v = torch.randn(B, L, hkv, DIM, generator=g).to(device, dtype).requires_grad_(backward)
    doc, span = packed_ids(B, L, device)
    dout = torch.randn(B, L, HEADS, DIM, generator=g).to(device, dtype)

    def run(fn):
        def go():
            out = fn(q, k, v, doc, span)
            if backward:
                torch.autograd.grad(out, (q, k, v), dout)
        return go

    with torch.set_grad_enabled(backward):
        t = timed_pair({"fused": run(modality_attention), "sdpa": run(modality_attention_sdpa)}, repeats)
    mask = attention_mask_reference(doc, span)
    return {"op": "fwd+bwd" if backward else "forward", "L": L, "B": B, "heads": f"{HEADS}/{hkv}",
            "dtype": str(dtype).replace("torch.", ""), "visible_pairs": round(float(mask.float().mean()), 3),
            "fused_ms": 1e3 * t["fused"], "sdpa_ms": 1e3 * t["sdpa"], "x_vs_sdpa": t["sdpa"] / t["fused"]}


def bench_decode(S: int, hkv: int, dtype: torch.dtype, repeats: int, device: str) -> dict:
    B = 4
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, 1, HEADS, DIM, generator=g).to(device, dtype)
    kc = torch.randn(B, S, hkv, DIM, generator=g).to(device, dtype)
    vc = torch.randn(B, S, hkv, DIM, generator=g).to(device, dtype)
    lens = torch.tensor([S, S - 7, S // 2, S // 3], dtype=torch.int32, device=device)

    def sdpa():
        mask = (torch.arange(S, device=device)[None, :] < lens[:, None])[:, None, None, :]
        return F.scaled_dot_product_attention(q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), attn_mask=mask,
                                              enable_gqa=hkv != HEADS)

    with torch.no_grad():
        t = timed_pair({"fused": lambda: modality_attention_decode(q, kc, vc, lens), "sdpa": sdpa}, repeats)
    return {"op": "decode", "L": S, "B": B, "heads": f"{HEADS}/{hkv}", "dtype": str(dtype).replace("torch.", ""),
            "visible_pairs": None, "fused_ms": 1e3 * t["fused"], "sdpa_ms": 1e3 * t["sdpa"],
            "x_vs_sdpa": t["sdpa"] / t["fused"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, few repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for both sides")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible on this machine; nothing to measure", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 7)
    lengths = [512] if args.quick else [512, 2048]
    dtypes = [torch.float32, torch.bfloat16]
    rows = []
    for L in lengths:
        for dtype in dtypes:
            for backward in (False, True):
                rows.append(bench_full(L, 2, dtype, backward, repeats, args.device))
    rows.append(bench_full(lengths[-1], HEADS, torch.float32, False, repeats, args.device))
    for S in ([512] if args.quick else [512, 4096]):
        for dtype in dtypes:
            rows.append(bench_decode(S, 2, dtype, repeats, args.device))
    print(f"\ndevice={args.device} threads={args.threads} repeats={repeats} (median, interleaved); head dim {DIM}")
    table = print_table(rows, ["op", "L", "B", "heads", "dtype", "visible_pairs", "fused_ms", "sdpa_ms", "x_vs_sdpa"])
    path = write_json(os.path.join(args.out, f"attention{'' if args.device == 'cpu' else '_' + args.device}.json"),
                      {"benchmark": "attention", "quick": args.quick, "device": args.device, "repeats": repeats,
                       "rows": rows, "table": table})
    save_bar_chart(os.path.splitext(path)[0] + ".png",
                   [f"{r['op']} L={r['L']}\n{r['dtype']} {r['heads']}" for r in rows], [r["x_vs_sdpa"] for r in rows],
                   "speed-up over SDPA with a materialised mask (x)",
                   f"fused modality-aware attention ({args.threads} threads)", horizontal=True)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
