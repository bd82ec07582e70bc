"""Fused constrained sampling (ARCHITECTURE §6): the C++ op, its fake impl, and the sort-based reference.

One call per decode step turns logits ``[B, V]`` into next ids ``[B]`` (and optionally their logprobs).
The chain, per row, in fp32 (the kernel and :func:`sample_reference` follow it step for step):

1. CFG (when ``uncond_logits`` is given): ``z = uncond + cfg_scale * (cond - uncond)`` on the **raw
   logits**. Every later step except the repetition penalty is invariant to a per-row shift, so combining
   log-softmaxes instead would differ only in what the penalty sees.
2. Allowed ranges: ids outside every ``[lo, hi)`` of ``allowed_ranges[b]`` get ``-inf``.
3. Repetition penalty (CTRL): for each distinct id in ``penalty_ids[b]`` (``-1`` = padding),
   ``z / p`` if ``z > 0`` else ``z * p``.
4. Temperature 0 is greedy: ``argmax z`` with ties to the lowest id, logprob 0 (a point mass). Otherwise
   ``e = exp((z - max z) / T)`` (fp32; the multiplication is by ``1/T`` rounded to fp32).
5. top-k keeps ``e >= t_k`` (the k-th largest ``e``; ties at the boundary are kept, so more than k ids may
   survive); top-p then keeps the smallest top set ``{e >= t}`` whose mass reaches ``top_p`` of the top-k
   survivors' mass (ties kept); min-p keeps ``e >= min_p`` (``p_i >= min_p * p_max``). Ids whose ``e``
   underflows to 0 are never drawn.
6. The draw: ``u`` in ``[0, 1)`` from Philox4x32-10 keyed by ``seed`` with counter ``(step, row)``, so
   row ``b`` depends only on ``(seed, step, b)``, not on the batch size or thread count. The id is the
   first survivor, in id order, whose running mass exceeds ``u * W`` (``W`` = survivor mass, fp64);
   its logprob is ``log(e_id / W)``.

A row left with no candidate (every allowed range empty, or every allowed logit ``-inf``) raises
:class:`SamplingError`, as do NaN or ``+inf`` logits among the allowed ids.

The CPU kernel (csrc/cpu/sampling*.cpp, shared logic in csrc/common/) never sorts the vocabulary: one pass
finds the max, one computes ``e`` with exact counts and masses at a few pivots and collects the ids with
``e >= 2^-10``; top-k / top-p thresholds come from a radix selection over those candidates, or from
more pivot passes when a cut lies below them. It reads rows through their stride (``logits[:, -1]`` of
``[B, L, V]`` is not copied) and keeps one fp32 row buffer per thread. The AVX-512 build is chosen at run
time; ``CHAMELEON_LITE_SAMPLING_ISA=portable`` forces the portable one. The CUDA kernel (csrc/cuda/sampling.cuh, one
block per row, radix selection over the float keys for the top-k / top-p thresholds) draws the same ids for the same
seed and step. Tensors on a device without an implementation are sampled on the CPU and the results moved back.
"""

from __future__ import annotations

import functools

import torch

from chameleon_lite.errors import UserError
from chameleon_lite.ops._loader import load_extensions
from chameleon_lite.ops.verify import kernel_ok

Setting = float | int | torch.Tensor

_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_INT64 = 2**63 - 1


class SamplingError(UserError, ValueError):
    """Bad input to :func:`sample`: shapes, dtypes, out-of-range settings, ranges or ids, empty rows."""


@torch.library.register_fake("chameleon_lite::sample")
def _sample_fake(
    logits,
    uncond_logits,
    temperature,
    top_k,
    top_p,
    min_p,
    cfg_scale,
    repetition_penalty,
    allowed_ranges,
    penalty_ids,
    seed,
    step,
):
    b = logits.shape[0]
    return (logits.new_empty((b,), dtype=torch.int64), logits.new_empty((b,), dtype=torch.float32))


@torch.library.register_fake("chameleon_lite::sampling_uniforms")
def _uniforms_fake(rows, seed, step):
    return rows.new_empty(rows.shape, dtype=torch.float64)


@functools.lru_cache(maxsize=1024)
def _cached_scalar(value: float | int, dtype: torch.dtype) -> torch.Tensor:
    # Decode loops pass the same few settings every step; building six tensors per call would cost more
    # than the kernel at small B. The op only reads them.
    return torch.tensor(value, dtype=dtype)


def _scalar(value: float | int, dtype: torch.dtype, eager: bool) -> torch.Tensor:
    # Under FakeTensorMode or torch.compile tracing the tensor must be created in that context.
    return _cached_scalar(value, dtype) if eager else torch.tensor(value, dtype=dtype)


def _int_arg(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT64:
        raise SamplingError(f"sample: {name} must be an int in [0, 2**63), got {value!r}")
    return value


def _setting(name: str, value: Setting, batch: int, integer: bool, check, eager: bool) -> torch.Tensor:
    """A scalar or [B] setting as the op's tensor; Python scalars are checked here, tensors in the op."""
    dtype = torch.int64 if integer else torch.float32
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or value.numel() not in (1, batch):
            raise SamplingError(
                f"sample: {name} must be a scalar or a [B] tensor with B = {batch}, got shape {tuple(value.shape)}"
            )
        if integer and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
            raise SamplingError(f"sample: {name} must be an integer tensor, got {value.dtype}")
        if not integer and not value.is_floating_point():
            raise SamplingError(f"sample: {name} must be a floating-point tensor, got {value.dtype}")
        return value.to(device="cpu", dtype=dtype)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an int" if integer else "a number"
        raise SamplingError(f"sample: {name} must be {kind} or a [B] tensor, got {value!r}")
    reason = check(value)
    if reason:
        raise SamplingError(f"sample: {name} = {value!r} {reason}")
    return _scalar(value, dtype, eager)


def _finite_nonneg(v) -> str | None:
    return None if v == v and abs(v) != float("inf") and v >= 0 else "must be finite and >= 0 (0 = greedy)"


def _check_top_k(v) -> str | None:
    return None if v >= 0 else "must be >= 0 (0 = off)"


def _check_top_p(v) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1] (1 = off)"


def _check_min_p(v) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1] (0 = off)"


def _check_cfg(v) -> str | None:
    return None if v == v and abs(v) != float("inf") else "must be finite"


def _check_penalty(v) -> str | None:
    return None if v == v and abs(v) != float("inf") and v > 0 else "must be finite and > 0 (1 = off)"


def _check_logits(name: str, t, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise SamplingError(f"sample: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] == 0:
        raise SamplingError(f"sample: {name} must be [B, V] with V > 0, got shape {tuple(t.shape)}")
    if t.dtype not in _LOGIT_DTYPES:
        raise SamplingError(f"sample: {name} must be float32, bfloat16 or float16, got {t.dtype}")
    if like is not None and (t.shape != like.shape or t.dtype != like.dtype):
        raise SamplingError(
            f"sample: {name} must match logits ({tuple(like.shape)}, {like.dtype}), got {tuple(t.shape)}, {t.dtype}"
        )


def _check_index_tensor(name: str, t, batch: int, last: int | None) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64:
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise SamplingError(f"sample: {name} must be an int64 tensor, got {got}")
    want = 3 if last else 2
    if t.dim() != want or t.shape[0] != batch or (last and t.shape[2] != last):
        shape = "[B, R, 2]" if last else "[B, P]"
        raise SamplingError(f"sample: {name} must be {shape} with B = {batch}, got shape {tuple(t.shape)}")


def op_inputs(
    logits: torch.Tensor,
    *,
    seed: int,
    step: int,
    temperature: Setting = 1.0,
    top_k: Setting = 0,
    top_p: Setting = 1.0,
    min_p: Setting = 0.0,
    allowed_ranges: torch.Tensor | None = None,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: Setting | None = None,
    penalty_ids: torch.Tensor | None = None,
    repetition_penalty: Setting = 1.0,
) -> tuple:
    """The arguments of ``torch.ops.chameleon_lite.sample`` for :func:`sample`'s keywords (checked)."""
    _check_logits("logits", logits)
    batch = logits.shape[0]
    seed = _int_arg("seed", seed)
    step = _int_arg("step", step)
    if (uncond_logits is None) != (cfg_scale is None):
        raise SamplingError(
            "sample: uncond_logits and cfg_scale go together (CFG needs both), got only "
            + ("uncond_logits" if cfg_scale is None else "cfg_scale")
        )
    if uncond_logits is not None:
        _check_logits("uncond_logits", uncond_logits, like=logits)
    if allowed_ranges is not None:
        _check_index_tensor("allowed_ranges", allowed_ranges, batch, last=2)
        if allowed_ranges.shape[1] == 0:
            raise SamplingError("sample: allowed_ranges needs at least one [lo, hi) slot per row (R >= 1)")
    if penalty_ids is not None:
        _check_index_tensor("penalty_ids", penalty_ids, batch, last=None)
    eager = type(logits) is torch.Tensor and not torch.compiler.is_compiling()
    # Drawing ids is not differentiable; detaching keeps autograd from wrapping the op's outputs.
    return (
        logits.detach(),
        None if uncond_logits is None else uncond_logits.detach(),
        _setting("temperature", temperature, batch, False, _finite_nonneg, eager),
        _setting("top_k", top_k, batch, True, _check_top_k, eager),
        _setting("top_p", top_p, batch, False, _check_top_p, eager),
        _setting("min_p", min_p, batch, False, _check_min_p, eager),
        _setting("cfg_scale", 1.0 if cfg_scale is None else cfg_scale, batch, False, _check_cfg, eager),
        _setting("repetition_penalty", repetition_penalty, batch, False, _check_penalty, eager),
        allowed_ranges,
        penalty_ids,
        seed,
        step,
    )


def _has_impl(device_type: str) -> bool:
    key = {"cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("chameleon_lite::sample", key)


def sample(
    logits: torch.Tensor,
    *,
    seed: int,
    step: int,
    temperature: Setting = 1.0,
    top_k: Setting = 0,
    top_p: Setting = 1.0,
    min_p: Setting = 0.0,
    allowed_ranges: torch.Tensor | None = None,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: Setting | None = None,
    penalty_ids: torch.Tensor | None = None,
    repetition_penalty: Setting = 1.0,
    return_logprobs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Draw one next id per row under the constraints (semantics in the module docstring).

    logits, uncond_logits: [B, V] float32 / bfloat16 / float16 (uncond_logits with cfg_scale for CFG).
    Settings (temperature, top_k, top_p, min_p, cfg_scale, repetition_penalty): a Python scalar or a [B]
    tensor each; temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), top_p in (0, 1], min_p in [0, 1],
    repetition_penalty > 0 (1 = off). allowed_ranges: int64 [B, R, 2] half-open [lo, hi) slots, unused
    slots (0, 0). penalty_ids: int64 [B, P], -1 = padding. seed, step: ints in [0, 2**63).
    Returns ids int64 [B], and logprobs float32 [B] when return_logprobs (log-prob of the chosen id under
    the renormalised distribution it was drawn from; 0 for greedy rows); neither carries a gradient.
    Raises SamplingError on bad input.
    """
    load_extensions()
    settings = dict(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        allowed_ranges=allowed_ranges,
        uncond_logits=uncond_logits,
        cfg_scale=cfg_scale,
        penalty_ids=penalty_ids,
        repetition_penalty=repetition_penalty,
    )
    args = op_inputs(logits, seed=seed, step=step, **settings)
    device = logits.device
    run_on = device if device.type == "cpu" or _has_impl(device.type) else torch.device("cpu")
    if not kernel_ok("sample", run_on, logits.dtype):  # turned off, or it failed its self-check: the reference
        return sample_reference(logits, seed=seed, step=step, return_logprobs=return_logprobs, **settings)
    if run_on != device:
        args = tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args)
    try:
        ids, logprobs = torch.ops.chameleon_lite.sample(*args)
    except ValueError as e:
        raise SamplingError(str(e)) from None
    ids, logprobs = ids.to(device), logprobs.to(device)
    return (ids, logprobs) if return_logprobs else ids


def sampling_uniforms(seed: int, step: int, batch: int) -> torch.Tensor:
    """The uniforms in [0, 1) that :func:`sample` draws for rows 0..batch-1 at (seed, step): float64 [batch]."""
    load_extensions()
    rows = torch.arange(batch, dtype=torch.int64)
    return torch.ops.chameleon_lite.sampling_uniforms(rows, _int_arg("seed", seed), _int_arg("step", step))


def _per_row(value: Setting, batch: int, dtype: torch.dtype) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return t.to(dtype).reshape(-1).expand(batch) if t.numel() == 1 else t.to(dtype).reshape(batch)


def sample_reference(
    logits: torch.Tensor,
    *,
    seed: int,
    step: int,
    temperature: Setting = 1.0,
    top_k: Setting = 0,
    top_p: Setting = 1.0,
    min_p: Setting = 0.0,
    allowed_ranges: torch.Tensor | None = None,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: Setting | None = None,
    penalty_ids: torch.Tensor | None = None,
    repetition_penalty: Setting = 1.0,
    return_logprobs: bool = False,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch, sort-based version of :func:`sample` with the same semantics and the same draws.

    Same arguments and returns as :func:`sample`; `uniforms` (float64 [B]) overrides the Philox draws.
    Given the same uniforms it picks the same ids, up to the last bits of fp summation order at a boundary.
    """
    args = op_inputs(
        logits,
        seed=seed,
        step=step,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        allowed_ranges=allowed_ranges,
        uncond_logits=uncond_logits,
        cfg_scale=cfg_scale,
        penalty_ids=penalty_ids,
        repetition_penalty=repetition_penalty,
    )
    _, _, temp_t, k_t, p_t, minp_t, cfg_t, pen_t, _, _, _, _ = args
    b, v = logits.shape
    temp, ks, ps, minps = (
        _per_row(temp_t, b, torch.float32),
        _per_row(k_t, b, torch.int64),
        _per_row(p_t, b, torch.float32),
        _per_row(minp_t, b, torch.float32),
    )
    cfgs, pens = _per_row(cfg_t, b, torch.float32), _per_row(pen_t, b, torch.float32)
    u = sampling_uniforms(seed, step, b) if uniforms is None else uniforms.to(torch.float64)
    z = logits.float().cpu()
    if uncond_logits is not None:
        un = uncond_logits.float().cpu()
        z = un + cfgs[:, None] * (z - un)
    if allowed_ranges is not None:
        ids = torch.arange(v)
        lo, hi = allowed_ranges[..., 0].cpu(), allowed_ranges[..., 1].cpu()
        allowed = ((ids[None, None, :] >= lo[..., None]) & (ids[None, None, :] < hi[..., None])).any(1)
        if not bool(allowed.any(1).all()):
            raise SamplingError(f"sample: row {int((~allowed.any(1)).nonzero()[0])} has no allowed id")
        z = z.masked_fill(~allowed, float("-inf"))
    if penalty_ids is not None:
        for r in range(b):
            pid = penalty_ids[r].cpu()
            pid = pid[pid >= 0].unique()
            val = z[r, pid]
            z[r, pid] = torch.where(val > 0, val / pens[r], val * pens[r])
    out_ids = torch.empty(b, dtype=torch.int64)
    out_lp = torch.empty(b, dtype=torch.float32)
    for r in range(b):
        row = z[r]
        zmax = row.max()
        if torch.isnan(zmax) or zmax == float("inf") or zmax == float("-inf"):
            raise SamplingError(f"sample: row {r} has no usable logits (NaN, +inf, or all -inf)")
        if float(temp[r]) == 0.0:
            out_ids[r] = torch.argmax(row)
            out_lp[r] = 0.0
            continue
        inv_t = torch.tensor(1.0, dtype=torch.float32) / temp[r]
        e = torch.exp((row - zmax) * inv_t)
        srt = torch.sort(e, descending=True).values
        npos = int((srt > 0).sum())
        k = int(ks[r])
        tau = torch.tensor(float.fromhex("0x1p-149"), dtype=torch.float32)  # smallest positive: support e > 0
        if 0 < k < npos:
            tau = srt[k - 1]
        if float(ps[r]) < 1.0:
            kept = srt[srt >= tau].double()
            csum = torch.cumsum(kept, 0)
            j = int(torch.searchsorted(csum, float(ps[r]) * float(csum[-1])))
            tau = torch.maximum(tau, srt[min(j, kept.numel() - 1)])
        if float(minps[r]) > 0.0:
            tau = torch.maximum(tau, minps[r])
        keep = (e >= tau) & (e > 0)
        w = torch.where(keep, e, torch.zeros_like(e)).double()
        total = float(w.sum())
        cum = torch.cumsum(w, 0)
        idx = int(torch.searchsorted(cum, float(u[r]) * total, right=True))
        if idx >= v or not bool(keep[idx]):
            idx = int(keep.nonzero().max())
        out_ids[r] = idx
        out_lp[r] = float(torch.log(e[idx].double()) - torch.log(torch.tensor(total, dtype=torch.float64)))
    out_ids, out_lp = out_ids.to(logits.device), out_lp.to(logits.device)
    return (out_ids, out_lp) if return_logprobs else out_ids
