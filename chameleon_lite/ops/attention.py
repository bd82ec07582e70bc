"""Modality-aware attention (ARCHITECTURE §5): the Python face, the fused ops' fake and autograd registrations, and
the pure-PyTorch reference (the oracle of the tests).

allowed(i, j) = doc[i] == doc[j] and (j <= i or (span[i] != 0 and span[i] == span[j]))
A fully masked row outputs 0.

``modality_attention`` runs the fused kernel (``chameleon_lite::attention_fwd`` / ``attention_bwd``, C++ in
csrc/cpu/attention.cpp, CUDA in csrc/cuda/attention.cuh) for fp32 and bf16 tensors (and fp16 on CUDA) on devices that
have it; other dtypes (fp64, fp16 on CPU) and devices without an implementation take the reference path (SDPA with
the mask materialised), explicitly.
``modality_attention_decode`` likewise runs ``chameleon_lite::attention_decode``. On CUDA (when the CUDA extension is
built) the fused forward, backward and decode run (head dims up to 128; bf16/fp16 on tensor cores on sm_80+, fp32 with
scalar FMAs); ``CHAMELEON_LITE_CUDA_ATTENTION=sdpa`` sends CUDA calls to the SDPA path instead.
"""

from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

from chameleon_lite.ops._loader import HAS_CUDA_EXT  # set: ops/__init__ loads the extensions first
from chameleon_lite.ops.verify import kernel_ok


def attention_mask_reference(doc_ids: torch.Tensor, span_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids, span_ids: [B, L] int -> bool mask [B, L, L] (True = query i may read key j)."""
    L = doc_ids.shape[-1]
    same_doc = doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)
    causal = torch.ones(L, L, dtype=torch.bool, device=doc_ids.device).tril()
    span_i = span_ids.unsqueeze(-1)
    bidir = (span_i != 0) & (span_i == span_ids.unsqueeze(-2))
    return same_doc & (causal | bidir)


def modality_attention_probs(
    q: torch.Tensor, k: torch.Tensor, doc_ids: torch.Tensor, span_ids: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The attention probabilities the model's attention uses: q [B, L, Hq, D], k [B, L, Hkv, D] -> [B, Hq, L, L]
    float32, softmax over the keys each query may read (the document/causal/bidirectional-span mask of
    :func:`attention_mask_reference`); a fully masked row is all zeros. ``probs @ v`` is the attention's output."""
    B, L, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    kk = k.float().repeat_interleave(Hq // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) * scale
    mask = attention_mask_reference(doc_ids, span_ids).unsqueeze(1)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def modality_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    span_ids: torch.Tensor,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Oracle. q: [B, L, Hq, D]; k, v: [B, L, Hkv, D]; doc_ids, span_ids: [B, L] int32 -> out like q
    (and lse [B, Hq, L] fp32 when return_lse). Computed in the input dtype's upcast (fp32 at least)."""
    B, L, Hq, D = q.shape
    Hkv = k.shape[2]
    if Hq % Hkv:
        raise ValueError(f"Hq={Hq} must be a multiple of Hkv={Hkv}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = q.transpose(1, 2).to(ct)
    kf = k.transpose(1, 2).to(ct).repeat_interleave(Hq // Hkv, dim=1)
    vf = v.transpose(1, 2).to(ct).repeat_interleave(Hq // Hkv, dim=1)
    mask = attention_mask_reference(doc_ids, span_ids).unsqueeze(1)  # [B, 1, L, L]
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # -inf on fully masked rows
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).unsqueeze(-1))
    out = torch.matmul(p, vf).transpose(1, 2).to(q.dtype)
    if return_lse:
        return out, lse.to(torch.float32)
    return out


# dtypes the fused kernels take, per device (fp16 has CUDA kernels only; on CPU it takes the SDPA path).
_FUSED_DTYPES = {"cpu": (torch.float32, torch.bfloat16), "cuda": (torch.float32, torch.bfloat16, torch.float16)}


def _has_kernel(t: torch.Tensor, op: str) -> bool:
    """Whether the fused kernel ``op`` ("attention": forward and backward, or "attention_decode") covers this tensor:
    fp32/bf16 on CPU; fp32/bf16/fp16 on CUDA when the CUDA extension is built, for head dims up to 128, unless
    CHAMELEON_LITE_CUDA_ATTENTION=sdpa; and the kernel passed its self-check on this device (ops.verify)."""
    if t.dtype not in _FUSED_DTYPES.get(t.device.type, ()):
        return False
    if t.device.type != "cpu" and not (
        HAS_CUDA_EXT and t.shape[-1] <= 128 and os.environ.get("CHAMELEON_LITE_CUDA_ATTENTION", "fused") != "sdpa"
    ):
        return False
    return kernel_ok(op, t.device, t.dtype)


@torch.library.register_fake("chameleon_lite::attention_fwd")
def _attention_fwd_fake(q, k, v, doc_ids, span_ids, scale):
    B, L, Hq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B, Hq, L), dtype=torch.float32)


@torch.library.register_fake("chameleon_lite::attention_bwd")
def _attention_bwd_fake(dout, q, k, v, out, lse, doc_ids, span_ids, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.register_fake("chameleon_lite::attention_decode")
def _attention_decode_fake(q, k_cache, v_cache, cache_lens, scale):
    return torch.empty_like(q)


def _fwd_setup_context(ctx, inputs, output):
    q, k, v, doc_ids, span_ids, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, doc_ids, span_ids, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _fwd_backward(ctx, dout, dlse):
    q, k, v, doc_ids, span_ids, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.chameleon_lite.attention_bwd(
        dout.contiguous(), q, k, v, out, lse, doc_ids, span_ids, ctx.scale
    )
    return dq, dk, dv, None, None, None


torch.library.register_autograd("chameleon_lite::attention_fwd", _fwd_backward, setup_context=_fwd_setup_context)


def _check_ids(q: torch.Tensor, doc_ids: torch.Tensor, span_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, L = q.shape[:2]
    for name, t in (("doc_ids", doc_ids), ("span_ids", span_ids)):
        if tuple(t.shape) != (B, L):
            raise ValueError(f"{name} must be [B, L] = [{B}, {L}], got {tuple(t.shape)}")
    return doc_ids.to(device=q.device, dtype=torch.int32), span_ids.to(device=q.device, dtype=torch.int32)


def modality_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    span_ids: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """q: [B, L, Hq, D]; k, v: [B, L, Hkv, D]; doc_ids, span_ids: [B, L] int32 -> out [B, L, Hq, D] (autograd).

    The fused kernel for fp32/bf16 on devices that have one; the SDPA reference path otherwise.
    """
    B, L, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if _has_kernel(q, "attention"):
        doc_ids, span_ids = _check_ids(q, doc_ids, span_ids)
        return torch.ops.chameleon_lite.attention_fwd(q, k, v, doc_ids, span_ids, scale)[0]
    if q.device.type == "cuda" and q.dtype in _FUSED_DTYPES["cuda"]:
        return modality_attention_flex(q, k, v, doc_ids, span_ids, scale)
    return modality_attention_sdpa(q, k, v, doc_ids, span_ids, scale)


@functools.cache
def _compiled_flex():
    # lazy: flex_attention's module is only needed where a kernel is off or failed its check
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)  # shapes go dynamic after the first recompile (prompts of many lengths)


def modality_attention_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    span_ids: torch.Tensor,
    scale: float | None = None,
    compiled: bool | None = None,
) -> torch.Tensor:
    """flex_attention with a block mask built from the document and span ids: PyTorch's own fused path, which a
    CUDA run takes when the fused kernel is off or failed its self-check. Compiled on CUDA (``compiled``; eager
    elsewhere, where it is a reference: flex_attention has no CPU backward)."""
    # lazy: see _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, L, Hq, D = q.shape
    doc, span = _check_ids(q, doc_ids, span_ids)

    def allowed(b, h, i, j):
        return (doc[b, i] == doc[b, j]) & ((j <= i) | ((span[b, i] != 0) & (span[b, i] == span[b, j])))

    mask = create_block_mask(allowed, B, None, L, L, device=q.device)
    run = _compiled_flex() if (q.device.type == "cuda" if compiled is None else compiled) else flex_attention
    out = run(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=mask,
        scale=scale,
        enable_gqa=Hq != k.shape[2],
    )
    return out.transpose(1, 2)


def modality_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    span_ids: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA with the mask materialised ([B, 1, L, L]): the path for dtypes/devices without a fused kernel, and the
    baseline of bench/bench_attention.py."""
    B, L, Hq, D = q.shape
    Hkv = k.shape[2]
    mask = attention_mask_reference(doc_ids, span_ids).unsqueeze(1)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv
    )
    # SDPA gives NaN on fully masked rows; the contract is 0.
    out = torch.nan_to_num(out, nan=0.0)
    return out.transpose(1, 2)


def modality_attention_decode_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """q: [B, Lq, Hq, D] (the Lq newest positions, causal among themselves); k_cache, v_cache: [B, S_max, Hkv, D];
    cache_lens: [B] int32 valid length including the new positions -> out [B, Lq, Hq, D]."""
    B, Lq, Hq, D = q.shape
    S = k_cache.shape[1]
    Hkv = k_cache.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    lens = cache_lens.to(torch.int64).view(B, 1, 1)
    qpos = lens - Lq + torch.arange(Lq, device=q.device).view(1, Lq, 1)  # absolute position of each query
    kpos = torch.arange(S, device=q.device).view(1, 1, S)
    mask = (kpos <= qpos) & (kpos < lens)  # [B, Lq, S]
    qf = q.transpose(1, 2).to(ct)
    kf = k_cache.transpose(1, 2).to(ct).repeat_interleave(Hq // Hkv, dim=1)
    vf = v_cache.transpose(1, 2).to(ct).repeat_interleave(Hq // Hkv, dim=1)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask.unsqueeze(1), float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)))
    return torch.matmul(p, vf).transpose(1, 2).to(q.dtype)


def check_cache_lens(cache_lens: torch.Tensor, n_new: int, size: int) -> None:
    """Every length in [n_new, size]: ValueError naming the first bad row (CPU), torch._assert_async (a device)."""
    ok = (cache_lens >= n_new) & (cache_lens <= size)
    if cache_lens.device.type != "cpu":
        torch._assert_async(ok.all(), f"attention_decode: a cache length lies outside [{n_new}, {size}]")
        return
    if not bool(ok.all()):
        b = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"attention_decode: cache_lens[{b}] = {int(cache_lens[b])} lies outside [{n_new}, {size}] (at least the "
            f"{n_new} new queries, at most the cache's {size} positions)"
        )


def modality_attention_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Decode attention against a KV cache; see modality_attention_decode_reference for shapes. Every cache length
    must lie in [Lq, S] (the new queries are its last Lq positions; S = the cache's size): on the CPU a length outside
    is an error at once, on a GPU a device-side assertion (no host sync), and the kernels clamp it besides, so a bad
    length can never read past the cache."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    check_cache_lens(cache_lens, q.shape[1], k_cache.shape[1])
    if _has_kernel(q, "attention_decode"):
        return torch.ops.chameleon_lite.attention_decode(
            q, k_cache, v_cache, cache_lens.to(device=q.device, dtype=torch.int32), scale
        )
    return modality_attention_decode_reference(q, k_cache, v_cache, cache_lens, scale)
