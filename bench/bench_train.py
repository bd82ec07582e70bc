"""Training-step throughput of the chameleon-lite transformer vs Hugging Face transformers' Chameleon model.

One step = forward, next-token loss, backward, gradient clipping, AdamW update, on random token rows
[batch, seq_len] holding 1 document (plain causal attention) or several packed documents (positions restart,
no attention across documents: HF gets the same mask as a 4-D boolean attention_mask).
Both models get the same shapes (a preset of ours: width, depth, heads, SwiGLU width, vocabulary), the same
precision (fp32, and bf16 autocast over fp32 master weights), the same thread count and flush-to-zero denormals, in the same process; the sides are timed in turn so load from other processes hits them
alike, and the tables report medians. Our step includes what our trainer does (z-loss, per-document RoPE from
given positions, attention through chameleon_lite.ops.modality_attention); "ours compiled" is the
trainer's --compile flag (model and loss compiled as one graph, as in a single-process or DDP run).

    python bench/bench_train.py                 # tiny preset, seq 512, batch 8; then debug
    python bench/bench_train.py --quick         # smoke run (debug preset, short rows, few repeats)

Needs the optional `bench` extra (pip install -e .[bench]). Writes bench/results/train.json and .png.
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

from chameleon_lite.model import build_model, preset  # noqa: E402
from chameleon_lite.ops.attention import attention_mask_reference  # noqa: E402
from chameleon_lite.train.optim import build_optimizer, clip_grad_norm  # noqa: E402
from chameleon_lite.train.trainer import make_loss_terms  # noqa: E402

Z_LOSS = 1e-5
GOAL = 1.3


def hf_model(cfg):
    """HF Chameleon with our shapes (MHA/GQA, SwiGLU width, vocab, no image-token masking, SDPA attention)."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    hc = ChameleonConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        swin_norm=cfg.norm_placement == "post",
        tie_word_embeddings=cfg.tie_embeddings,
        vocabulary_map={},
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(hc)
    model.train()
    return model


def trainable(module, skip: str = "vqmodel"):
    """The parameters a text/unified-token training step updates (HF also builds the image VQ-VAE)."""
    return [p for n, p in module.named_parameters() if skip not in n]


def make_steps(cfg, batch: int, seq_len: int, compile_ours: bool, dtype: torch.dtype = torch.float32, docs: int = 1):
    """Training-step closures for both models over ``docs`` equal documents packed per row (positions restart
    per document; HF gets the same document-causal mask as a 4-D boolean mask when docs > 1)."""
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1))
    inp, tgt = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    doc_len = seq_len // docs
    col = torch.arange(seq_len)
    pos = (col % doc_len).expand(batch, seq_len).contiguous()
    doc_ids = (col // doc_len).to(torch.int32).expand(batch, seq_len).contiguous()
    zeros = torch.zeros(batch, seq_len, dtype=torch.int32)
    hf_mask = attention_mask_reference(doc_ids, zeros).unsqueeze(1) if docs > 1 else None

    ours = build_model(cfg, seed=0)
    loss_terms = make_loss_terms(ours, compile_whole=compile_ours)
    opt = build_optimizer(ours, 1e-4, 0.1, (0.9, 0.95))
    amp = dict(device_type="cpu", dtype=dtype, enabled=dtype != torch.float32)

    def ours_step():
        with torch.autocast(**amp):
            ce, lse = loss_terms(inp, pos, doc_ids, zeros, tgt)
        loss = (ce + Z_LOSS * lse.square()).mean()
        loss.backward()
        clip_grad_norm(ours, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    hf = hf_model(cfg)
    params = trainable(hf)
    hopt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def hf_step():
        with torch.autocast(**amp):
            # HF shifts the labels inside its loss.
            out = hf(input_ids=inp, labels=ids[:, :-1], attention_mask=hf_mask, position_ids=pos, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        hopt.step()
        hopt.zero_grad(set_to_none=True)
        return out.loss

    n_ours = sum(p.numel() for p in ours.parameters())
    n_hf = sum(p.numel() for p in params)
    return ours_step, hf_step, n_ours, n_hf


def interleaved(fns: dict, repeats: int, warmup: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,debug")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="fp32,bf16", help="fp32 and/or bf16 (autocast on both sides)")
    ap.add_argument("--docs", default="1,4", help="documents packed per row (1 = plain causal rows)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled variant")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "train.json"))
    args = ap.parse_args()
    if args.quick:
        args.presets, args.seq_len, args.batch, args.repeats, args.dtypes = "debug", 128, 4, 3, "fp32"
    torch.set_num_threads(args.threads)
    # Denormal arithmetic is ~100x slower on x86; tiny gradients and Adam moments produce denormals, so both sides
    # run with flush-to-zero (our trainer sets it too) and neither is timed on that artefact.
    torch.set_flush_denormal(True)

    rows = []
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    grid = [
        (n, d, int(k)) for n in args.presets.split(",") for d in args.dtypes.split(",") for k in args.docs.split(",")
    ]
    for name, dname, docs in grid:
        cfg = preset(name, max_seq_len=max(args.seq_len, 2048))
        dtype = dtypes[dname]
        ours_step, hf_step, n_ours, n_hf = make_steps(
            cfg, args.batch, args.seq_len, compile_ours=False, dtype=dtype, docs=docs
        )
        fns = {"ours": ours_step, "hf": hf_step}
        if not args.no_compile:
            fns["ours_compiled"] = make_steps(cfg, args.batch, args.seq_len, compile_ours=True, dtype=dtype, docs=docs)[
                0
            ]
        t = interleaved(fns, args.repeats, warmup=2)
        tokens = args.batch * args.seq_len
        row = {
            "preset": name,
            "dtype": dname,
            "docs/row": docs,
            "params_M": n_ours / 1e6,
            "hf_params_M": n_hf / 1e6,
            "tokens/step": tokens,
            "hf tok/s": tokens / t["hf"],
            "ours tok/s": tokens / t["ours"],
            "ratio": t["hf"] / t["ours"],
        }
        if "ours_compiled" in t:
            row["compiled tok/s"] = tokens / t["ours_compiled"]
            row["compiled ratio"] = t["hf"] / t["ours_compiled"]
        rows.append(row)
    cols = ["preset", "dtype", "docs/row", "params_M", "tokens/step", "hf tok/s", "ours tok/s", "ratio"] + (
        ["compiled tok/s", "compiled ratio"] if not args.no_compile else []
    )
    print(f"\ntraining step, {args.threads} threads, seq_len {args.seq_len}, batch {args.batch} (goal ratio >= {GOAL})")
    table = print_table(rows, cols)
    write_json(
        args.out,
        {
            "seq_len": args.seq_len,
            "batch": args.batch,
            "threads": args.threads,
            "goal_ratio": GOAL,
            "rows": rows,
            "table": table,
        },
    )
    plot(rows, args.out.replace(".json", ".png"))


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [
        ("hf tok/s", "HF Chameleon"),
        ("ours tok/s", "chameleon-lite"),
        ("compiled tok/s", "chameleon-lite (compiled)"),
    ]
    sides = [s for s in sides if s[0] in rows[0]]
    fig, ax = plt.subplots(figsize=(7, 4))
    w = 0.8 / len(sides)
    for i, (key, label) in enumerate(sides):
        ax.bar([j + i * w for j in range(len(rows))], [r[key] for r in rows], w, label=label)
    ax.set_xticks(
        [j + w * (len(sides) - 1) / 2 for j in range(len(rows))],
        [f"{r['preset']} {r['dtype']}\n{r['docs/row']} doc/row" for r in rows],
    )
    ax.set_ylabel("training tokens/s")
    ax.set_title("training step throughput (same shapes, dtype and threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
