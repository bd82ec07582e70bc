"""Quality per CPU-minute of the quickstart recipe: the whole quickstart at several budgets, each from scratch, each
scored by the eval on the same prompts, plotted against the minutes it took, with the time split per stage.

    python bench/quickstart_curve.py --budgets 15,30,60,120          # runs what is missing, then plots
    python bench/quickstart_curve.py --budgets 15,30 --plot-only      # re-plot finished runs, train nothing
    python bench/quickstart_curve.py --budgets 30 --out runs/curve_b --set image_steps=1500 --set compile=true

Each budget B runs ``chameleon-lite quickstart --budget-minutes B`` into OUT/bB (resumable: an interrupted curve
continues where it stopped) and then scores its model with ``chameleon-lite eval`` on ``--eval-n`` prompts per task
(default 200, seed 54321, the same prompts for every budget) into OUT/bB/eval_curve. The x axis is the minutes of the
stages that make the model (corpus to export; the quickstart's own small eval and demo are not counted).
``--set KEY=VALUE`` changes a field of the quickstart's config (a lever), so two curves compare recipes.
Writes OUT/curve.json and OUT/curve.png; prints the table. Report the machine (ISA, threads) with every curve.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402

from chameleon_lite.eval.harness import EvalConfig, run_eval  # noqa: E402
from chameleon_lite.pipeline import stage_seconds  # noqa: E402
from chameleon_lite.quickstart import QuickstartConfig, quickstart  # noqa: E402

EVAL_SEED = 54321  # not the quickstart's corpus (seed), held-out (seed + 1000) or own-eval (seed + 2000) seed
MODEL_STAGES = (
    "corpus",
    "heldout",
    "text-tokenizer",
    "image-tokenizer",
    "audio-tokenizer",
    "vocab",
    "tokenize",
    "pretrain",
    "curves",
    "export",
)
TASK_ORDER = ("text_to_image", "image_to_text", "text_to_audio", "audio_to_text", "interleaved", "instruction")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def qs_config(out: str, budget: float, sets: list[str]) -> QuickstartConfig:
    fields = {f.name for f in dataclasses.fields(QuickstartConfig)}
    over = {}
    for s in sets:
        k, sep, v = s.partition("=")
        if not sep or k not in fields:
            sys.exit(f"--set wants KEY=VALUE with KEY a quickstart field ({', '.join(sorted(fields))}), got {s!r}")
        over[k] = _value(v)
    return QuickstartConfig(out=os.path.join(out, f"b{budget:g}"), budget_minutes=budget, **over)


def point(cfg: QuickstartConfig, eval_n: int, run: bool) -> dict | None:
    """One budget's point: runs (or continues) the quickstart and the curve's eval unless ``run`` is off."""
    eval_dir = cfg.path("eval_curve")
    done = os.path.exists(os.path.join(eval_dir, "eval.json")) and json.load(
        open(os.path.join(eval_dir, "eval.json"))
    ).get("tasks")
    if not done:
        if not run:
            return None
        quickstart(cfg)
        run_eval(EvalConfig(model=cfg.path("model"), out=eval_dir, n=eval_n, seed=EVAL_SEED, progress=False))
    res = json.load(open(os.path.join(eval_dir, "eval.json")))
    stages = stage_seconds(cfg.out)
    rec = {
        "budget": cfg.budget_minutes,
        "minutes": round(sum(stages.get(s, 0.0) for s in MODEL_STAGES) / 60, 2),
        "stage_minutes": {s: round(stages.get(s, 0.0) / 60, 2) for s in MODEL_STAGES},
        "eval_n": res["config"]["n"],
        "tasks": {t: round(v["exact"], 4) for t, v in res["tasks"].items()},
        "tokenizers": res.get("tokenizers", {}),
    }
    return rec


def plot(points: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    xs = [p["minutes"] for p in points]
    for t in TASK_ORDER:
        ys = [p["tasks"].get(t) for p in points]
        if any(y is not None for y in ys):
            ax.plot(xs, [100 * (y or 0) for y in ys], marker="o", label=t)
    ax.axhline(90, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("minutes to make the model (2-thread CPU run; see machine in curve.json)")
    ax.set_ylabel(f"exact, % of {points[0]['eval_n']} prompts per task")
    ax.set_title(title)
    ax.legend(fontsize=7)
    bottom = [0.0] * len(points)
    labels = [f"{p['budget']:g}" for p in points]
    for s in MODEL_STAGES:
        vals = [p["stage_minutes"].get(s, 0.0) for p in points]
        if sum(vals) > 0.05 * len(points):
            bx.bar(labels, vals, bottom=bottom, label=s)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    bx.set_xlabel("budget (minutes)")
    bx.set_ylabel("minutes per stage")
    bx.set_title("where the time went")
    bx.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="15,30,60,120", help="comma-separated minutes (default 15,30,60,120)")
    ap.add_argument("--out", default="runs/curve", help="folder of the runs (default runs/curve)")
    ap.add_argument("--eval-n", type=int, default=200, help="prompts per task of the curve's eval (default 200)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a quickstart config field")
    ap.add_argument("--plot-only", action="store_true", help="plot the finished runs, train nothing")
    ap.add_argument("--title", default="quickstart: quality per CPU-minute")
    args = ap.parse_args()
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        sys.exit(f"--budgets wants comma-separated minutes, got {args.budgets!r}")
    points = []
    for b in budgets:
        p = point(qs_config(args.out, b, args.set), args.eval_n, run=not args.plot_only)
        if p is not None:
            points.append(p)
    if not points:
        sys.exit(f"no finished runs under {args.out}")
    rows = [{"budget": p["budget"], "minutes": p["minutes"], **p["tasks"]} for p in points]
    print_table(rows, ["budget", "minutes", *[t for t in TASK_ORDER if t in rows[0]]])
    write_json(os.path.join(args.out, "curve.json"), {"sets": args.set, "points": points})
    plot(points, os.path.join(args.out, "curve.png"), args.title)
    print(f"wrote {os.path.join(args.out, 'curve.json')} and curve.png")


if __name__ == "__main__":
    main()
