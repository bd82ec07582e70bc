"""Learning-rate schedules: linear warm-up, then either cosine decay to a floor, or warmup-stable-decay (WSD: the
peak rate held, then a linear decay to the floor over the last ``decay_frac`` of the steps). A pure function of the
step, so a resumed run needs no scheduler state.

WSD is what lets a run be fitted to a wall-clock budget while it runs: until its decay begins the rate does not
depend on the step count, so the count can be refitted to the time left without changing a step already taken
(``quickstart`` refits it at the decay's start, see train/budget.py)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd")


def lr_at(
    step: int,
    *,
    lr: float,
    warmup: int,
    total: int,
    min_lr_ratio: float,
    schedule: str = "cosine",
    decay_frac: float = 0.3,
) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    floor = lr * min_lr_ratio
    if schedule == "wsd":
        start = decay_start(total, warmup, decay_frac)
        if step < start:
            return lr
        t = min((step - start + 1) / max(total - start, 1), 1.0)
        return lr + (floor - lr) * t
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (have {', '.join(SCHEDULES)})")
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def decay_start(total: int, warmup: int, decay_frac: float) -> int:
    """The first step of a WSD run's decay: the last ``decay_frac`` of ``total`` steps (never inside the warm-up)."""
    return max(warmup, total - int(round(decay_frac * total)))
