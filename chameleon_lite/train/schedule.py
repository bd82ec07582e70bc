"""Learning-rate schedule: linear warm-up, then cosine decay to a floor. A pure function of the step, so a
resumed run needs no scheduler state."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_lr_ratio: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
