"""CLI commands of the data layer (registered by chameleon_lite.cli)."""
from __future__ import annotations

import argparse


def _procedural(args: argparse.Namespace) -> int:
    from chameleon_lite.data.procedural import CorpusConfig, write_corpus

    cfg = CorpusConfig(image_size=args.image_size, sample_rate=args.sample_rate)
    path = write_corpus(args.out, n=args.n, seed=args.seed, config=cfg, progress=not args.quiet)
    print(f"wrote {args.n} documents: {path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from chameleon_lite.data.manifest import validate_manifest

    report = validate_manifest(args.manifest, check_media=not args.no_media, progress=not args.quiet)
    print(report.summary())
    return 0 if report.ok else 1


def register(cli) -> None:
    p = cli.command("data procedural", "write the seeded procedural corpus (PNG + WAV files and a JSONL manifest)", _procedural)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest.jsonl, images/, audio/)")
    p.add_argument("--n", type=int, default=1000, help="number of documents (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same corpus)")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--sample-rate", type=int, default=16000, help="audio sample rate in Hz (default 16000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = cli.command("data validate", "check a JSONL manifest: JSON, segment keys, files present and decodable", _validate)
    p.add_argument("manifest", help="path to the manifest (.jsonl)")
    p.add_argument("--no-media", action="store_true", help="only check that files exist, do not decode them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
