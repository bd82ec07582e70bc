"""Generation speed: time to first token and decode tokens/s of the engine against Hugging Face's Chameleon.

    python bench/bench_generate.py [--quick] [--threads 2] [--batch 1 8] [--prompt-len 64] [--new-tokens 128]
                                   [--no-hf] [--out bench/results/generate.json]

Both sides get the same shape with random weights (hidden 512, 8 layers, 8 heads, SwiGLU 1408, vocab 16384 of which
8192 image codes), the same prompt length, the same number of new tokens, plain sampling (temperature 1, no
top-k/top-p), the same thread count, in one process. With ``--dtype fp32`` (the default) the engine runs twice, with
fp32 weights and with bf16 weights read by its weight-only decode kernel (fp32 activations, its default on CPUs), and
the baseline runs in fp32 (the ratio column's reference) and, on CPUs with native bf16 (or with ``--hf-bf16 on``), a
second time with the whole model in bf16; the last column compares against the faster of the baseline runs. Each side is timed as whole ``generate`` calls:
time to first token = a call that makes 1 token; decode rate = B * (N - 1) / (T(N tokens) - T(1 token)), medians
of repeated calls. Hugging Face masks image ids out of text logits; the engine restricts rows to text ids through
its state machine: both pay for a constraint. A third part times an image span (256 codes) with classifier-free
guidance (one unconditional row beside the conditional one), which the baseline cannot generate; it is timed by
the engine's own clock (first token, then the rate of the remaining ids).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, print_table, save_bar_chart, write_json  # noqa: E402

VOCAB, DIM, LAYERS, HEADS, FFN, IMAGE_CODES = 16384, 512, 8, 8, 1408, 8192
IMAGE_TOKENS = 256


class _Text:
    """Stand-in text tokenizer: the benchmark prompts with ids and never looks at the text."""

    def __init__(self, size: int) -> None:
        self.vocab_size = size

    def encode(self, text: str) -> list[int]:
        return []

    def encode_batch(self, texts):
        return [[] for _ in texts]

    def token_bytes(self, idx: int) -> bytes:
        return b"a"

    def decode(self, ids) -> str:
        return "a" * len(ids)


class _Image:
    tokens_per_image, grid, codebook_size = IMAGE_TOKENS, (16, 16), IMAGE_CODES

    def decode(self, codes):
        return np.zeros((1, 256, 256, 3), np.uint8)


def engine(dtype: torch.dtype):
    from chameleon_lite.generate import Generator
    from chameleon_lite.model.config import ModelConfig
    from chameleon_lite.model.transformer import build_model
    from chameleon_lite.tokenizers.loader import Tokenizers
    from chameleon_lite.vocab import UnifiedVocab

    probe = UnifiedVocab(text_size=1, image_codebook=IMAGE_CODES, audio_levels=0, audio_codebook=0)
    vocab = UnifiedVocab(
        text_size=VOCAB - IMAGE_CODES - probe.text_offset, image_codebook=IMAGE_CODES, audio_levels=0, audio_codebook=0
    )
    cfg = ModelConfig(
        vocab_size=vocab.size,
        vocab_hash=vocab.hash,
        dim=DIM,
        n_layers=LAYERS,
        n_heads=HEADS,
        n_kv_heads=HEADS,
        ffn_dim=FFN,
        max_seq_len=4096,
    )
    gen = Generator(build_model(cfg, seed=0), Tokenizers(vocab=vocab, text=_Text(vocab.text_size), image=_Image()))
    return gen, vocab


def hf_model():
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    def name(i: int) -> str:  # the BPE names Chameleon gives its image codes
        return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(i)) + "Z"

    vocab_map = {"<image>": 8711, **{name(i): VOCAB - IMAGE_CODES + i for i in range(IMAGE_CODES)}}
    cfg = ChameleonConfig(
        vocab_size=VOCAB,
        hidden_size=DIM,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=4096,
        vocabulary_map=vocab_map,
    )
    torch.manual_seed(0)
    return ChameleonForConditionalGeneration(cfg).eval()


def time_pair(call, n_new: int, batch: int, repeats: int) -> dict:
    t1 = median_time(lambda: call(1), repeats=repeats, warmup=1)
    tn = median_time(lambda: call(n_new), repeats=repeats, warmup=1)
    return {"ttft_ms": 1e3 * t1, "total_ms": 1e3 * tn, "decode_tok_s": batch * (n_new - 1) / max(tn - t1, 1e-9)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face baseline")
    ap.add_argument(
        "--hf-bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="also run the baseline with the whole model in bf16 (auto: only on CPUs with native bf16, "
        "elsewhere a bf16 GEMM runs far below fp32 and the run would take tens of minutes)",
    )
    ap.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "generate.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from chameleon_lite.generate import GenerationConfig, Prompt, SamplingSettings

    n_new = 16 if args.quick else args.new_tokens
    repeats = 2 if args.quick else 5
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    gen, vocab = engine(dtype)
    hf = None if args.no_hf else hf_model().to(dtype)
    rng = np.random.default_rng(0)
    from chameleon_lite.hardware import cpu_has_fast_bf16

    want16 = args.hf_bf16 == "on" or (args.hf_bf16 == "auto" and cpu_has_fast_bf16())
    hf16 = None if args.no_hf or args.dtype == "bf16" or not want16 else copy.deepcopy(hf).to(torch.bfloat16)
    if not args.no_hf and args.dtype == "fp32" and hf16 is None:
        print("baseline in bf16 skipped: this CPU has no native bf16 (--hf-bf16 on runs it anyway)")
    rows = []
    for B in args.batch:
        prompt = rng.integers(vocab.text_offset, vocab.image_offset, (B, args.prompt_len))
        prompts = [Prompt(ids=p.tolist()) for p in prompt]
        plain = SamplingSettings(temperature=1.0)
        group = []
        # fp32 weights first: switching to bf16 weights rounds the model's weights for good
        for weights in ("fp32", "bf16") if args.dtype == "fp32" else ("bf16",):

            def ours(n: int, weights: str = weights) -> None:
                gen.generate(
                    prompts,
                    GenerationConfig(
                        max_new_tokens=n,
                        min_new_tokens=n,
                        text=plain,
                        allow_image=False,
                        allow_audio=False,
                        dtype=args.dtype,
                        weights=weights,
                    ),
                )

            label = "chameleon-lite engine" + (f", {weights} weights" if args.dtype == "fp32" else "")
            group.append(
                {
                    "impl": label,
                    "batch": B,
                    "dtype": args.dtype,
                    "weights": weights,
                    **time_pair(ours, n_new, B, repeats),
                }
            )
        ids = torch.from_numpy(prompt)
        for model, dt in ((hf, args.dtype), (hf16, "bf16")):
            if model is None:
                continue

            def theirs(n: int, model=model) -> None:
                with torch.inference_mode():
                    model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=n,
                        min_new_tokens=n,
                        do_sample=True,
                        top_k=0,
                        top_p=1.0,
                        temperature=1.0,
                        pad_token_id=0,
                    )

            group.append(
                {
                    "impl": "HF transformers Chameleon" + (f", {dt}" if hf16 is not None else ""),
                    "batch": B,
                    "dtype": dt,
                    "weights": dt,
                    **time_pair(theirs, n_new, B, repeats),
                }
            )
        base = next((r for r in group if r["impl"].startswith("HF") and r["dtype"] == args.dtype), None)
        best = max((r for r in group if r["impl"].startswith("HF")), key=lambda r: r["decode_tok_s"], default=None)
        for r in group:
            if base is not None:
                r["decode_ratio_vs_hf"] = r["decode_tok_s"] / base["decode_tok_s"]
                r["ttft_ratio_vs_hf"] = base["ttft_ms"] / r["ttft_ms"]
                r["decode_ratio_vs_best_hf"] = r["decode_tok_s"] / best["decode_tok_s"]
        rows += group
    # an image span with classifier-free guidance: 256 codes, conditional + unconditional row
    prompt = [Prompt(ids=rng.integers(vocab.text_offset, vocab.image_offset, args.prompt_len).tolist(), then="image")]
    n_img = IMAGE_TOKENS  # a span must be completed: the engine refuses a budget it cannot fit

    img_cfg = GenerationConfig(
        max_new_tokens=n_img + 1, image=SamplingSettings(temperature=1.0, cfg_scale=3.0), dtype=args.dtype
    )
    gen.generate(prompt, img_cfg)  # warm-up
    runs = [gen.generate(prompt, img_cfg)[0].timings for _ in range(repeats)]
    rows.append(
        {
            "impl": "chameleon-lite engine, image span + CFG",
            "batch": 1,
            "ttft_ms": 1e3 * float(np.median([t["time_to_first_token_s"] for t in runs])),
            "decode_tok_s": float(np.median([t["decode_tokens_per_s"] for t in runs])),
        }
    )
    cols = [
        "impl",
        "batch",
        "ttft_ms",
        "decode_tok_s",
        "decode_ratio_vs_hf",
        "ttft_ratio_vs_hf",
        "decode_ratio_vs_best_hf",
    ]
    print(
        f"prompt {args.prompt_len} tokens, {n_new} new tokens (image span {n_img}), {args.dtype}, {args.threads} threads"
    )
    print_table(rows, cols)
    write_json(
        args.out,
        {
            "quick": args.quick,
            "prompt_len": args.prompt_len,
            "new_tokens": n_new,
            "dtype": args.dtype,
            "shape": {"vocab": VOCAB, "dim": DIM, "layers": LAYERS, "heads": HEADS, "ffn": FFN},
            "rows": rows,
        },
    )
    plot(rows, os.path.splitext(args.out)[0] + ".png")
    print(f"wrote {args.out}")
    return 0


def plot(rows: list[dict], path: str) -> None:
    save_bar_chart(
        path,
        [f"{r['impl']}\nB={r['batch']}" for r in rows],
        [r["decode_tok_s"] for r in rows],
        "decode tokens / s",
        f"generation ({torch.get_num_threads()} threads)",
        horizontal=True,
        colors=["tab:blue" if "engine" in r["impl"] else "tab:gray" for r in rows],
    )


if __name__ == "__main__":
    sys.exit(main())
