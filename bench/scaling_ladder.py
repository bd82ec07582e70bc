"""A scaling ladder: models of five or more sizes on one corpus, per-modality validation losses, fitted laws L(N, D).

    python bench/scaling_ladder.py --data SHARDS/train --val-data SHARDS/val --tokenizers TOK --out DIR
                                   [--sizes 64x1 96x2 128x3 192x4 256x6] [--steps 300] [--set KEY=VALUE ...]
    python bench/scaling_ladder.py --out DIR --refit          # re-fit and re-plot the finished runs, no training

Each rung is one ``train/pretrain.py`` run of the ``tiny`` preset with the given width x depth (heads of 64, SwiGLU
2.75x), the same data, seed, batch and schedule, in ``DIR/rung_WxL``; an interrupted ladder resumes (a finished rung
is skipped, an unfinished one resumes from its last checkpoint). N is the parameter count without the embedding
and output tables; D the training tokens seen at each validation point of a run. Per modality (and over all
tokens) the law of the mixed-modal scaling-laws paper, L(N, D) = E + A / N^alpha + B / D^beta, is fitted to every
(N, D, loss) point past the warm-up by least squares on the log of the loss, from several starts; the fit error is
the RMS of the relative residuals. Caveat of this cheap design: the D axis comes from points along each run's
(cosine) schedule rather than from separate runs at each budget, which biases beta. The interaction between two
modalities (uni-modal against bi-modal runs) needs corpora of one modality each and is not measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from untied_vs_dense import val_curves  # noqa: E402

DEFAULT_SIZES = ("64x1", "96x2", "128x3", "192x4", "256x6")


def rung_config(size: str) -> dict:
    width, depth = (int(x) for x in size.split("x"))
    return {"dim": width, "n_layers": depth, "n_heads": max(1, width // 64), "n_kv_heads": max(1, width // 64),
            "ffn_dim": int(2.75 * width) // 16 * 16}  # fmt: skip


def params(size: str, vocab_size: int = 1024) -> int:
    from chameleon_lite.model.config import preset

    return preset("tiny", vocab_size=vocab_size, **rung_config(size)).num_params(include_embedding=False)


def train_rung(args: argparse.Namespace, size: str) -> str:
    run = os.path.join(args.out, f"rung_{size}")
    if os.path.exists(os.path.join(run, "metrics.jsonl")) and _finished(run, args.steps):
        print(f"rung {size}: done", flush=True)
        return run
    overrides = [f"--model.{k}={v}" for k, v in rung_config(size).items()]
    cmd = [sys.executable, os.path.join(ROOT, "train", "pretrain.py"), "--config", "tiny", "--data", args.data,
           "--val-data", args.val_data, f"--tokenizers={args.tokenizers}", "--out", run, f"--steps={args.steps}",
           f"--val_every={args.val_every}", *overrides, *[f"--{kv}" for kv in args.set]]  # fmt: skip
    print(f"rung {size} ({params(size) / 1e6:.2f}M parameters):", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run


def _finished(run: str, steps: int) -> bool:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return any(json.loads(line).get("step") == steps - 1 and "val_loss" in line for line in f)


def tokens_per_step(run: str) -> int:
    with open(os.path.join(run, "run.json")) as f:
        t = json.load(f)["train"]
    return t["seq_len"] * t["batch_size"] * t.get("grad_accum", 1) * t.get("world_size", 1)


def fit_law(points: list[tuple[float, float, float]], starts: int = 64) -> dict:
    """Least squares of log L against log(E + A N^-alpha + B D^-beta) over (N, D, L) points."""
    n, d, y = (torch.tensor([p[i] for p in points], dtype=torch.float64) for i in range(3))
    logy = y.log()
    best = None
    g = torch.Generator().manual_seed(0)
    for _ in range(starts):
        init = torch.rand(5, generator=g, dtype=torch.float64)
        # log E, log A, log B, alpha, beta
        theta = torch.tensor([math.log(float(y.min()) * (0.2 + 0.7 * init[0])), 2 + 6 * init[1], 2 + 6 * init[2],
                              0.1 + 0.8 * init[3], 0.1 + 0.8 * init[4]], dtype=torch.float64, requires_grad=True)  # fmt: skip
        opt = torch.optim.LBFGS([theta], max_iter=500, line_search_fn="strong_wolfe")

        def residual():
            e, a, b, al, be = theta[0].exp(), theta[1].exp(), theta[2].exp(), theta[3], theta[4]
            return (((e + a * n.pow(-al) + b * d.pow(-be)).log() - logy) ** 2).mean()

        def closure():
            opt.zero_grad()
            r = residual()
            r.backward()
            return r

        try:
            opt.step(closure)
        except RuntimeError:
            continue
        with torch.no_grad():
            r = float(residual())
        if math.isfinite(r) and (best is None or r < best[0]):
            best = (r, theta.detach().clone())
    r, t = best
    e, a, b, al, be = float(t[0].exp()), float(t[1].exp()), float(t[2].exp()), float(t[3]), float(t[4])
    pred = e + a * n.pow(-al) + b * d.pow(-be)
    rel = ((pred - y) / y).pow(2).mean().sqrt()
    return {"E": e, "A": a, "B": b, "alpha": al, "beta": be, "rms_relative_error": float(rel), "points": len(points)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data")
    ap.add_argument("--val-data")
    ap.add_argument("--tokenizers")
    ap.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxDEPTH per rung")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a pretrain override for every "
                    "rung (repeatable)")  # fmt: skip
    ap.add_argument("--refit", action="store_true", help="fit and plot the runs in --out without training")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.refit and not (args.data and args.val_data and args.tokenizers):
        ap.error("give --data, --val-data and --tokenizers (or --refit)")
    runs = {}
    for size in args.sizes:
        run = os.path.join(args.out, f"rung_{size}") if args.refit else train_rung(args, size)
        if os.path.exists(os.path.join(run, "metrics.jsonl")):
            runs[size] = run
    warm = max(1, args.steps // 6)
    points: dict[str, list[tuple[float, float, float]]] = {}
    finals: dict[str, dict[str, float]] = {}
    for size, run in runs.items():
        n, tps = params(size), tokens_per_step(run)
        for key, curve in val_curves(run).items():
            points.setdefault(key, []).extend((n, (s + 1) * tps, v) for s, v in curve if s >= warm)
            finals.setdefault(size, {})[key] = curve[-1][1]
    fits = {key: fit_law(p) for key, p in points.items() if len({x[0] for x in p}) >= 3}
    print("| size | params | " + " | ".join(f"final val {k}" for k in fits) + " |\n|" + "---|" * (2 + len(fits)))
    for size in runs:
        print(f"| {size} | {params(size) / 1e6:.3f}M | " + " | ".join(f"{finals[size].get(k, float('nan')):.4f}"
                                                                      for k in fits) + " |")  # fmt: skip
    print(
        "\n| modality | E | A | alpha | B | beta | fit RMS relative error | points |\n|---|---|---|---|---|---|---|---|"
    )
    for k, f in fits.items():
        print(f"| {k} | {f['E']:.3f} | {f['A']:.3g} | {f['alpha']:.3f} | {f['B']:.3g} | {f['beta']:.3f} | "
              f"{f['rms_relative_error']:.4f} | {f['points']} |")  # fmt: skip
    out = {"sizes": {s: {"params": params(s), "run": runs[s], "final": finals[s]} for s in runs}, "fits": fits,
           "steps": args.steps, "caveat": "D from points along each run's schedule; no interaction term"}  # fmt: skip
    with open(os.path.join(args.out, "ladder.json"), "w") as f:
        json.dump(out, f, indent=2)
    plot(runs, fits, os.path.join(args.out, "ladder.png"))
    print("wrote", os.path.join(args.out, "ladder.json"))
    return 0


def plot(runs: dict[str, str], fits: dict[str, dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(fits)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for size, run in runs.items():
            tps, n = tokens_per_step(run), params(size)
            curve = val_curves(run).get(k, [])
            ds = [(s + 1) * tps for s, _ in curve]
            line = ax.plot(ds, [v for _, v in curve], label=f"{size} ({n / 1e6:.2f}M)")[0]
            f = fits[k]
            ax.plot(ds, [f["E"] + f["A"] * n ** -f["alpha"] + f["B"] * dd ** -f["beta"] for dd in ds], ls="--",
                    color=line.get_color(), lw=0.8)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{k}: alpha {fits[k]['alpha']:.2f}, beta {fits[k]['beta']:.2f}", fontsize=8)
        ax.set_xlabel("training tokens")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("validation loss (dashed: fitted law)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
