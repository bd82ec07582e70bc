"""CLI commands of the training layer: plot, export (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse


def _plot(args: argparse.Namespace) -> int:
    from chameleon_lite.train.plotting import plot_run

    print(plot_run(args.run, out=args.out, title=args.title))
    return 0


def _export(args: argparse.Namespace) -> int:
    from chameleon_lite.train.export import export_run

    out = export_run(args.run, args.out, tokenizers_dir=args.tokenizers, checkpoint=args.checkpoint)
    print(f"exported {args.run} -> {out}")
    return 0


def register(cli) -> None:
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
