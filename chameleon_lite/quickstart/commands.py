"""`chameleon-lite quickstart` on the command line."""

from __future__ import annotations

from chameleon_lite import argtypes as at
from chameleon_lite.quickstart import DEFAULT_BUDGET_MINUTES, DEMO_PROMPT


def _run(args) -> int:
    from chameleon_lite.quickstart import QuickstartConfig, quickstart

    cfg = QuickstartConfig(
        out=args.out, budget_minutes=args.budget_minutes, seed=args.seed, workers=args.workers, compile=args.compile
    )
    summary = quickstart(cfg)
    print(f"quickstart finished ({summary['seconds_this_run'] / 60:.1f} min this run)")
    for key in ("model", "curves", "eval", "demo"):
        print(f"  {key:7s} {summary[key]}")
    print(
        f'try: chameleon-lite generate --model {summary["model"]} --prompt "{DEMO_PROMPT}" --then media --out {cfg.path("try")}'
    )
    return 0


def register(cli) -> None:
    p = cli.command("quickstart", "corpus → tokenizers → shards → pretraining → export → eval → demo, resumable", _run)
    p.add_argument("--out", default="runs/quickstart", metavar="DIR", help="working folder (default runs/quickstart)")
    p.add_argument(
        "--budget-minutes",
        type=at.float_range(1.0, 100000.0),
        default=DEFAULT_BUDGET_MINUTES,
        help="scales the training stages (default 30, tuned for 2 CPU cores)",
    )
    p.add_argument("--seed", type=at.seed, default=0, help="seed of the corpus and of every training stage (default 0)")
    p.add_argument(
        "--workers",
        type=at.int_range(1, 256),
        default=2,
        help="worker processes for corpus writing and pretokenizing (default 2)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the pretraining step (slower on some CPUs)")
