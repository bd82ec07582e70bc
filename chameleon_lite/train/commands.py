"""CLI commands of the training layer: the image and audio tokenizer trainers, plot, export (registered by
chameleon_lite.cli).

The tokenizer trainers take overrides as pretraining does (train/pretrain.py): ``--key=value`` for every field of
their training config, ``--model.key=value`` for every field of the tokenizer's config (the preset's value unless
set). Both are parsed by chameleon_lite.configs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chameleon_lite import argtypes as at
from chameleon_lite.configs import flag_values, parse_overrides
from chameleon_lite.errors import UserError

OVERRIDES_HELP = (
    "Any other --key=value sets a training option (e.g. --warmup=100), --model.key=value a field of the preset's "
    "{what} config (e.g. {example}), as train/pretrain.py reads them."
)


def accept_overrides(p: argparse.ArgumentParser, what: str, example: str) -> None:
    """Let the command take ``--key=value`` items it has no flag for; they land in ``args.overrides`` (read by
    chameleon_lite.configs.parse_overrides, so a bad key is one line naming the known ones)."""
    parse_known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, rest = parse_known(args, namespace)
        ns.overrides = [a for a in rest if a.startswith("--") and "=" in a]
        return ns, [a for a in rest if a not in ns.overrides]

    p.parse_known_args = parse_known_args
    p.epilog = OVERRIDES_HELP.format(what=what, example=example)


def _overrides(args: argparse.Namespace, cfg_cls: type, model_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training options, model fields) the command line sets: ``--key=value`` / ``--model.key=value`` items, after
    the deprecated ``--set KEY=VALUE`` (still read, with a warning)."""
    old = at.parse_set(args.set)
    if old:
        print("warning: --set KEY=VALUE is deprecated; write --model.KEY=VALUE", file=sys.stderr)
    parsed = parse_overrides(getattr(args, "overrides", []), cfg_cls, {"model": model_cls})
    return parsed, {**old, **parsed.pop("model", {})}


def _tokenizer_config(args: argparse.Namespace, cfg_cls: type, options: dict[str, Any], overrides: dict[str, Any]):
    """The run's config: the command's flags, then its --key=value options and model overrides."""
    values = {**flag_values(args, cfg_cls), **options, "model_overrides": overrides}
    return cfg_cls.from_dict({**values, "finetune_decoder": args.finetune_decoder or ""}, source="command line")


def _train_image(args: argparse.Namespace) -> int:
    from chameleon_lite.tokenizers.image import ImageVQConfig
    from chameleon_lite.tokenizers.image_train import ImageVQTrainConfig
    from chameleon_lite.train.tokenizer_loop import train_image_vq

    options, overrides = _overrides(args, ImageVQTrainConfig, ImageVQConfig)
    if args.quantizer:
        overrides["quantizer"] = args.quantizer
    if args.finetune_decoder and overrides:
        raise UserError("--finetune-decoder keeps that tokenizer's shape: --model.KEY and --quantizer do not apply")
    cfg = _tokenizer_config(args, ImageVQTrainConfig, options, overrides)
    summary = train_image_vq(args.manifest, args.out, cfg)
    last = summary["last"]
    print(
        f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s on {summary['images']} images "
        f"(last: psnr {last.get('psnr', float('nan')):.2f} dB, codebook usage {last.get('usage', 0):.2f}): {args.out}"
    )
    return 0


def _train_audio(args: argparse.Namespace) -> int:
    from chameleon_lite.tokenizers.audio import AudioCodecConfig
    from chameleon_lite.tokenizers.audio_train import AudioCodecTrainConfig
    from chameleon_lite.train.tokenizer_loop import train_audio_codec

    cfg = _tokenizer_config(args, AudioCodecTrainConfig, *_overrides(args, AudioCodecTrainConfig, AudioCodecConfig))
    summary = train_audio_codec(args.manifest, args.out, cfg)
    last = summary["last"]
    print(
        f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s on {summary['clips']} clips "
        f"(last: mel {last.get('mel', float('nan')):.3f}, SI-SNR {last.get('si_snr_db', float('nan')):.1f} dB): {args.out}"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from chameleon_lite.train.plotting import plot_run

    print(plot_run(args.run, out=args.out, title=args.title))
    return 0


def _export(args: argparse.Namespace) -> int:
    from chameleon_lite.train.export import export_run

    out = export_run(args.run, args.out, tokenizers_dir=args.tokenizers, checkpoint=args.checkpoint, fmt=args.format)
    print(f"exported {args.run} -> {out}")
    return 0


def _io_flags(p: argparse.ArgumentParser, kind: str, what: str) -> None:
    p.add_argument("--manifest", required=True, help=f"JSONL manifest whose {kind} segments are the training data")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"folder for the {what}; the run state goes to DIR/run/{kind} "
        "(the text, image and audio tokenizers can share one DIR)",
    )


def _schedule_flags(p: argparse.ArgumentParser, steps: int, batch: int, lr: float, unit: str, disc: str) -> None:
    """Steps, batch, peak learning rate and the discriminator's start: the same flags, each trainer's defaults."""
    p.add_argument("--steps", type=at.positive_int, default=steps, help=f"optimiser steps (default {steps})")
    p.add_argument("--batch-size", type=at.int_range(1, 4096), default=batch, help=f"{unit} per step (default {batch})")
    p.add_argument("--lr", type=at.positive_float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument(
        "--disc-start", type=at.nonnegative_int, default=0,
        help=f"step at which the {disc} discriminator starts (default 0 = off)",
    )  # fmt: skip


def _more_flags(p: argparse.ArgumentParser, kind: str) -> None:
    """The flags both trainers share."""
    p.add_argument("--seed", type=at.seed, default=0, help="seed of initialisation and batches (default 0)")
    p.add_argument("--threads", type=at.int_range(0, 4096), default=0, help="torch threads (0 = torch's default)")
    p.add_argument(
        "--ckpt-every", type=at.positive_int, default=250 if kind == "audio" else 200,
        help=f"steps between resumable checkpoints (default {250 if kind == 'audio' else 200})",
    )  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="deprecated: the same as --model.KEY=VALUE")


def _register_train_image(cli) -> None:
    p = cli.command(
        "tokenizer train-image",
        "train the image VQ tokenizer (image_vq.safetensors + image_vq.json); rerun with the same --out to resume",
        _train_image,
    )
    _io_flags(p, "image", "tokenizer")
    p.add_argument(
        "--preset",
        default="tiny",
        help="model preset: tiny (48x48, 36 tokens), digits (28x28 grayscale, 49 tokens), base, chameleon (default tiny)",
    )
    p.add_argument("--quantizer", choices=("vq", "fsq"), help="override the preset's quantizer")
    p.add_argument(
        "--finetune-decoder",
        metavar="TOKENIZER_DIR",
        help="train only the decoder of this trained tokenizer: its encoder and codebook (so every "
        "picture's codes, and a transformer trained on them) stay the same",
    )
    _schedule_flags(p, steps=4000, batch=32, lr=2e-3, unit="pictures", disc="patch")
    p.add_argument(
        "--grid-every", type=at.positive_int, default=200,
        help="steps between PNG grids of originals vs reconstructions (default 200)",
    )  # fmt: skip
    p.add_argument("--max-images", type=at.nonnegative_int, default=0, help="use at most this many images (0 = all)")
    _more_flags(p, "image")
    accept_overrides(p, "tokenizer", "--model.codebook_dim=8")


def _register_train_audio(cli) -> None:
    p = cli.command(
        "tokenizer train-audio",
        "train the audio codec (audio_codec.safetensors + audio_codec.json); rerun with the same --out to resume",
        _train_audio,
    )
    _io_flags(p, "audio", "codec")
    p.add_argument(
        "--preset", default="tiny",
        help="codec preset: tiny (16 kHz, 4 x 1024), speech (8 kHz, 4 x 512), base, large (24 kHz, 8 levels) "
        "(default tiny)",
    )  # fmt: skip
    p.add_argument(
        "--finetune-decoder",
        metavar="CODEC_DIR",
        help="train only the decoder of this trained codec: its encoder and codebooks (so every clip's codes, and "
        "a transformer trained on them) stay the same; --model.decoder_attention=N (and "
        "--model.decoder_attention_heads) adds N attention blocks in front of the decoder",
    )
    _schedule_flags(p, steps=3000, batch=16, lr=3e-3, unit="clips", disc="STFT")
    p.add_argument(
        "--segment-frames", type=at.int_range(1, 100000), default=32,
        help="training crop length in codec frames (default 32)",
    )  # fmt: skip
    p.add_argument(
        "--sample-every", type=at.positive_int, default=500,
        help="steps between spectrogram PNGs and WAV samples (default 500)",
    )  # fmt: skip
    p.add_argument("--max-clips", type=at.nonnegative_int, default=0, help="use at most this many clips (0 = all)")
    _more_flags(p, "audio")
    accept_overrides(p, "codec", "--model.num_levels=8")


def register(cli) -> None:
    _register_train_image(cli)
    _register_train_audio(cli)
    p = cli.command("plot", "draw a training run's curves (loss per modality, z-loss, lr, tokens/s) as a PNG", _plot)
    p.add_argument("run", help="training run folder (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG path (default RUN/curves.png)")
    p.add_argument("--title", default=None, help="figure title (default: the run folder name)")
    p = cli.command(
        "export", "export a training run's newest checkpoint as model.safetensors + config.json + tokenizers", _export
    )
    p.add_argument("run", help="training run folder")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--tokenizers", default=None, help="tokenizer folder (default: the one recorded by the run)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the newest complete one)")
    p.add_argument(
        "--format",
        choices=("plain", "chat"),
        default=None,
        help="chat: the model was trained on conversations, so `generate` treats a prompt as a user turn (written "
        "to generation.json); default: plain, a prompt is text to continue",
    )
