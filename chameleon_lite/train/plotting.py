"""Training curves of a run as a PNG: loss (overall and per modality, train and validation), z-loss, lr, speed."""

from __future__ import annotations

import os

from chameleon_lite.errors import ConfigError
from chameleon_lite.files import PNG_SOFTWARE, atomic_path, check_png_output
from chameleon_lite.train.metrics import METRICS_FILE, read_metrics
from chameleon_lite.vocab import MODALITY_NAMES

COLORS = {"": "black", "text": "tab:blue", "image": "tab:orange", "audio": "tab:green"}


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if key in r and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run_dir: str, out: str | None = None, title: str | None = None) -> str:
    """Draw ``run_dir/metrics.jsonl`` into ``out`` (default ``run_dir/curves.png``); returns the PNG path."""
    import matplotlib  # lazy: 0.3 s to import, and its Agg backend is chosen only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after the backend is chosen

    if out is not None:  # run_dir/curves.png is the run folder's own file; any other path must not be someone else's
        check_png_output(out)
    out = out or os.path.join(run_dir, "curves.png")
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no metrics to plot; is {run_dir} a training run folder?")
    records = read_metrics(path)
    train = [r for r in records if "lr" in r and not r.get("skipped")]
    val = [r for r in records if "val_loss" in r]
    if not train:
        raise ConfigError(f"{path}: no completed training steps yet")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0, 0]
    for mod in ("",) + MODALITY_NAMES:
        key = f"loss_{mod}" if mod else "loss"
        xs, ys = _series(train, key)
        if xs:
            ax.plot(xs, ys, color=COLORS[mod], alpha=0.35, lw=0.8, label=f"train {mod or 'all'}")
        xs, ys = _series(val, f"val_{key}")
        if xs:
            ax.plot(xs, ys, color=COLORS[mod], marker="o", ms=3, lw=1.6, label=f"val {mod or 'all'}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token, log scale)")
    ax.set_yscale("log")  # the first steps fall by nats, later progress is in hundredths
    ax.set_title("loss per modality")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    for a, key, label in (
        (axes[0, 1], "z", "z-loss term (lse^2)"),
        (axes[1, 0], "lr", "learning rate"),
        (axes[1, 1], "tokens_per_s", "tokens/s"),
    ):
        xs, ys = _series(train, key)
        a.plot(xs, ys, color="tab:purple", lw=1)
        a.set_xlabel("step")
        a.set_title(label)
        a.grid(alpha=0.3)
    gn = _series(train, "grad_norm")
    if gn[0]:
        twin = axes[0, 1].twinx()
        twin.plot(*gn, color="tab:red", lw=0.8, alpha=0.6)
        twin.set_ylabel("grad norm", color="tab:red")
    mfu = [r["mfu"] for r in train if "mfu" in r]
    if mfu:
        axes[1, 1].set_title(f"tokens/s (median MFU {sorted(mfu)[len(mfu) // 2]:.1%})")
    fig.suptitle(title or os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    with atomic_path(out, ".png") as tmp:
        fig.savefig(tmp, dpi=110, metadata={"Software": PNG_SOFTWARE})
    plt.close(fig)
    return out
