"""Training metrics: per-modality loss sums, throughput and MFU, and the ``metrics.jsonl`` log with a progress bar."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from chameleon_lite.files import write_text_atomic
from chameleon_lite.vocab import MODALITY_NAMES, UnifiedVocab

METRICS_FILE = "metrics.jsonl"
# Slots of the statistics vector summed over micro-steps and ranks.
N_MOD = len(MODALITY_NAMES)
STAT_CE, STAT_COUNT, STAT_Z, STAT_TOTAL = 0, N_MOD, 2 * N_MOD, 2 * N_MOD + 1
STAT_SIZE = 2 * N_MOD + 2


def loss_stats(
    ce: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, loss_mask: torch.Tensor, vocab: UnifiedVocab
) -> torch.Tensor:
    """Detached sums for logging. ce, lse: [B, L] fp32; targets: [B, L] int64; loss_mask: [B, L] bool ->
    fp64 [STAT_SIZE]: cross-entropy sum per modality (text, image, audio), token count per modality, z sum, all-token count."""
    mod = vocab.modality(targets.cpu()).to(ce.device).long()
    m = loss_mask.to(ce.device)
    out = torch.zeros(STAT_SIZE, dtype=torch.float64, device=ce.device)
    idx = mod[m]
    out[STAT_CE : STAT_CE + N_MOD].index_add_(0, idx, ce.detach()[m].double())
    out[STAT_COUNT : STAT_COUNT + N_MOD].index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    out[STAT_Z] = (lse.detach()[m].double() ** 2).sum()
    out[STAT_TOTAL] = m.sum()
    return out


def summarize_stats(stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Turn a (reduced) statistics vector into {loss, loss_text, loss_image, loss_audio, z} (means over tokens)."""
    s = stats.tolist()
    total = max(s[STAT_TOTAL], 1.0)
    out = {f"{prefix}loss": sum(s[STAT_CE : STAT_CE + N_MOD]) / total, f"{prefix}tokens": int(s[STAT_TOTAL])}
    for i, name in enumerate(MODALITY_NAMES):
        n = s[STAT_COUNT + i]
        if n > 0:
            out[f"{prefix}loss_{name}"] = s[STAT_CE + i] / n
    if not prefix:
        out["z"] = s[STAT_Z] / total
    return out


def measure_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5, windows: int = 5) -> float:
    """Achievable matmul FLOP/s of this process on ``device`` in ``dtype``: a 1024^3 GEMM repeated for about
    ``seconds``, split into ``windows`` timed windows, the fastest of which counts (on a shared machine a window
    slowed by other work would otherwise lower the peak and inflate MFU). Used as the MFU denominator where no
    vendor peak is known (CPUs)."""
    n = 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    windows = max(1, windows)
    window_seconds, best = seconds / windows, 0.0
    for _ in range(windows):
        reps, t0 = 0, time.perf_counter()
        while True:
            torch.mm(a, b)
            reps += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            if time.perf_counter() - t0 > window_seconds:
                break
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


class MetricsLog:
    """Appends one JSON object per line to ``run_dir/<name>`` (default metrics.jsonl) and drives a tqdm bar (rank 0
    only). A resumed run (``start_step`` > 0) first drops the records of steps >= ``keep_below`` (default
    ``start_step``), which the run will write again; a fresh run starts a new file."""

    def __init__(
        self,
        run_dir: str,
        total_steps: int,
        start_step: int,
        enabled: bool,
        *,
        name: str = METRICS_FILE,
        desc: str = "train",
        progress: bool = True,
        postfix: Callable[[dict[str, Any]], dict[str, str]] | None = None,
        keep_below: int | None = None,
    ):
        self.enabled = enabled
        self.path = os.path.join(run_dir, name)
        self.postfix = postfix or _default_postfix
        self.bar = None
        if not enabled:
            return
        if start_step > 0:
            truncate_after(self.path, start_step if keep_below is None else keep_below)
        elif os.path.exists(self.path):
            os.remove(self.path)

        self.bar = tqdm(
            total=total_steps, initial=start_step, desc=desc, unit="step", dynamic_ncols=True, disable=not progress
        )
        self.f = open(self.path, "a")

    def log(self, record: dict[str, Any], advance: bool = True) -> None:
        if not self.enabled:
            return
        self.f.write(json.dumps(record, allow_nan=True) + "\n")
        self.f.flush()
        if advance:
            self.bar.update(1)
            self.bar.set_postfix(self.postfix(record))

    def advance(self) -> None:
        """One step done without a record."""
        if self.enabled:
            self.bar.update(1)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.f.close()


def _default_postfix(record: dict[str, Any]) -> dict[str, str]:
    post = {"loss": f"{record.get('loss', float('nan')):.4f}", "lr": f"{record.get('lr', 0):.2e}"}
    if "tokens_per_s" in record:
        post["tok/s"] = f"{record['tokens_per_s']:.0f}"
    return post


def truncate_after(path: str, step: int) -> None:
    """Keep only the records of steps < ``step`` (a resumed run rewrites what follows), atomically."""
    if not os.path.exists(path):
        return
    keep = [line for line in read_metrics(path) if line.get("step", 0) < step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file; a torn last line (crash mid-write) is ignored."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
