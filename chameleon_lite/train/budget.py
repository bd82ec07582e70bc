"""Fitting a pretraining run into a wall-clock budget.

Three steps, each recorded in one JSON file (``calibration.json``) so that a resumed run keeps the learning-rate
schedule it started with:

1. :func:`measure_step_seconds` times a few optimiser steps of the model on this machine, with the trainer's own
   loss function and compute dtype, on the run's first batch;
2. :func:`fit_steps` turns the minutes the run may take into a step count at that step time;
3. after the run's warm-up (whose learning rates do not depend on the step count), :func:`replan_steps` refits
   the count to the median step time the run itself logged (a step timed outside the run misses its loader, its
   statistics and the machine's noise);
4. with the warmup-stable-decay schedule, whose rate does not depend on the count until its decay begins either,
   :func:`plan_decay` fits the count once more where the decay would begin, to the wall time the run has left and
   the wall time per step it actually took so far (validation passes and checkpoints included), so that the run
   ends on its budget instead of a safety margin short of it.
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
# the same share for a plan that a later one corrects (the WSD run's plan after its warm-up only places the decay)
# and for the last plan, whose step time is the run's own wall time per step with its validations and checkpoints
PLAN_SHARE = 0.95


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


def fit_steps(
    minutes: float, step_s: float, min_steps: int, max_steps: int, floor: int = 0, share: float = STEP_TIME_SHARE
) -> int:
    """Optimiser steps of ``step_s`` seconds in ``share`` of ``minutes``, within [max(min_steps, floor),
    max_steps]."""
    return int(min(max_steps, max(min_steps, floor, 60.0 * minutes * share / step_s)))


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


def replan_steps(
    path: str, run: str, first: int, warmup: int, min_steps: int, max_steps: int, share: float = STEP_TIME_SHARE
) -> int:
    """After ``warmup`` steps of a run planned for ``first``: the step count that fits the record's
    ``pretrain_minutes`` at the median step time the run measured (never fewer than the warm-up), recorded in the
    calibration file ``path`` so that a resumed run keeps it."""
    rec = read_json(path, "pretraining calibration")
    step_s = measured_step_seconds(run, warmup) if warmup else None
    if step_s is None:
        steps = first
    else:
        steps = fit_steps(rec["pretrain_minutes"], step_s, min_steps, max_steps, floor=warmup, share=share)
        print(
            f"pretraining: the warm-up ran at {step_s:.2f} s per step (timed beforehand: {rec['step_seconds']:.2f} s) -> "
            f"{steps} steps instead of {first}"
        )
    rec.update(replanned_steps=steps, warmup=warmup, run_step_seconds=None if step_s is None else round(step_s, 4))
    write_json_atomic(path, rec)
    return steps


def add_seconds(path: str, phase: str, seconds: float) -> None:
    """Add ``seconds`` of wall time to ``phase`` of the run's time in the calibration record ``path`` (a phase run
    in several processes sums them; the time of a process that was interrupted is not counted)."""
    rec = read_json(path, "pretraining calibration")
    spent = dict(rec.get("seconds", {}))
    spent[phase] = round(spent.get(phase, 0.0) + seconds, 3)
    rec["seconds"] = spent
    write_json_atomic(path, rec)


def decay_plan(path: str) -> tuple[int, float] | None:
    """The step count and decay share fixed by :func:`plan_decay`, or None before that."""
    if not os.path.exists(path):
        return None
    rec = read_json(path, "pretraining calibration")
    if "final_steps" not in rec:
        return None
    total = int(rec["final_steps"])
    return total, (total - int(rec["decay_from"])) / total


def plan_decay(path: str, done: int, warmup: int, max_steps: int) -> tuple[int, float]:
    """At step ``done``, where a WSD run's decay begins: the step count that ends the run on the record's
    ``pretrain_minutes``, and the decay share that starts the decay at ``done`` (its learning rates so far do not
    change). The steps left are PLAN_SHARE of the seconds left at the wall time per step since the warm-up
    (optimiser steps, validation passes and checkpoints). The decay gets at least a tenth of the steps done, even
    past the budget (a run must end on a decayed rate), and never more than ``max_steps`` in all. Recorded in
    ``path`` so that a resumed run keeps it."""
    rec = read_json(path, "pretraining calibration")
    spent = rec.get("seconds", {})
    used = sum(spent.values())
    left = 60.0 * rec["pretrain_minutes"] - used
    stable = done - warmup
    if stable > 0 and spent.get("stable", 0.0) > 0:
        per_step = spent["stable"] / stable
    else:  # nothing timed since the warm-up: its median step time
        per_step = float(rec.get("run_step_seconds") or rec["step_seconds"])
    n = max(int(max(left, 0.0) * PLAN_SHARE / per_step), round(done / 10), 1)
    n = max(1, min(n, max_steps - done))
    total = done + n
    rec.update(
        final_steps=total,
        decay_from=done,
        decay_step_seconds=round(per_step, 4),
        seconds_left=round(left, 1),
    )
    write_json_atomic(path, rec)
    print(
        f"pretraining: {used / 60:.1f} of {rec['pretrain_minutes']:.1f} minutes used at step {done} "
        f"({per_step:.2f} s per step with validation and checkpoints) -> the decay runs {n} steps, to {total}"
    )
    return total, n / total
