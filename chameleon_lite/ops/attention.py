"""Modality-aware attention (ARCHITECTURE §5): the Python face and the pure-PyTorch reference.

allowed(i, j) = doc[i] == doc[j] and (j <= i or (span[i] != 0 and span[i] == span[j]))
A fully masked row outputs 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_mask_reference(doc_ids: torch.Tensor, span_ids: torch.Tensor) -> torch.Tensor:
    """doc_ids, span_ids: [B, L] int -> bool mask [B, L, L] (True = query i may read key j)."""
    L = doc_ids.shape[-1]
    same_doc = doc_ids.unsqueeze(-1) == doc_ids.unsqueeze(-2)
    causal = torch.ones(L, L, dtype=torch.bool, device=doc_ids.device).tril()
    span_i = span_ids.unsqueeze(-1)
    bidir = (span_i != 0) & (span_i == span_ids.unsqueeze(-2))
    return same_doc & (causal | bidir)


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


def modality_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor, span_ids: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """q: [B, L, Hq, D]; k, v: [B, L, Hkv, D]; doc_ids, span_ids: [B, L] int32 -> out [B, L, Hq, D] (autograd).

    Until the fused kernel is registered this runs SDPA with the mask materialised.
    """
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


def modality_attention_decode(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_lens: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Decode attention against a KV cache; see modality_attention_decode_reference for shapes."""
    return modality_attention_decode_reference(q, k_cache, v_cache, cache_lens, scale)
