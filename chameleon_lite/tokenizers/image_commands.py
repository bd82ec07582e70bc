"""CLI commands of the image tokenizer (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse
import json

from chameleon_lite import argtypes as at


def _train_image(args: argparse.Namespace) -> int:
    from chameleon_lite.errors import UserError
    from chameleon_lite.tokenizers.image_train import TrainConfig, train

    overrides = at.parse_set(args.set)
    if args.quantizer:
        overrides["quantizer"] = args.quantizer
    if args.finetune_decoder and overrides:
        raise UserError("--finetune-decoder keeps that tokenizer's shape: --set and --quantizer do not apply")
    cfg = TrainConfig(
        preset=args.preset,
        model_overrides=overrides,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        disc_start=args.disc_start,
        grid_every=args.grid_every,
        ckpt_every=args.ckpt_every,
        max_images=args.max_images,
        seed=args.seed,
        threads=args.threads,
        finetune_decoder=args.finetune_decoder or "",
    )
    summary = train(args.manifest, args.out, cfg)
    last = summary["last"]
    print(
        f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s on {summary['images']} images "
        f"(last: psnr {last.get('psnr', float('nan')):.2f} dB, codebook usage {last.get('usage', 0):.2f}): {args.out}"
    )
    return 0


def _eval_image(args: argparse.Namespace) -> int:
    from chameleon_lite.files import check_json_output, check_png_output, write_json_result
    from chameleon_lite.tokenizers.image_train import evaluate

    if args.json:
        check_json_output(args.json)
    if args.grid:
        check_png_output(args.grid, "--grid")
    res = evaluate(args.tokenizer, args.manifest, n=args.n, grid_path=args.grid)
    print(json.dumps(res, indent=2))
    if args.json:
        write_json_result(args.json, res)
    return 0


def _recon(args: argparse.Namespace) -> int:
    from chameleon_lite.data.image_files import load_images
    from chameleon_lite.files import check_png_output
    from chameleon_lite.tokenizers.image import ImageTokenizer
    from chameleon_lite.tokenizers.image_train import save_grid

    check_png_output(args.out)
    tok = ImageTokenizer.load(args.tokenizer)

    rgb = load_images(args.images, tok.image_size, tok.cfg.max_pixels)
    save_grid(args.out, rgb, tok.decode(tok.encode_rgb(rgb)))
    print(f"{len(rgb)} image(s), {tok.tokens_per_image} tokens each: {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from chameleon_lite.tokenizers.image import ImageTokenizer

    tok = ImageTokenizer.load(args.tokenizer)
    for path, codes in zip(args.images, tok.encode(args.images)):
        print(path, " ".join(map(str, codes.reshape(-1).tolist())))
    return 0


def register(cli) -> None:
    p = cli.command(
        "tokenizer train-image",
        "train the image VQ tokenizer (image_vq.safetensors + image_vq.json); rerun with the same --out to resume",
        _train_image,
    )
    p.add_argument("--manifest", required=True, help="JSONL manifest whose image segments are the training data")
    p.add_argument(
        "--preset", default="tiny", help="model preset: tiny (48x48, 36 tokens), base, chameleon (default tiny)"
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder for the tokenizer; the run state goes to DIR/run/image "
        "(the text, image and audio tokenizers can share one DIR)",
    )
    p.add_argument("--quantizer", choices=("vq", "fsq"), help="override the preset's quantizer")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a model config field of the preset (JSON value), e.g. --set codebook_dim=8",
    )
    p.add_argument(
        "--finetune-decoder",
        metavar="TOKENIZER_DIR",
        help="train only the decoder of this trained tokenizer: its encoder and codebook (so every "
        "picture's codes, and a transformer trained on them) stay the same",
    )
    p.add_argument("--steps", type=at.positive_int, default=4000, help="optimiser steps (default 4000)")
    p.add_argument("--batch-size", type=at.int_range(1, 4096), default=32, help="pictures per step (default 32)")
    p.add_argument("--lr", type=at.positive_float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument(
        "--disc-start",
        type=at.nonnegative_int,
        default=0,
        help="step at which the patch discriminator starts (default 0 = off)",
    )
    p.add_argument(
        "--grid-every",
        type=at.positive_int,
        default=200,
        help="steps between PNG grids of originals vs reconstructions (default 200)",
    )
    p.add_argument(
        "--ckpt-every", type=at.positive_int, default=200, help="steps between resumable checkpoints (default 200)"
    )
    p.add_argument("--max-images", type=at.nonnegative_int, default=0, help="use at most this many images (0 = all)")
    p.add_argument("--seed", type=at.seed, default=0, help="seed of initialisation and batches (default 0)")
    p.add_argument("--threads", type=at.int_range(0, 4096), default=0, help="torch threads (0 = torch's default)")

    p = cli.command(
        "tokenizer eval-image", "PSNR, checker agreement and codebook usage of an image tokenizer", _eval_image
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding image_vq.json and its weights")
    p.add_argument("--manifest", required=True, help="held-out JSONL manifest")
    p.add_argument("--n", type=at.int_range(1, 1000000), default=2000, help="number of images (default 2000)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--grid", help="write a PNG grid of originals vs reconstructions here")

    p = cli.command(
        "tokenizer image-recon", "encode and decode pictures, write originals vs reconstructions as a PNG", _recon
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding image_vq.json and its weights")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")

    p = cli.command("tokenizer encode-image", "print the codes of pictures (raster order)", _encode)
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="folder holding image_vq.json and its weights")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
