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
(cosine) schedule rather than from separate runs at each budget, which biases beta.

``--pairs text+image text+audio`` adds the interaction between two modalities, as the mixed-modal scaling-laws
paper defines it: from the given shards it writes corpora of one modality each (every document split into its text,
its pictures and its clips, each a document of its own with no bidirectional span) and, per pair, their mixture with
equal tokens of both (the smaller side's documents repeated). At every size it trains each uni-modal corpus for
``steps / 2`` and each mixture for ``steps``: the two uni-modal runs together cost what the bi-modal run costs. Every
final model is then scored on each uni-modal validation set, and the interaction at size N is
Delta_ij(N) = [L_ij(N) on i + L_ij(N) on j] / 2 - [L_i(N) + L_j(N)] / 2 (positive: the modalities compete for the
shared weights; negative: synergy), fitted as Delta(N) = -C + beta / N^alpha.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import pretrain_command, run_pretrain, write_json  # noqa: E402
from untied_vs_dense import val_curves  # noqa: E402

DEFAULT_SIZES = ("64x1", "96x2", "128x3", "192x4", "256x6")


def rung_config(size: str) -> dict:
    width, depth = (int(x) for x in size.split("x"))
    return {"dim": width, "n_layers": depth, "n_heads": max(1, width // 64), "n_kv_heads": max(1, width // 64),
            "ffn_dim": int(2.75 * width) // 16 * 16}  # fmt: skip


def params(size: str, vocab_size: int = 1024) -> int:
    from chameleon_lite.model.config import preset

    return preset("tiny", vocab_size=vocab_size, **rung_config(size)).num_params(include_embedding=False)


def train_rung(args: argparse.Namespace, size: str, data: str = "", val_data: str = "", run: str = "",
               steps: int = 0) -> str:  # fmt: skip
    run = run or os.path.join(args.out, f"rung_{size}")
    steps = steps or args.steps
    if os.path.exists(os.path.join(run, "metrics.jsonl")) and _finished(run, steps):
        print(f"{run}: done", flush=True)
        return run
    overrides = [f"--model.{k}={v}" for k, v in rung_config(size).items()]
    cmd = pretrain_command("tiny", data or args.data, val_data or args.val_data, args.tokenizers, run, steps,
                           f"--val_every={max(1, min(args.val_every, steps // 6))}", *overrides,
                           *[f"--{kv}" for kv in args.set])  # fmt: skip
    run_pretrain(cmd, f"{run} ({params(size) / 1e6:.2f}M parameters)")
    return run


# ---------------------------------------------------------------------------------------------- the interaction
UNI = ("text", "image", "audio")


def modality_documents(ids: np.ndarray, vocab) -> dict[str, np.ndarray]:
    """One document -> {"text": every token outside its media blocks, "image": <bos> + its <boi>..<eoi> blocks +
    <eos>, "audio": <bos> + its <boa>..<eoa> blocks + <eos>}; a modality the document lacks is left out (text that
    is only specials too)."""
    ids = np.asarray(ids, dtype=np.int64)
    kind = np.zeros(ids.size, dtype=np.int8)
    for code, (open_, close) in ((1, (vocab.boi, vocab.eoi)), (2, (vocab.boa, vocab.eoa))):
        ends = np.flatnonzero(ids == close)
        for a in np.flatnonzero(ids == open_):
            after = ends[ends > a]
            kind[a : (int(after[0]) + 1 if after.size else ids.size)] = code
    out = {}
    text = ids[kind == 0]
    if np.any(text >= vocab.text_offset):
        out["text"] = text
    for code, name in ((1, "image"), (2, "audio")):
        if np.any(kind == code):
            out[name] = np.concatenate([[vocab.bos], ids[kind == code], [vocab.eos]])
    return out


def write_corpora(data: str, val_data: str, out: str, pairs: list[tuple[str, str]], seed: int = 0) -> dict[str, str]:
    """Uni-modal corpora and equal-token mixtures of ``pairs`` under ``out/NAME/{train,val}`` -> {NAME: folder};
    a corpus already written is kept."""
    from chameleon_lite.data.shards import ShardSet, ShardWriter

    names = sorted({m for p in pairs for m in p}, key=UNI.index) + ["+".join(p) for p in pairs]
    folders = {n: os.path.join(out, n) for n in names}
    if all(os.path.exists(os.path.join(f, s, "meta.json")) for f in folders.values() for s in ("train", "val")):
        return folders
    for split, src in (("train", data), ("val", val_data)):
        shards = ShardSet(src)
        docs: dict[str, list[np.ndarray]] = {m: [] for m in UNI}
        for i in range(len(shards)):
            for m, d in modality_documents(shards.document(i)[0], shards.vocab).items():
                docs[m].append(d)
        rng = np.random.default_rng(seed)
        for name in names:
            parts = name.split("+")
            if any(not docs[m] for m in parts):
                raise SystemExit(f"{src}: has no {' or '.join(m for m in parts if not docs[m])} documents for {name}")
            tokens = {m: sum(d.size for d in docs[m]) for m in parts}
            # train: equal tokens of both sides (the smaller side repeated); val: each side once
            reps = {m: max(1, round(max(tokens.values()) / tokens[m])) if split == "train" else 1 for m in parts}
            chosen = [d for m in parts for d in docs[m] * reps[m]]
            with ShardWriter(os.path.join(folders[name], split), shards.vocab,
                             extra_meta={"corpus": name, "repeats": reps, "source": os.path.abspath(src)}) as w:  # fmt: skip
                for j in rng.permutation(len(chosen)):
                    w.add(chosen[j], [])
            print(f"corpus {name}/{split}: {len(chosen)} documents, {sum(d.size for d in chosen)} tokens "
                  f"(repeats {reps})", flush=True)  # fmt: skip
    return folders


@torch.no_grad()
def val_loss(run: str, val: str, seq_len: int = 512, batch: int = 8, max_batches: int = 16) -> float:
    """Mean loss of a finished run's newest checkpoint over one pass of the shard folder ``val`` (cached in the run's
    ``val_on.json``)."""
    from chameleon_lite.data.loader import PackedLoader
    from chameleon_lite.files import write_json_atomic
    from chameleon_lite.model.io import load_model
    from chameleon_lite.model.transformer import token_losses
    from chameleon_lite.train.export import export_run
    from chameleon_lite.train.metrics import loss_stats, summarize_stats

    cache_path = os.path.join(run, "val_on.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    key = os.path.abspath(val)
    if key in cache:
        return cache[key]
    model_dir = os.path.join(run, "model")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        export_run(run, model_dir)
    model = load_model(model_dir)
    loader = PackedLoader(val, seq_len, batch, shuffle=False)
    n = min(max_batches, max(1, math.ceil(loader.tokens_per_epoch / (seq_len * batch))))
    stats = None
    for _, b in zip(range(n), loader):
        ce, lse = token_losses(model(b["input_ids"], b["positions"], b["doc_ids"].int(), b["span_ids"].int()),
                               b["targets"])  # fmt: skip
        s = loss_stats(ce, lse, b["targets"], b["loss_mask"], loader.vocab)
        stats = s if stats is None else stats + s
    cache[key] = summarize_stats(stats)["loss"]
    write_json_atomic(cache_path, cache)
    return cache[key]


def fit_interaction(ns: list[float], deltas: list[float]) -> dict:
    """Least squares of Delta(N) = -C + beta * N^-alpha: linear in (C, beta) at each alpha of a fine grid."""
    n, y = np.asarray(ns, np.float64), np.asarray(deltas, np.float64)
    best = None
    for alpha in np.linspace(0.02, 2.0, 199):
        x = np.stack([-np.ones_like(n), n**-alpha], 1)
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        rms = float(np.sqrt(np.mean((x @ coef - y) ** 2)))
        if best is None or rms < best["rms_error"]:
            best = {"C": float(coef[0]), "beta": float(coef[1]), "alpha": float(alpha), "rms_error": rms}
    c, b, a = best["C"], best["beta"], best["alpha"]
    # where the fitted interaction changes sign (-C + beta N^-alpha = 0), if it does
    best["crossover_params"] = float((b / c) ** (1 / a)) if c * b > 0 else None
    best["points"] = len(ns)
    return best


def interaction(args: argparse.Namespace, pairs: list[tuple[str, str]]) -> dict:
    folders = write_corpora(args.data, args.val_data, os.path.join(args.out, "corpora"), pairs, args.seed)
    runs: dict[str, dict[str, str]] = {}
    for size in args.sizes:
        for name, folder in folders.items():
            steps = args.steps if "+" in name else args.steps // 2
            run = os.path.join(args.out, name, f"rung_{size}")
            if args.refit:
                if os.path.exists(os.path.join(run, "metrics.jsonl")) and _finished(run, steps):
                    runs.setdefault(name, {})[size] = run
                continue
            runs.setdefault(name, {})[size] = train_rung(
                args, size, os.path.join(folder, "train"), os.path.join(folder, "val"),
                os.path.join(args.out, name, f"rung_{size}"), steps)  # fmt: skip
    result = {"definition": "Delta = mean over i,j of L_ij on i's validation - mean of L_i, L_j (uni-modal runs at "
              "half the steps: equal compute); > 0 competition, < 0 synergy", "pairs": {}}  # fmt: skip
    for i, j in pairs:
        name, rows = f"{i}+{j}", []
        for size in args.sizes:
            if any(size not in runs.get(m, {}) for m in (name, i, j)):
                continue
            bi = {m: val_loss(runs[name][size], os.path.join(folders[m], "val")) for m in (i, j)}
            uni = {m: val_loss(runs[m][size], os.path.join(folders[m], "val")) for m in (i, j)}
            rows.append({"size": size, "params": params(size), "bi": bi, "uni": uni,
                         "delta": {m: bi[m] - uni[m] for m in (i, j)},
                         "delta_mean": (bi[i] + bi[j] - uni[i] - uni[j]) / 2})  # fmt: skip
        fit = fit_interaction([r["params"] for r in rows], [r["delta_mean"] for r in rows]) if len(rows) >= 3 else None
        result["pairs"][name] = {"rows": rows, "fit": fit}
        print(f"\n{name}: loss of the bi-modal run (steps {args.steps}) against the uni-modal runs (steps "
              f"{args.steps // 2} each) on each modality's validation set\n| size | params | {i}: bi | {i}: uni | "
              f"{j}: bi | {j}: uni | Delta (mean) |\n|---|---|---|---|---|---|---|")  # fmt: skip
        for r in rows:
            print(f"| {r['size']} | {r['params'] / 1e6:.3f}M | {r['bi'][i]:.4f} | {r['uni'][i]:.4f} | {r['bi'][j]:.4f}"
                  f" | {r['uni'][j]:.4f} | {r['delta_mean']:+.4f} |")  # fmt: skip
        if fit:
            print(f"fit Delta(N) = -C + beta N^-alpha: C {fit['C']:.4f}, beta {fit['beta']:.4g}, alpha "
                  f"{fit['alpha']:.2f}, RMS error {fit['rms_error']:.4f}, sign change at N = {fit['crossover_params']}")  # fmt: skip
    write_json(os.path.join(args.out, "interaction.json"), result)
    plot_interaction(result, os.path.join(args.out, "interaction.png"))
    print("wrote", os.path.join(args.out, "interaction.json"))
    return result


def plot_interaction(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(result["pairs"].items())
    fig, axes = plt.subplots(1, 2 * len(pairs), figsize=(3.4 * 2 * len(pairs), 3.2), squeeze=False)
    for k, (name, p) in enumerate(pairs):
        ax, bx = axes[0][2 * k], axes[0][2 * k + 1]
        ns = [r["params"] for r in p["rows"]]
        for m in name.split("+"):
            line = ax.plot(ns, [r["uni"][m] for r in p["rows"]], marker="o", label=f"{m}: uni-modal")[0]
            ax.plot(ns, [r["bi"][m] for r in p["rows"]], marker="s", ls="--", color=line.get_color(),
                    label=f"{m}: in {name}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("parameters (non-embedding)")
        ax.set_ylabel("validation loss")
        ax.set_title(f"{name}: equal compute", fontsize=8)
        ax.legend(fontsize=6)
        bx.axhline(0, color="grey", lw=0.6)
        bx.plot(ns, [r["delta_mean"] for r in p["rows"]], "o", label="measured")
        if p["fit"]:
            f = p["fit"]
            grid = np.geomspace(min(ns), max(ns), 50)
            bx.plot(grid, -f["C"] + f["beta"] * grid ** -f["alpha"], "--", label=f"fit, alpha {f['alpha']:.2f}")
        bx.set_xscale("log")
        bx.set_xlabel("parameters (non-embedding)")
        bx.set_title(f"{name}: interaction (> 0 competition)", fontsize=8)
        bx.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    ap.add_argument(
        "--pairs",
        nargs="*",
        default=[],
        metavar="A+B",
        help="also measure the interaction of these "
        "modality pairs (e.g. text+image text+audio) from uni-modal and bi-modal runs at equal compute",
    )
    ap.add_argument("--seed", type=int, default=0, help="order of the uni-modal and mixed corpora (default 0)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if not args.refit and not (args.data and args.val_data and args.tokenizers):
        ap.error("give --data, --val-data and --tokenizers (or --refit)")
    pairs = [tuple(p.split("+")) for p in args.pairs]
    if any(len(p) != 2 or p[0] == p[1] or not set(p) <= set(UNI) for p in pairs):
        ap.error(f"--pairs: each pair is two different modalities of {UNI} joined by +, e.g. text+image")
    if pairs and args.refit and not os.path.isdir(os.path.join(args.out, "corpora")):
        ap.error(f"--refit --pairs: {args.out} holds no interaction runs")
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
           "steps": args.steps, "caveat": "D from points along each run's schedule"}  # fmt: skip
    write_json(os.path.join(args.out, "ladder.json"), out)
    plot(runs, fits, os.path.join(args.out, "ladder.png"))
    print("wrote", os.path.join(args.out, "ladder.json"))
    if pairs:
        interaction(args, pairs)
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
