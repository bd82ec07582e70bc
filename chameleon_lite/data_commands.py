"""CLI commands of the data layer: procedural corpus, validate, tokenize (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse
import os

from chameleon_lite import argtypes as at
from chameleon_lite.errors import ConfigError


def parse_task_weights(text: str) -> dict[str, float]:
    """``"caption_to_image=2,interleaved=0.5"`` -> weights of those tasks, every other task at 1 (names checked by
    :class:`~chameleon_lite.data.procedural.CorpusConfig`)."""
    from chameleon_lite.data.procedural import TASKS

    weights = {t: 1.0 for t in TASKS}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = item.partition("=")
        try:
            if not eq:
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--task-weights: expected TASK=WEIGHT items separated by commas, got {item!r}") from None
    return weights


def _procedural(args: argparse.Namespace) -> int:
    from chameleon_lite.data.procedural import CorpusConfig, write_corpus

    cfg = CorpusConfig(
        image_size=args.image_size,
        sample_rate=args.sample_rate,
        task_weights=parse_task_weights(args.task_weights or ""),
    )
    path = write_corpus(args.out, n=args.n, seed=args.seed, config=cfg, progress=not args.quiet, workers=args.workers)
    print(f"wrote {args.n} documents: {path}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from chameleon_lite.data.manifest import validate_manifest

    report = validate_manifest(args.manifest, check_media=not args.no_media, progress=not args.quiet)
    print(report.summary())
    return 0 if report.ok else 1


def _tokenize(args: argparse.Namespace) -> int:
    from chameleon_lite.files import SHARDS, check_output_dir
    from chameleon_lite.pretokenize import pretokenize

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"{args.out}: exists and is not a folder; give --out a folder")
    for split in ("train", "val"):
        check_output_dir(os.path.join(args.out, split), SHARDS)

    summary = pretokenize(
        args.manifest,
        args.tokenizers,
        args.out,
        workers=args.workers,
        val_fraction=args.val_fraction,
        seed=args.seed,
        shard_tokens=args.shard_tokens,
        on_error="skip" if args.skip_bad else "raise",
        progress=not args.quiet,
    )
    for split in ("train", "val"):
        if split in summary:
            s = summary[split]
            per = ", ".join(f"{k} {v}" for k, v in s["tokens_per_modality"].items())
            print(f"{split}: {s['documents']} documents, {s['tokens']} tokens ({per}) -> {args.out}/{split}")
    if summary["skipped"]:
        print(f"skipped {summary['skipped']} unreadable documents, e.g.:")
        for line in summary["skipped_examples"]:
            print(f"  {line}")
    print(f"took {summary['seconds']:.1f} s")
    return 0


def register(cli) -> None:
    p = cli.command(
        "data procedural", "write the seeded procedural corpus (PNG + WAV files and a JSONL manifest)", _procedural
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (manifest.jsonl, images/, audio/)")
    p.add_argument("--n", type=at.positive_int, default=1000, help="number of documents (default 1000)")
    p.add_argument("--seed", type=at.seed, default=0, help="random seed (same seed, same corpus)")
    p.add_argument(
        "--image-size",
        type=at.int_range(8, 4096),
        default=48,
        help="image side in pixels (default 48: each grid cell is 2x2 patches of the image tokenizer)",
    )
    p.add_argument(
        "--sample-rate", type=at.int_range(4000, 192000), default=16000, help="audio sample rate in Hz (default 16000)"
    )
    p.add_argument(
        "--task-weights",
        metavar="TASK=W,...",
        help="relative weights of the document forms (default: all 1), e.g. caption_to_image=2,instruction=0",
    )
    p.add_argument(
        "--workers",
        type=at.int_range(1, 256),
        default=1,
        help="worker processes; the corpus is the same for any number (default 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = cli.command(
        "data validate", "check a JSONL manifest: JSON, segment keys, files present and decodable", _validate
    )
    p.add_argument("manifest", help="path to the manifest (.jsonl)")
    p.add_argument("--no-media", action="store_true", help="only check that files exist, do not decode them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = cli.command("data tokenize", "pretokenize a manifest into shards (OUT/train, OUT/val) for training", _tokenize)
    p.add_argument("--manifest", required=True, help="JSONL manifest")
    p.add_argument(
        "--tokenizers", required=True, metavar="DIR", help="folder with tokenizer.json, image_vq.*, audio_codec.*"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--val-fraction",
        type=at.float_range(0.0, 0.5),
        default=0.0,
        help="fraction of documents held out for validation (default 0)",
    )
    p.add_argument("--seed", type=at.seed, default=0, help="seed of the validation split (default 0)")
    p.add_argument("--workers", type=at.int_range(1, 256), default=1, help="worker processes (default 1)")
    p.add_argument(
        "--shard-tokens", type=at.int_range(1024), default=1 << 26, help="tokens per shard file (default 2^26)"
    )
    p.add_argument("--skip-bad", action="store_true", help="leave out documents whose media cannot be read (reported)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
