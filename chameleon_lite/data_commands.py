"""CLI commands of the data layer: procedural corpus, importers of a user's data, validate, tokenize (registered by
chameleon_lite.cli)."""

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
        unconditional_rate=args.unconditional_rate,
        exclude_reserved=args.exclude_reserved,
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


def _run_import(args: argparse.Namespace, command: str, made: tuple, params: dict) -> int:
    """Write what an importer made (its count, its items) into --out and print the summary."""
    from chameleon_lite.data.importers import write_import

    total, items = made
    summary = write_import(
        args.out,
        items,
        command=f"chameleon-lite data {command}",
        params={**params, "order": args.order, "limit": args.limit},
        total=total,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
    )
    print(summary.describe())
    print(f"next: chameleon-lite data validate {summary.manifest}")
    return 0


def _import_mnist(args: argparse.Namespace) -> int:
    from chameleon_lite.data.importers import mnist_items

    names = [n.strip() for n in args.label_names.split(",")] if args.label_names else None
    made = mnist_items(args.images, args.labels, args.text, names, args.order, args.limit)
    params = {"images": os.path.abspath(args.images), "labels": os.path.abspath(args.labels), "text": args.text}
    return _run_import(args, "import-mnist", made, {**params, "label_names": names})


def _import_labelled_audio(args: argparse.Namespace) -> int:
    from chameleon_lite.data.importers import labelled_audio_items

    made = labelled_audio_items(args.folder, args.pattern, args.text, args.order, args.skip_unmatched, args.limit)
    params = {"folder": os.path.abspath(args.folder), "pattern": args.pattern, "text": args.text}
    return _run_import(args, "import-labelled-audio", made, params)


def _import_captions(args: argparse.Namespace) -> int:
    from chameleon_lite.data.importers import caption_items

    made = caption_items(args.captions, args.media, args.file_column, args.text_column, args.order, args.limit)
    params = {"captions": os.path.abspath(args.captions), "media": args.media and os.path.abspath(args.media)}
    return _run_import(args, "import-captions", made, params)


def _import_webdataset(args: argparse.Namespace) -> int:
    from chameleon_lite.data.importers import webdataset_items

    made = webdataset_items(args.shards, args.text_key, args.order, not args.allow_no_text, args.limit)
    params = {"shards": args.shards, "text_key": args.text_key, "allow_no_text": args.allow_no_text}
    return _run_import(args, "import-webdataset", made, params)


def _import_flags(p: argparse.ArgumentParser) -> None:
    """The flags every importer has."""
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder (manifest.jsonl, import.json, images/ or audio/ when media are written); new, empty or "
        "an earlier import, which is replaced",
    )
    p.add_argument(
        "--order",
        choices=("text-first", "media-first"),
        default="text-first",
        help="text-first: the text, then the media (learn to make the media); media-first: the media as an input "
        "span, then the text (learn to caption or transcribe) (default text-first)",
    )
    p.add_argument("--limit", type=at.positive_int, help="import only the first N documents (default: all)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out items whose media cannot be read (counted and reported) instead of stopping at the first",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _register_importers(cli) -> None:
    from chameleon_lite.data.importers import FSDD_PATTERN, LABELLED_AUDIO_TEXT, MNIST_TEXT

    p = cli.command(
        "data import-mnist",
        "import MNIST-style IDX files (images + labels, gzip or raw) as PNG pictures with captions",
        _import_mnist,
    )
    p.add_argument("images", help="IDX images file, e.g. t10k-images-idx3-ubyte.gz (uint8 N x H x W)")
    p.add_argument("labels", help="IDX labels file, e.g. t10k-labels-idx1-ubyte.gz (N integers)")
    p.add_argument(
        "--text",
        default=MNIST_TEXT,
        help=f"caption template; fields {{label}}, {{word}} (seven), {{index}}; '' for none (default {MNIST_TEXT!r})",
    )
    p.add_argument(
        "--label-names",
        metavar="NAME,...",
        help="{word} of each label in order, e.g. for Fashion-MNIST t-shirt,trouser,... (default: zero..nine)",
    )
    _import_flags(p)

    p = cli.command(
        "data import-labelled-audio",
        "import a folder of clips whose label is in the file name (e.g. FSDD: 7_george_12.wav)",
        _import_labelled_audio,
    )
    p.add_argument("folder", help="folder of audio files (wav, flac, ogg, mp3, ...; other files are ignored)")
    p.add_argument(
        "--pattern",
        default=FSDD_PATTERN,
        help="file name (path under FOLDER) with {fields}, {label} required, or a regex with (?P<label>...); "
        f"fields go into meta (default {FSDD_PATTERN!r}, the Free Spoken Digit Dataset)",
    )
    p.add_argument(
        "--text",
        default=LABELLED_AUDIO_TEXT,
        help="caption template; fields of --pattern and {word} (seven for 7); '' for none "
        f"(default {LABELLED_AUDIO_TEXT!r})",
    )
    p.add_argument(
        "--skip-unmatched", action="store_true", help="leave out audio files the pattern does not match (else an error)"
    )
    _import_flags(p)

    p = cli.command(
        "data import-captions",
        "import pictures or clips listed with their captions or transcripts in a JSONL, CSV or TSV file",
        _import_captions,
    )
    p.add_argument("captions", help=".jsonl (an object per line), .csv or .tsv (a header row) of file + text")
    p.add_argument(
        "--media", metavar="DIR", help="folder the file paths are relative to (default: the captions file's folder)"
    )
    p.add_argument(
        "--file-column",
        help="column of the file paths (default: the first of file, path, filename, image, audio, clip)",
    )
    p.add_argument(
        "--text-column",
        help="column of the texts (default: the first of text, caption, transcript, transcription, sentence)",
    )
    _import_flags(p)

    p = cli.command(
        "data import-webdataset",
        "import WebDataset .tar shards (image-text or audio-text samples); their media are written out as files",
        _import_webdataset,
    )
    p.add_argument(
        "shards", nargs="+", help="tar files, folders of them, or a brace pattern such as 'data/{000000..000009}.tar'"
    )
    p.add_argument(
        "--text-key",
        metavar="EXT",
        help="part holding the text (default: txt, text, caption, transcript or .json's caption)",
    )
    p.add_argument("--allow-no-text", action="store_true", help="import samples without text as media-only documents")
    _import_flags(p)


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
        help="relative weights of the document forms (default: all 1), e.g. caption_to_image=2,instruction=0; "
        "the conversation forms chat_media, chat_caption, chat_followup, chat_out_of_scope default to 0",
    )
    p.add_argument(
        "--unconditional-rate",
        type=at.probability,
        default=0.0,
        help="fraction of one-item chat_media documents whose request is left out (an empty user turn): the "
        "unconditional spans classifier-free guidance needs (default 0)",
    )
    p.add_argument(
        "--exclude-reserved",
        action="store_true",
        help="keep the attribute combinations reserved for evaluation out of the template forms too (the "
        "conversation forms never use them); a corpus for a model the held-out eval will judge needs it",
    )
    p.add_argument(
        "--workers",
        type=at.int_range(1, 256),
        default=1,
        help="worker processes; the corpus is the same for any number (default 1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    _register_importers(cli)

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
