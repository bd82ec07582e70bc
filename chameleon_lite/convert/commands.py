"""`chameleon-lite convert from-hf | to-hf`: checkpoints in the transformers Chameleon format in and out."""

from __future__ import annotations

import argparse

DTYPES = ("source", "float32", "bfloat16", "float16")


def _report(summary: dict, out: str) -> None:
    gib = summary.get("bytes", 0) / 2**30
    print(f"wrote {out} ({summary['tensors']} tensors{f', {gib:.2f} GiB read' if gib else ''})")


def _from_hf(args: argparse.Namespace) -> int:
    from chameleon_lite.convert.hf_chameleon import convert_from_hf, vq_loader

    summary = convert_from_hf(args.src, args.out, dtype=args.dtype, vqgan=vq_loader(args.vqgan))
    _report(summary, args.out)
    return 0


def _to_hf(args: argparse.Namespace) -> int:
    from chameleon_lite.convert.hf_chameleon import convert_to_hf

    summary = convert_to_hf(args.model, args.out, dtype=args.dtype)
    _report(summary, args.out)
    return 0


def register(cli) -> None:
    p = cli.command(
        "convert from-hf",
        "convert a transformers Chameleon folder (Chameleon, Anole, Lumina-mGPT: config.json, safetensors shards, "
        "tokenizer.json) into a model folder of this project, streaming tensor by tensor",
        _from_hf,
    )
    p.add_argument("src", metavar="HF_DIR", help="the transformers Chameleon folder (read only)")
    p.add_argument("--out", required=True, metavar="DIR", help="the model folder to write (new or empty)")
    p.add_argument(
        "--vqgan",
        metavar="CKPT",
        help="Chameleon's original image tokenizer (tokenizer/vqgan.ckpt, with vqgan.yaml beside it), for its "
        "decoder: transformers' checkpoints hold only the encoder, so without it pictures can be read, not drawn",
    )
    p.add_argument("--dtype", choices=DTYPES, default="source", help="dtype of the written weights (default: as read)")
    p = cli.command(
        "convert to-hf",
        "convert a model folder of this project into a folder transformers loads with "
        "ChameleonForConditionalGeneration.from_pretrained",
        _to_hf,
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="the exported model folder (its q/k norm must be Chameleon's: qk_norm_type=head_layernorm; the shipped "
        "demo model's is RMS and is refused)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the transformers folder to write (new or empty)")
    p.add_argument("--dtype", choices=DTYPES, default="source", help="dtype of the written weights (default: as read)")
