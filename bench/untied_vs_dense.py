"""Dense against modality-untied weights (Mixture-of-Transformers) at equal training FLOPs, per modality.

    python bench/untied_vs_dense.py --data SHARDS/train --val-data SHARDS/val --tokenizers TOK --out DIR
                                    [--steps 600] [--untied all] [--config tiny] [--set model.n_layers=4 ...]
    python bench/untied_vs_dense.py --runs DENSE_RUN UNTIED_RUN --out DIR     # re-plot two finished runs

Both runs train the same preset on the same shards with the same seed, batch, schedule and steps; an untied model's
token runs its own modality's copy of each untied part, so the FLOPs per token (and per step) are the dense
model's. From each run's validation losses per modality (``metrics.jsonl``): the dense model's final loss per
modality, the untied model's, and the step at which the untied run first reaches the dense run's final loss (linear
interpolation between validations; the paper this follows reports the image modality at about 55 % of the dense
FLOPs at 7B). Table printed, JSON and a PNG of the curves written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import pretrain_command, run_pretrain, write_json  # noqa: E402

MODALITIES = ("text", "image", "audio")


def val_curves(run: str) -> dict[str, list[tuple[int, float]]]:
    """{"all" | modality: [(step, validation loss)]} of a run folder."""
    out: dict[str, list[tuple[int, float]]] = {m: [] for m in ("all", *MODALITIES)}
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" not in r:
                continue
            out["all"].append((r["step"], r["val_loss"]))
            for m in MODALITIES:
                if f"val_loss_{m}" in r:
                    out[m].append((r["step"], r[f"val_loss_{m}"]))
    return {k: v for k, v in out.items() if v}


def first_step_at(curve: list[tuple[int, float]], target: float) -> float | None:
    """The (interpolated) step at which ``curve`` first reaches ``target`` or below; None if it never does."""
    prev = None
    for step, loss in curve:
        if loss <= target:
            if prev is None:
                return float(step)
            (s0, l0) = prev
            return s0 + (step - s0) * (l0 - target) / max(l0 - loss, 1e-12)
        prev = (step, loss)
    return None


def compare(dense: str, untied: str) -> list[dict]:
    a, b = val_curves(dense), val_curves(untied)
    rows = []
    for m in [k for k in a if k in b]:
        final_dense, final_untied = a[m][-1][1], b[m][-1][1]
        step = first_step_at(b[m], final_dense)
        rows.append({
            "modality": m,
            "dense_final_val_loss": final_dense,
            "untied_final_val_loss": final_untied,
            "untied_step_at_dense_final": step,
            "fraction_of_dense_steps": None if step is None else step / a[m][-1][0],
        })  # fmt: skip
    return rows


def plot(dense: str, untied: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = val_curves(dense), val_curves(untied)
    keys = [k for k in a if k in b]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, k in zip(axes, keys):
        for curve, label in ((a[k], "dense"), (b[k], "untied")):
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=label)
        ax.set_title(f"validation loss: {k}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def train(args: argparse.Namespace, name: str, extra: list[str]) -> str:
    run = os.path.join(args.out, name)
    cmd = pretrain_command(args.config, args.data, args.val_data, args.tokenizers, run, args.steps, *args.overrides,
                           *extra)  # fmt: skip
    run_pretrain(cmd, "$")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs=2, metavar=("DENSE", "UNTIED"), help="compare two finished runs")
    ap.add_argument("--data")
    ap.add_argument("--val-data")
    ap.add_argument("--tokenizers")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--untied", default="all", help="the parts to untie (default: all)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a pretrain override for both runs, e.g. --set model.n_layers=4 (repeatable)")  # fmt: skip
    args = ap.parse_args()
    args.overrides = [f"--{kv}" for kv in args.set]
    os.makedirs(args.out, exist_ok=True)
    if args.runs:
        dense, untied = args.runs
    else:
        if not (args.data and args.val_data and args.tokenizers):
            ap.error("give --runs DENSE UNTIED, or --data, --val-data and --tokenizers to train both")
        dense = train(args, "dense", [])
        untied = train(args, "untied", [f"--model.untied={args.untied}"])
    rows = compare(dense, untied)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    write_json(os.path.join(args.out, "untied_vs_dense.json"), {"dense": dense, "untied": untied, "rows": rows})
    plot(dense, untied, os.path.join(args.out, "untied_vs_dense.png"))
    print("wrote", os.path.join(args.out, "untied_vs_dense.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
