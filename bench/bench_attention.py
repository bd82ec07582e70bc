"""Fused modality-aware attention against PyTorch's ways of running the same mask, in one process, same threads.

Packed rows: B=1, H=8 heads (GQA variant: 8 query / 2 key-value heads), head dim 64, L in {1024, 2048, 4096}
tokens split into {1, 4, 16} documents of random lengths, with or without a bidirectional span of 256 tokens
inside one document. For each: forward and forward+backward of

- ``fused``: chameleon_lite.ops.modality_attention (csrc/cpu/attention.cpp);
- ``sdpa_mask``: scaled_dot_product_attention with the boolean [B, 1, L, L] mask built from doc/span ids (what the
  model ran before the fused kernel);
- ``sdpa_causal``: scaled_dot_product_attention(is_causal=True) over the whole row — the same work as one causal
  document, a reference point (it ignores document boundaries, so it is not the same result for several documents);
- ``flex``: torch.compile(flex_attention) with a BlockMask of the same predicate (compiled once per shape; building
  the BlockMask is timed separately as ``flex_mask_ms``);
- ``per_doc``: one SDPA call per document (is_causal, or with the document's own small mask when it holds the
  span) — the ideal that does no work across documents.

Decode: one new query per row against a 2048-position KV cache, B in {1, 16}: fused vs SDPA with a length mask.

Precision (CPU, both dtypes asked for): the fused kernel in bf16 against itself in fp32 on the same inputs, forward
and forward+backward, timed in turn — ``bf16_speedup`` is the fp32 time over the bf16 time; on CPUs with
AVX-512-BF16 the bf16 side multiplies in bf16 (``kernel_variant`` names the build), elsewhere it widens to fp32.
``live_gflops`` counts only the allowed (query, key) pairs (4·D flops each forward, 10·D forward+backward) and
``of_peak`` divides it by the machine's measured fp32/bf16 matmul rate. All sides are timed in turn
(interleaved), medians.

    python bench/bench_attention.py [--quick] [--threads 2] [--device cpu|cuda] [--no-flex] [--out bench/results]
    python bench/bench_attention.py --precision-only     # the bf16-vs-fp32 table alone

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

from chameleon_lite.ops.attention import (  # noqa: E402  # noqa: E402
    attention_mask_reference,
    modality_attention,
    modality_attention_decode,
    modality_attention_sdpa,
)

HEADS, DIM, SPAN = 8, 64, 256


def packed_ids(L: int, n_docs: int, span: bool, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    doc = torch.zeros(1, L, dtype=torch.int32)
    sp = torch.zeros(1, L, dtype=torch.int32)
    cuts = sorted(torch.randperm(L - 1, generator=g)[: n_docs - 1].add(1).tolist())
    for d, c in enumerate(cuts):
        doc[0, c:] = d + 1
    if span:
        bounds = [0, *cuts, L]
        longest = max(range(n_docs), key=lambda d: bounds[d + 1] - bounds[d])
        lo, hi = bounds[longest], bounds[longest + 1]
        s = lo + max(0, (hi - lo - SPAN) // 2)
        sp[0, s : min(hi, s + SPAN)] = 1
    return doc.to(device), sp.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict[str, callable], repeats: int, device: str) -> dict[str, float]:
    """Median seconds of each fn, run in turn so that outside load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up (and compilation)
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def matmul_peak_gflops(dtype: torch.dtype, device: str) -> float:
    n = 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = timed({"mm": lambda: a @ b}, 5, device)["mm"]
    return 2 * n**3 / t / 1e9


def per_doc_sdpa(q, k, v, doc, span):
    """One SDPA per document; a document holding a span gets its own small mask."""
    bounds = torch.nonzero(torch.diff(doc[0], prepend=doc[0, :1] - 1)).flatten().tolist() + [doc.shape[1]]
    outs = []
    gqa = q.shape[2] != k.shape[2]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        qd, kd, vd = (t[:, lo:hi].transpose(1, 2) for t in (q, k, v))
        if bool((span[0, lo:hi] != 0).any()):
            m = attention_mask_reference(doc[:, lo:hi], span[:, lo:hi])[:, None]
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=m, enable_gqa=gqa)
        else:
            o = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, enable_gqa=gqa)
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=1)


def sdpa_causal(q, k, v, doc, span):
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=q.shape[2] != k.shape[2]
    ).transpose(1, 2)


def make_flex(doc, span, L: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    d, s = doc[0], span[0]

    def mask_mod(b, h, qi, kv):
        return (d[qi] == d[kv]) & ((kv <= qi) | ((s[qi] != 0) & (s[qi] == s[kv])))

    t = time.perf_counter()
    block_mask = create_block_mask(mask_mod, 1, None, L, L, device=device)
    mask_ms = 1e3 * (time.perf_counter() - t)
    compiled = torch.compile(flex_attention, dynamic=False)  # one graph per (L, dtype, grad): see main()

    def run(q, k, v, doc_, span_):
        return compiled(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            block_mask=block_mask,
            enable_gqa=q.shape[2] != k.shape[2],
        ).transpose(1, 2)

    return run, mask_ms


def bench_full(L, n_docs, span, hkv, dtype, backward, repeats, device, peak, use_flex) -> dict:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, L, HEADS, DIM, generator=g).to(device, dtype).requires_grad_(backward)
    k = torch.randn(1, L, hkv, DIM, generator=g).to(device, dtype).requires_grad_(backward)
    v = torch.randn(1, L, hkv, DIM, generator=g).to(device, dtype).requires_grad_(backward)
    doc, sp = packed_ids(L, n_docs, span, device)
    dout = torch.randn(1, L, HEADS, DIM, generator=g).to(device, dtype)
    impls = {
        "fused": modality_attention,
        "sdpa_mask": modality_attention_sdpa,
        "sdpa_causal": sdpa_causal,
        "per_doc": per_doc_sdpa,
    }
    mask_ms = None
    if use_flex:
        try:
            impls["flex"], mask_ms = make_flex(doc, sp, L, device)
        except Exception as e:  # noqa: BLE001 - reported, the other sides still run
            print(
                f"flex_attention unavailable here: {type(e).__name__}: {str(e).splitlines()[0][:120]}", file=sys.stderr
            )
            use_flex = False

    def wrap(fn):
        def go():
            out = fn(q, k, v, doc, sp)
            if backward:
                torch.autograd.grad(out, (q, k, v), dout)

        return go

    with torch.set_grad_enabled(backward):
        try:
            t = timed({name: wrap(fn) for name, fn in impls.items()}, repeats, device)
        except Exception as e:  # noqa: BLE001 - flex may fail to compile here; measure without it
            if "flex" not in impls:
                raise
            print(f"flex_attention failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", file=sys.stderr)
            impls.pop("flex")
            mask_ms = None
            t = timed({name: wrap(fn) for name, fn in impls.items()}, repeats, device)
    live = int(attention_mask_reference(doc, sp).sum())
    flops = live * HEADS * DIM * (10 if backward else 4)
    row = {
        "op": "fwd+bwd" if backward else "forward",
        "L": L,
        "docs": n_docs,
        "span": span,
        "heads": f"{HEADS}/{hkv}",
        "dtype": str(dtype).replace("torch.", ""),
    }
    for name in ("fused", "sdpa_mask", "sdpa_causal", "flex", "per_doc"):
        row[f"{name}_ms"] = 1e3 * t[name] if name in t else None
    for name in ("sdpa_mask", "sdpa_causal", "flex", "per_doc"):
        row[f"x_vs_{name}"] = t[name] / t["fused"] if name in t else None
    row["flex_mask_ms"] = mask_ms
    row["live_gflops"] = flops / t["fused"] / 1e9
    row["of_peak"] = row["live_gflops"] / peak
    return row


def bench_decode(B: int, S: int, hkv: int, dtype: torch.dtype, repeats: int, device: str) -> dict:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(B, 1, HEADS, DIM, generator=g).to(device, dtype)
    kc = torch.randn(B, S, hkv, DIM, generator=g).to(device, dtype)
    vc = torch.randn(B, S, hkv, DIM, generator=g).to(device, dtype)
    lens = torch.tensor([S - (7 * b) % (S // 2) for b in range(B)], dtype=torch.int32, device=device)

    def sdpa():
        mask = (torch.arange(S, device=device)[None, :] < lens[:, None])[:, None, None, :]
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), attn_mask=mask, enable_gqa=hkv != HEADS
        )

    with torch.no_grad():
        t = timed({"fused": lambda: modality_attention_decode(q, kc, vc, lens), "sdpa_mask": sdpa}, repeats, device)
    return {
        "op": "decode",
        "L": S,
        "docs": B,
        "span": False,
        "heads": f"{HEADS}/{hkv}",
        "dtype": str(dtype).replace("torch.", ""),
        "fused_ms": 1e3 * t["fused"],
        "sdpa_mask_ms": 1e3 * t["sdpa_mask"],
        "x_vs_sdpa_mask": t["sdpa_mask"] / t["fused"],
    }


def bench_precision(L, n_docs, backward, repeats, device, peaks) -> dict:
    """The fused kernel in fp32 and in bf16 on the same inputs, timed in turn."""
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(1, L, h, DIM, generator=g).to(device) for h in (HEADS, HEADS, HEADS)]
    dout = torch.randn(1, L, HEADS, DIM, generator=g).to(device)
    doc, sp = packed_ids(L, n_docs, False, device)
    fns = {}
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = (t.to(dtype).requires_grad_(backward) for t in base)
        d = dout.to(dtype)

        def go(q=q, k=k, v=v, d=d):
            with torch.set_grad_enabled(backward):
                out = modality_attention(q, k, v, doc, sp)
                if backward:
                    torch.autograd.grad(out, (q, k, v), d)

        fns[dtype] = go
    t = timed(fns, repeats, device)
    live = int(attention_mask_reference(doc, sp).sum())
    flops = live * HEADS * DIM * (10 if backward else 4)
    return {
        "op": "fwd+bwd" if backward else "forward",
        "L": L,
        "docs": n_docs,
        "fp32_ms": 1e3 * t[torch.float32],
        "bf16_ms": 1e3 * t[torch.bfloat16],
        "bf16_speedup": t[torch.float32] / t[torch.bfloat16],
        "fp32_of_peak": flops / t[torch.float32] / 1e9 / peaks[torch.float32],
        "bf16_of_peak": flops / t[torch.bfloat16] / 1e9 / peaks[torch.bfloat16],
    }


PRECISION_COLUMNS = ["op", "L", "docs", "fp32_ms", "bf16_ms", "bf16_speedup", "fp32_of_peak", "bf16_of_peak"]

COLUMNS = [
    "op",
    "L",
    "docs",
    "span",
    "heads",
    "dtype",
    "fused_ms",
    "sdpa_mask_ms",
    "sdpa_causal_ms",
    "flex_ms",
    "per_doc_ms",
    "x_vs_sdpa_mask",
    "x_vs_sdpa_causal",
    "x_vs_flex",
    "x_vs_per_doc",
    "flex_mask_ms",
    "live_gflops",
    "of_peak",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid, few repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for every side")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16", "float16"],
        help="float16: CUDA only (the CPU kernels take fp32 and bf16)",
    )
    ap.add_argument("--no-flex", action="store_true", help="skip the compiled flex_attention baseline")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 1024 2048 4096)")
    ap.add_argument("--docs", type=int, nargs="+", default=None, help="documents per row (default 1 4 16)")
    ap.add_argument("--no-decode", action="store_true", help="skip the decode rows")
    ap.add_argument("--precision-only", action="store_true", help="only the bf16-vs-fp32 table of the fused kernel")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--name", default=None, help="result file stem (default attention)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=0,
        help="start no new full-attention row after this many seconds (0: no limit); the JSON says when it stopped",
    )
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA GPU is visible on this machine; nothing to measure", file=sys.stderr)
        return 2
    if args.device == "cpu" and "float16" in args.dtypes:
        print("--dtypes float16: the CPU kernels take float32 and bfloat16; use --device cuda", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    # each (length, dtype, backward) is its own flex_attention graph: keep them all compiled rather than falling
    # back to eager after the default number of recompilations
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    repeats = args.repeats or (2 if args.quick else 5)
    lengths = args.lengths or ([1024] if args.quick else [1024, 2048, 4096])
    doc_counts = args.docs or ([1, 4] if args.quick else [1, 4, 16])
    dtypes = [getattr(torch, d) for d in args.dtypes]
    peaks = {d: matmul_peak_gflops(d, args.device) for d in dtypes}
    print(
        "matmul peak (1024^3): "
        + ", ".join(f"{str(d).replace('torch.', '')} {p:.1f} GFLOP/s" for d, p in peaks.items())
    )
    rows = []
    t_start = time.perf_counter()
    truncated = False
    for dtype in dtypes if not args.precision_only else ():
        for L in lengths:
            for n_docs in doc_counts:
                for span in (False, True):
                    for backward in (False, True):
                        if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                            truncated = True
                            break
                        if (
                            backward
                            and args.device == "cpu"
                            and (L == 4096 or dtype != torch.float32)
                            and not args.quick
                        ):
                            continue  # CPU fwd+bwd: fp32 at L <= 2048 (the SDPA+mask baseline needs seconds per call)
                        rows.append(
                            bench_full(
                                L,
                                n_docs,
                                span,
                                HEADS,
                                dtype,
                                backward,
                                repeats,
                                args.device,
                                peaks[dtype],
                                not args.no_flex,
                            )
                        )
                        print(
                            f"  {rows[-1]['op']} L={L} docs={n_docs} span={span} {rows[-1]['dtype']}: "
                            f"{rows[-1]['fused_ms']:.1f} ms, {rows[-1]['x_vs_sdpa_mask']:.2f}x SDPA+mask",
                            flush=True,
                        )
        rows.append(
            bench_full(
                lengths[-1] if args.quick else 2048, 4, True, 2, dtype, False, repeats, args.device, peaks[dtype], False
            )
        )  # GQA 8/2
        for B in (1, 16) if not args.no_decode else ():
            rows.append(bench_decode(B, 2048, HEADS, dtype, repeats, args.device))
    if truncated:
        print(f"--budget-s {args.budget_s:g}: stopped adding full-attention rows; the grid is incomplete")
    precision = []
    if args.device == "cpu" and {torch.float32, torch.bfloat16} <= set(dtypes):
        variant = torch.ops.chameleon_lite.kernel_variant("attention", torch.bfloat16)
        print(f"\nbf16 vs fp32, fused kernel (bf16 build: {variant}), {HEADS} heads, head dim {DIM}")
        for L in lengths:
            for n_docs in doc_counts:
                for backward in (False, True):
                    precision.append(bench_precision(L, n_docs, backward, repeats, args.device, peaks))
                    r = precision[-1]
                    print(f"  {r['op']} L={L} docs={n_docs}: {r['bf16_speedup']:.2f}x", flush=True)
        precision_table = print_table(precision, PRECISION_COLUMNS)
    print(f"\ndevice={args.device} threads={args.threads} repeats={repeats} (median, interleaved); B=1, head dim {DIM}")
    table = print_table(rows, COLUMNS)
    name = args.name or f"attention{'' if args.device == 'cpu' else '_' + args.device}"
    path = write_json(
        os.path.join(args.out, f"{name}.json"),
        {
            "benchmark": "attention",
            "quick": args.quick,
            "device": args.device,
            "repeats": repeats,
            "matmul_peak_gflops": {str(d): p for d, p in peaks.items()},
            "truncated_by_budget_s": args.budget_s if truncated else None,
            "rows": rows,
            "table": table,
            "precision": precision,
            "precision_table": precision_table if precision else None,
            "bf16_build": variant if precision else None,
        },
    )
    shown = [r for r in rows if r["op"] != "decode"] or [
        {**r, "span": False, "dtype": "bf16 vs fp32", "x_vs_sdpa_mask": r["bf16_speedup"]} for r in precision
    ]
    save_bar_chart(
        os.path.splitext(path)[0] + ".png",
        [f"{r['op']} L={r['L']} d={r['docs']}{' span' if r['span'] else ''} {r['dtype']}" for r in shown],
        [r["x_vs_sdpa_mask"] for r in shown],
        "speed-up over SDPA with a materialised mask (x)" if rows else "bf16 over fp32, fused kernel (x)",
        f"fused modality-aware attention ({args.threads} threads)",
        horizontal=True,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
