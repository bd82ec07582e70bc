"""CLI commands of the image tokenizer (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse
import json

from chameleon_lite import argtypes as at


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
    from chameleon_lite.tokenizers.image_train import save_grid
    from chameleon_lite.tokenizers.loader import load_image_tokenizer

    check_png_output(args.out)
    tok = load_image_tokenizer(args.tokenizer)

    rgb = load_images(args.images, tok.image_size, tok.cfg.max_pixels)
    save_grid(args.out, rgb, tok.decode(tok.encode_rgb(rgb)))
    print(f"{len(rgb)} image(s), {tok.tokens_per_image} tokens each: {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from chameleon_lite.tokenizers.loader import load_image_tokenizer

    tok = load_image_tokenizer(args.tokenizer)
    for path, codes in zip(args.images, tok.encode(args.images)):
        print(path, " ".join(map(str, codes.reshape(-1).tolist())))
    return 0


def register(cli) -> None:
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
