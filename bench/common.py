"""Shared helpers of the benchmark scripts: timing, machine description, JSON/PNG output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from chameleon_lite.hardware import cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pretrain_command(config: str, data: str, val_data: str, tokenizers: str, out: str, steps: int,
                     *flags: str) -> list[str]:  # fmt: skip
    """The ``train/pretrain.py`` command line of one research-bench run (``flags``: more ``--key=value``)."""
    return [sys.executable, os.path.join(ROOT, "train", "pretrain.py"), "--config", config, "--data", data,
            "--val-data", val_data, f"--tokenizers={tokenizers}", "--out", out, f"--steps={steps}", *flags]  # fmt: skip


def run_pretrain(cmd: list[str], what: str = "") -> None:
    """Show and run a :func:`pretrain_command` (its progress on this terminal); raises if it fails."""
    print(what + ("" if not what else ": ") + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine_info() -> dict:
    flags = cpu_flags()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_json(path: str, payload: dict) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"machine": machine_info(), **payload}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    return path


def print_table(rows: list[dict], columns: list[str]) -> str:
    """Render rows as a GitHub-style table (also returned, for notes)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    out = "\n".join(lines)
    print(out)
    return out


def save_bar_chart(
    path: str,
    labels: list[str],
    values: list[float],
    value_label: str,
    title: str,
    horizontal: bool = False,
    colors: list[str] | None = None,
) -> str:
    """A bar chart PNG of one value per label, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(values)
    colors = colors or ["tab:blue"] * n
    if horizontal:
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.45 * n + 1)))
        ax.barh(range(n), values, color=colors)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_xlabel(value_label)
    else:
        fig, ax = plt.subplots(figsize=(max(4, 1.3 * n), 3.5))
        ax.bar(range(n), values, color=colors)
        ax.set_xticks(range(n), labels, fontsize=8)
        ax.set_ylabel(value_label)
    ax.set_title(title)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
