"""CLI command of the evaluation harness (registered by chameleon_lite.cli)."""

from __future__ import annotations

import argparse

from chameleon_lite import argtypes as at
from chameleon_lite.eval import TASKS


def _eval(args: argparse.Namespace) -> int:
    from chameleon_lite.eval.harness import EvalConfig, run_eval

    if args.model is None:
        from chameleon_lite.bundle import demo_model_dir

        args.model = demo_model_dir()
        args.out = args.out or "demo-eval"

    cfg = EvalConfig(
        model=args.model,
        out=args.out or f"{args.model.rstrip('/')}-eval",
        n=args.n,
        seed=args.seed,
        tasks=tuple(args.tasks) if args.tasks else TASKS,
        batch=args.batch,
        shards=args.shards,
        text_temperature=args.text_temperature,
        image_temperature=args.image_temperature,
        audio_temperature=args.audio_temperature,
        image_cfg=args.image_cfg,
        audio_cfg=args.audio_cfg,
        samples_in_report=args.samples,
    )
    res = run_eval(cfg)
    print(f"wrote {cfg.out}/eval.json and {cfg.out}/report.html ({res['seconds']:.0f} s)")
    return 0


def register(cli) -> None:
    p = cli.command(
        "eval", "judge a model on held-out procedural prompts with the checkers; eval.json + report.html", _eval
    )
    p.add_argument(
        "--model", default=None, metavar="DIR", help="exported model folder (default: the shipped demo model)"
    )
    p.add_argument("--out", default=None, metavar="DIR", help="report folder (default MODEL-eval)")
    p.add_argument("--n", type=at.int_range(1, 100000), default=100, help="prompts per task (default 100)")
    p.add_argument(
        "--seed", type=at.seed, default=12345, help="seed of the held-out prompts and of sampling (default 12345)"
    )
    p.add_argument("--tasks", nargs="+", choices=TASKS, help="tasks to run (default all)")
    p.add_argument("--batch", type=at.int_range(1, 4096), default=8, help="prompts generated together (default 8)")
    p.add_argument(
        "--samples", type=at.nonnegative_int, default=16, help="samples per task shown in report.html (default 16)"
    )
    p.add_argument("--shards", default=None, metavar="DIR", help="validation shards for per-modality perplexity")
    p.add_argument("--text-temperature", type=at.nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--image-temperature", type=at.nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--audio-temperature", type=at.nonnegative_float, default=0.0, help="0 = greedy (default)")
    p.add_argument(
        "--image-cfg",
        type=at.nonnegative_float,
        default=1.0,
        help="classifier-free guidance scale for image spans (default 1 = off)",
    )
    p.add_argument(
        "--audio-cfg",
        type=at.nonnegative_float,
        default=1.0,
        help="classifier-free guidance scale for audio spans (default 1 = off)",
    )
