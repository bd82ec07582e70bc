"""Preallocated per-layer key/value cache with per-row write positions (gpt-fast style: buffers, no reallocation)."""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one attention layer for ``batch`` rows of up to ``max_len`` positions.

    k_cache, v_cache: [batch, max_len, n_kv_heads, head_dim] in ``dtype``. Rows advance independently: the
    caller passes the absolute positions to write (``[B, Lq]`` int64), the model keeps the valid lengths.
    """

    def __init__(
        self,
        batch: int,
        max_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch, max_len, n_kv_heads, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k_cache.shape[1]

    def write_prefix(self, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """k, v: [B, L, Hkv, D] -> positions [0, L) of the cache rows ``rows`` [B] int64 (default the first B)."""
        L = k.shape[1]
        rows = slice(k.shape[0]) if rows is None else rows
        self.k_cache[rows, :L] = k.to(self.k_cache.dtype)
        self.v_cache[rows, :L] = v.to(self.v_cache.dtype)

    def write_at(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """k, v: [B, Lq, Hkv, D]; pos: [B, Lq] int64 absolute positions to write, per row."""
        rows = torch.arange(k.shape[0], device=pos.device).unsqueeze(1)
        self.k_cache[rows, pos] = k.to(self.k_cache.dtype)
        self.v_cache[rows, pos] = v.to(self.v_cache.dtype)
