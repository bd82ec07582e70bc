"""Tokenizer throughput: encode/decode items per second per modality, each against its baseline in the same run.

    python bench/bench_tokenizers.py [--modality image|audio|all] [--quick] [--threads 2]
                                     [--image-tokenizer DIR] [--out bench/results/tokenizers.json]

Each modality registers a function in BENCHES that returns table rows (dicts with at least ``modality``,
``variant``, ``op``, ``batch``, ``items_per_s``, ``ratio_vs_baseline``); the driver prints one table, writes JSON
and a PNG bar chart.

Image: the tiny-preset VQ tokenizer at batch 64 on uint8 pictures already at its size (48x48) (file decoding excluded;
it is the same for any tokenizer). Baseline: the same network in fp32; variant: bf16 autocast, chosen at run
time only on CPUs with native bf16 (what ``ImageTokenizer`` itself does). Throughput does not depend on the
weights, so an untrained tiny model is used when no trained folder is given or found.

Audio: the tiny-preset codec (16 kHz, 4 levels) on one 30-s clip of procedural notes (one chunk, so the number is
the network's speed, not the chunking's), fp32. ``x_realtime`` says how many seconds of audio one second of wall
time encodes or decodes; the baseline is the same network in plain PyTorch (eager Snake activations, the
quantizer library's own forward), timed in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import median_time, print_table, save_bar_chart, write_json  # noqa: E402


def bench_image(args: argparse.Namespace) -> list[dict]:
    from chameleon_lite.tokenizers.image import ImageTokenizer, ImageVQModel, autocast_dtype, preset

    folder = args.image_tokenizer
    trained = bool(folder) and os.path.isfile(os.path.join(folder, "image_vq.json"))
    batch = 64
    repeats = 3 if args.quick else 10
    rng = np.random.default_rng(0)
    rows = []
    variants: list[tuple[str, torch.dtype | None]] = [("fp32", None)]
    if autocast_dtype() is not None:
        variants.append(("bf16 autocast", autocast_dtype()))
    base: dict[str, float] = {}
    for name, amp in variants:
        if trained:
            tok = ImageTokenizer.load(folder, autocast=amp, batch_size=batch)
        else:
            tok = ImageTokenizer(ImageVQModel(preset("tiny")).eval(), autocast=amp, batch_size=batch)
            with torch.no_grad():  # a training-mode pass initialises the codebook (k-means) like a real model
                tok.model.train()(torch.rand(batch, 3, tok.image_size, tok.image_size) * 2 - 1)
            tok.model.eval()
        rgb_in = rng.integers(0, 256, (batch, tok.image_size, tok.image_size, 3), dtype=np.uint8)
        codes = tok.encode_rgb(rgb_in)
        for op, fn in (("encode", lambda: tok.encode_rgb(rgb_in)), ("decode", lambda: tok.decode(codes))):
            t = median_time(fn, repeats=repeats, warmup=2)
            ips = batch / t
            base.setdefault(op, ips)
            rows.append(
                {
                    "modality": "image",
                    "variant": name,
                    "op": op,
                    "batch": batch,
                    "ms_per_batch": 1e3 * t,
                    "items_per_s": ips,
                    "ratio_vs_baseline": ips / base[op],
                    "weights": folder if trained else "untrained tiny",
                }
            )
    return rows


def bench_audio(args: argparse.Namespace) -> list[dict]:
    from chameleon_lite.data.procedural import AudioSpec, synthesize_audio
    from chameleon_lite.tokenizers.audio import AudioCodecModel, AudioTokenizer, preset

    folder = args.audio_tokenizer
    trained = bool(folder) and os.path.isfile(os.path.join(folder, "audio_codec.json"))
    if trained:
        tok = AudioTokenizer.load(folder)
    else:
        torch.manual_seed(0)
        model = AudioCodecModel(preset("tiny")).train()
        with torch.no_grad():  # a training-mode pass initialises the codebooks (k-means) like a real model
            model(torch.randn(40, 1, 320 * 64) * 0.3)  # 2560 vectors: no duplicated codes
        tok = AudioTokenizer(model)
    sr, seconds = tok.sample_rate, 30.0
    notes = ("C4", "E4", "G4", "C5") * 8
    clip = synthesize_audio(AudioSpec(notes, "square", (0.85,) * len(notes)), sr)[: int(seconds * sr)]
    clip = np.pad(clip, (0, max(0, int(seconds * sr) - len(clip)))).astype(np.float32)
    repeats = 3 if args.quick else 7
    codes = tok.encode_waveform(clip)
    rows = []
    times: dict[tuple[str, str], float] = {}
    # "reference": the same network in plain PyTorch (eager Snake, the quantizer library's forward); "fused": the
    # C++ Snake op and the one-product-per-level code search. Both encode to the same codes.
    for variant in ("reference", "fused"):
        old = os.environ.get("CHAMELEON_LITE_CODEC_OPS")
        os.environ["CHAMELEON_LITE_CODEC_OPS"] = variant
        try:
            same = float((tok.encode_waveform(clip) == codes).float().mean())
            if same < 0.999:  # rounding may flip a near-tie between two codes, never more
                raise SystemExit(f"audio: the reference and fused paths agree on only {same:.2%} of the codes")
            for op, fn in (("encode", lambda: tok.encode_waveform(clip)), ("decode", lambda: tok.decode(codes))):
                times[variant, op] = median_time(fn, repeats=repeats, warmup=1)
        finally:
            if old is None:
                del os.environ["CHAMELEON_LITE_CODEC_OPS"]
            else:
                os.environ["CHAMELEON_LITE_CODEC_OPS"] = old
    for (variant, op), t in times.items():
        rows.append(
            {
                "modality": "audio",
                "variant": variant,
                "op": op,
                "batch": f"1 x {seconds:.0f} s",
                "ms_per_batch": 1e3 * t,
                "items_per_s": 1.0 / t,
                "x_realtime": seconds / t,
                "ratio_vs_baseline": times["reference", op] / t,
                "baseline": "reference",
                "weights": folder if trained else "untrained tiny",
            }
        )
    return rows


BENCHES: dict[str, Callable[[argparse.Namespace], list[dict]]] = {"image": bench_image, "audio": bench_audio}


def plot(rows: list[dict], path: str) -> None:
    save_bar_chart(
        path,
        [f"{r['modality']} {r['op']}\n{r['variant']}" for r in rows],
        [r["items_per_s"] for r in rows],
        "items / s",
        f"tokenizer throughput ({torch.get_num_threads()} threads)",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modality", default="all", choices=[*BENCHES, "all"])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--image-tokenizer",
        default=None,
        metavar="DIR",
        help="a trained image tokenizer folder (default: an untrained tiny one; speed does not depend on weights)",
    )
    ap.add_argument(
        "--audio-tokenizer",
        default=None,
        metavar="DIR",
        help="a trained audio codec folder (default: an untrained tiny one)",
    )
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/tokenizers_<modality>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = list(BENCHES) if args.modality == "all" else [args.modality]
    missing = [n for n in names if n not in BENCHES]
    if missing:
        print(f"no benchmark registered for {missing}; available: {sorted(BENCHES)}", file=sys.stderr)
        return 1
    rows = [r for n in names for r in BENCHES[n](args)]
    print_table(
        rows,
        [
            "modality",
            "variant",
            "op",
            "batch",
            "ms_per_batch",
            "items_per_s",
            "x_realtime",
            "ratio_vs_baseline",
            "baseline",
        ],
    )
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"tokenizers_{args.modality}.json"
    )
    write_json(out, {"quick": args.quick, "rows": rows})
    plot(rows, os.path.splitext(out)[0] + ".png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
