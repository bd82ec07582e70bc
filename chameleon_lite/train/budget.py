"""Fitting a pretraining run into a wall-clock budget.

Three steps, each recorded in one JSON file (``calibration.json``) so that a resumed run keeps the learning-rate
schedule it started with:

1. :func:`measure_step_seconds` times a few optimiser steps of the model on this machine, with the trainer's own
   loss function and compute dtype, on the run's first batch;
2. :func:`fit_steps` turns the minutes the run may take into a step count at that step time;
3. after the run's warm-up (whose learning rates do not depend on the step count), :func:`replan_steps` refits
   the count to the median step time the run itself logged (a step timed outside the run misses its loader, its
   statistics and the machine's noise).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch

from chameleon_lite.data.loader import PackedLoader
from chameleon_lite.files import read_json, write_json_atomic
from chameleon_lite.model.transformer import build_model
from chameleon_lite.train.config import PretrainConfig
from chameleon_lite.train.metrics import METRICS_FILE
from chameleon_lite.train.trainer import compute_dtype, forward_losses, make_loss_terms

# the share of the minutes planned as optimiser steps at the measured step time; the rest covers validation
# passes, checkpoints and the step time drifting up later in the run (on a shared 2-core EPYC the later steps of the
# default quickstart ran up to 25 % slower than its warm-up, and with a share of 0.92 the whole run took 31.3 min)
STEP_TIME_SHARE = 0.80


def measure_step_seconds(cfg: PretrainConfig, vocab_size: int, steps: int = 5, shards: str | None = None) -> float:
    """Median wall time of one optimiser step of ``cfg``'s model in this process's thread setting, with the loss
    function and dtype the trainer uses for ``cfg`` (the first two steps, allocation and compilation, excluded).
    The batch is the first of ``shards`` when given (their packed documents are what the attention kernel skips
    over, so they time what training will), else random ids in one document per row."""
    # the model exactly as the trainer configures it (its context covers a packed row's positions, which continue a
    # document begun in the row before and so can pass seq_len)
    model = build_model(cfg.model_config(vocab_size, ""), seed=0).train()
    loss_terms = make_loss_terms(model, compile_whole=cfg.compile)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = _first_batch(cfg, vocab_size, shards)
    dtype = compute_dtype(cfg, torch.device("cpu"))
    warmup = 2  # the first steps allocate (and compile): slower than the rest
    times = []
    for _ in range(steps + warmup):
        t = time.perf_counter()
        ce, _ = forward_losses(loss_terms, batch, dtype)
        ce.mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    timed = sorted(times[warmup:])
    return timed[len(timed) // 2]


def _first_batch(cfg: PretrainConfig, vocab_size: int, shards: str | None) -> dict[str, torch.Tensor]:
    B, L = cfg.batch_size, cfg.seq_len
    if shards:
        return next(iter(PackedLoader(shards, L, B, seed=0)))
    ids = torch.randint(0, vocab_size, (B, L + 1), generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros(B, L, dtype=torch.int64)
    return {
        "input_ids": ids[:, :-1],
        "positions": torch.arange(L).expand(B, L),
        "doc_ids": zeros,
        "span_ids": zeros,
        "targets": ids[:, 1:],
    }


def fit_steps(minutes: float, step_s: float, min_steps: int, max_steps: int, floor: int = 0) -> int:
    """Optimiser steps of ``step_s`` seconds in STEP_TIME_SHARE of ``minutes``, within [max(min_steps, floor),
    max_steps]."""
    return int(min(max_steps, max(min_steps, floor, 60.0 * minutes * STEP_TIME_SHARE / step_s)))


def read_plan(path: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The calibration record in ``path`` when it was made for ``key`` (the settings a step time depends on)."""
    if not os.path.exists(path):
        return None
    rec = read_json(path, "pretraining calibration")
    return rec if rec.get("key") == key else None


def replanned_steps(path: str) -> int | None:
    """The step count fixed after the warm-up (see :func:`replan_steps`), or None before that."""
    if not os.path.exists(path):
        return None
    steps = read_json(path, "pretraining calibration").get("replanned_steps")
    return int(steps) if steps is not None else None


def measured_step_seconds(run: str, upto: int) -> float | None:
    """Median ``step_time`` of the run's steps before ``upto`` (its first step, which allocates, left out when
    there are others), from its metrics.jsonl; None when it logged none."""
    path = os.path.join(run, METRICS_FILE)
    times: dict[int, float] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if "step_time" in r and r.get("step", upto) < upto:
                    times[int(r["step"])] = float(r["step_time"])
    if len(times) > 1:
        times.pop(min(times))
    if not times:
        return None
    timed = sorted(times.values())
    return timed[len(timed) // 2]


def replan_steps(path: str, run: str, first: int, warmup: int, min_steps: int, max_steps: int) -> int:
    """After ``warmup`` steps of a run planned for ``first``: the step count that fits the record's
    ``pretrain_minutes`` at the median step time the run measured (never fewer than the warm-up), recorded in the
    calibration file ``path`` so that a resumed run keeps it."""
    rec = read_json(path, "pretraining calibration")
    step_s = measured_step_seconds(run, warmup) if warmup else None
    if step_s is None:
        steps = first
    else:
        steps = fit_steps(rec["pretrain_minutes"], step_s, min_steps, max_steps, floor=warmup)
        print(
            f"pretraining: the warm-up ran at {step_s:.2f} s per step (timed beforehand: {rec['step_seconds']:.2f} s) -> "
            f"{steps} steps instead of {first}"
        )
    rec.update(replanned_steps=steps, warmup=warmup, run_step_seconds=None if step_s is None else round(step_s, 4))
    write_json_atomic(path, rec)
    return steps
