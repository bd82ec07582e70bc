"""The decoder-only early-fusion transformer over the unified vocabulary (ARCHITECTURE §2-§5).

RMSNorm, QK-norm per head before RoPE (RMS, or Chameleon's per-head LayerNorm), RoPE indexed by per-document positions, SwiGLU, pre- or post-norm
("swin-norm") residual placement, GQA, tied or untied embeddings. All attention goes through
``chameleon_lite.ops.modality_attention`` (training and prompts) and ``modality_attention_decode`` (new tokens).
Build on the meta device, move with ``to_empty``, then call ``init_weights``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from chameleon_lite import ops
from chameleon_lite.errors import ConfigError
from chameleon_lite.model.config import ModelConfig
from chameleon_lite.model.kv_cache import KVCache


def rope_table(
    head_dim: int, max_len: int, theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [max_len, head_dim // 2] fp32 for positions 0..max_len-1."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim))
    ang = torch.outer(torch.arange(max_len, device=device, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, L, H, D]; cos, sin: [B, L, D/2] -> x rotated in (first half, second half) pairs, dtype of x."""
    return ops.rope(x, cos, sin)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; when ``Transformer.use_bf16_weights`` gave the layer a bf16 copy, the product with that copy:
    through the weight-only bf16 kernel for a few float32 rows (a decode step), else through the GEMM of x's dtype
    (a prompt), so every path computes the same function."""
    w16 = layer._buffers.get("weight_bf16")
    if w16 is None:
        return _bf16_rows(x, layer.weight) if _bf16_step(x, layer.weight) else layer(x)
    if ops.linear_fused_supported(x, w16):
        return torch.ops.chameleon_lite.linear_bf16w(x, w16)
    return F.linear(x, w16.to(x.dtype))


def _bf16_step(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``x @ w.T`` is a few bf16 rows against bf16 weights (a decode step of a model run in bf16): then the
    weight-only kernel, which streams bf16 weights at 1.5-2x the rate of the bf16 GEMV (measured on AVX-512-BF16:
    22-34 against 14-19 GB/s), takes the rows widened to float32 and gives back bf16 (fp32 accumulation either way)."""
    return x.dtype == torch.bfloat16 and w.dtype == torch.bfloat16 and ops.linear_fused_supported(x.float(), w)


def _bf16_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.chameleon_lite.linear_bf16w(x.float(), w).to(torch.bfloat16)


class Packed(NamedTuple):
    """Attention over packed documents (training, prompts): each position's document and span id, [B, L] int32.
    ``fill_cache``: also write the keys and values into the KV cache from position 0 (a prompt), into the cache rows
    ``cache_rows`` [B] int64 (default the first B)."""

    doc_ids: torch.Tensor
    span_ids: torch.Tensor
    fill_cache: bool = False
    cache_rows: torch.Tensor | None = None


class CachedStep(NamedTuple):
    """Attention of new tokens over the KV cache (decode): the cache slot of each new token [B, L] int64 and each
    row's cache length after the write [B] int32."""

    write_pos: torch.Tensor
    cache_lens: torch.Tensor


class Route(NamedTuple):
    """Where each modality's tokens sit in the flattened [B * L] batch, for a modality-untied model: the positions
    of text (specials included), image and audio tokens, and the inverse of their concatenation."""

    index: tuple[torch.Tensor, ...]
    inverse: torch.Tensor


def route_of(input_ids: torch.Tensor, cfg: ModelConfig) -> Route:
    """The :class:`Route` of a batch of ids, by the vocabulary's id ranges (no learned router)."""
    flat = input_ids.reshape(-1)
    modality = (flat >= cfg.image_start).to(torch.int64) + (flat >= cfg.audio_start).to(torch.int64)
    index = tuple((modality == m).nonzero().squeeze(1) for m in range(3))
    order = torch.cat(index)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return Route(index, inverse)


def per_modality(fns: list, x: torch.Tensor, route: Route) -> torch.Tensor:
    """x [B, L, D] -> [B, L, D']: each modality's rows through its own ``fns[m]``, one call per modality (a GEMM
    over all its rows, not a loop over tokens). Every copy runs, on no rows when its modality is absent, so each
    takes part in every backward (FSDP's hooks and gradients stay the same on every rank)."""
    B, L, D = x.shape
    flat = x.reshape(B * L, D)
    parts = [fn(flat.index_select(0, idx)) for fn, idx in zip(fns, route.index)]
    return torch.cat(parts).index_select(0, route.inverse).view(B, L, -1)


def _apply(module: nn.Module | nn.ModuleList, x: torch.Tensor, route: Route | None, fn=None) -> torch.Tensor:
    """``module`` (or ``fn(module, x)``) on x; a ModuleList of per-modality copies through :func:`per_modality`."""
    call = fn or (lambda m, t: m(t))
    if isinstance(module, nn.ModuleList):
        return per_modality([lambda t, m=m: call(m, t) for m in module], x, route)
    return call(module, x)


def _copies(cfg: ModelConfig, part: str, make) -> nn.Module:
    """One module, or one per modality when ``part`` is untied."""
    return nn.ModuleList([make() for _ in range(3)]) if part in cfg.untied_parts else make()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast x may be bf16 while the gain is an fp32 master weight: the reference casts the gain to x's
        # dtype, which keeps PyTorch's fused kernel (it accumulates in fp32 either way).
        return ops.rms_norm(x, self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class HeadLayerNorm(nn.Module):
    """Chameleon's q/k norm: a LayerNorm over head_dim (mean removed) with a gain and a bias of its own for every
    head. The [heads * head_dim] parameters are kept flat (vectors, as every other norm's), viewed per head here."""

    def __init__(self, heads: int, head_dim: int, eps: float):
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, head_dim, eps
        self.weight = nn.Parameter(torch.ones(heads * head_dim))
        self.bias = nn.Parameter(torch.zeros(heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, heads, head_dim]."""
        shape = (self.heads, self.head_dim)
        y = F.layer_norm(x, (self.head_dim,), eps=self.eps)
        return (y * self.weight.view(shape).to(y.dtype) + self.bias.view(shape).to(y.dtype)).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)


def _qk_norm(cfg: ModelConfig, heads: int) -> nn.Module | None:
    if not cfg.qk_norm:
        return None
    if cfg.qk_norm_type == "head_layernorm":
        return HeadLayerNorm(heads, cfg.head_dim, cfg.qk_norm_eps)
    return RMSNorm(cfg.head_dim, cfg.norm_eps)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        # One matmul for q, k and v: fewer, larger GEMMs are what small CPU shapes need.
        qkv = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        self.wqkv = _copies(cfg, "attention", lambda: nn.Linear(cfg.dim, qkv, bias=False))
        self.wo = _copies(cfg, "attention", lambda: nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False))
        self.q_norm = _copies(cfg, "attention", lambda: _qk_norm(cfg, cfg.n_heads)) if cfg.qk_norm else None
        self.k_norm = _copies(cfg, "attention", lambda: _qk_norm(cfg, cfg.n_kv_heads)) if cfg.qk_norm else None
        self.kv_cache: KVCache | None = None
        self.probs: list[torch.Tensor] | None = None  # a list: packed forwards append their attention probabilities

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, at: Packed | CachedStep, route: Route | None = None
    ) -> torch.Tensor:
        """x: [B, L, dim]; cos/sin: [B, L, D/2]; ``at``: which attention (:class:`Packed` or :class:`CachedStep`);
        ``route``: the tokens' modalities, for untied projections."""
        B, L, _ = x.shape
        hq, hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = _apply(self.wqkv, x, route, linear).split([hq * hd, hkv * hd, hkv * hd], dim=-1)
        if self.q_norm is not None:
            q = _apply(self.q_norm, q, route, lambda m, t: m(t.unflatten(-1, (hq, hd))).flatten(-2))
            k = _apply(self.k_norm, k, route, lambda m, t: m(t.unflatten(-1, (hkv, hd))).flatten(-2))
        q, k, v = q.view(B, L, hq, hd), k.view(B, L, hkv, hd), v.reshape(B, L, hkv, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(at, CachedStep):
            self.kv_cache.write_at(k, v, at.write_pos)
            out = ops.modality_attention_decode(q, self.kv_cache.k_cache[:B], self.kv_cache.v_cache[:B], at.cache_lens)
        else:
            if at.fill_cache:
                self.kv_cache.write_prefix(k, v, at.cache_rows)
            out = ops.modality_attention(q, k, v, at.doc_ids, at.span_ids)
            if self.probs is not None:
                self.probs.append(ops.modality_attention_probs(q, k, at.doc_ids, at.span_ids).cpu())
        return _apply(self.wo, out.reshape(B, L, hq * hd), route, linear)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ffn_dim = cfg.ffn_dim
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)  # gate and up projections in one GEMM
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = linear(self.w13, x).split(self.ffn_dim, dim=-1)
        return linear(self.w2, F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.post_norm = cfg.norm_placement == "post"
        self.attention = Attention(cfg)
        self.feed_forward = _copies(cfg, "ffn", lambda: FeedForward(cfg))
        self.attention_norm = _copies(cfg, "norms", lambda: RMSNorm(cfg.dim, cfg.norm_eps))
        self.ffn_norm = _copies(cfg, "norms", lambda: RMSNorm(cfg.dim, cfg.norm_eps))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, at: Packed | CachedStep, route: Route | None = None
    ) -> torch.Tensor:
        def norm(m, t):
            return _apply(m, t, route)

        if self.post_norm:
            h = x + norm(self.attention_norm, self.attention(x, cos, sin, at, route))
            return h + norm(self.ffn_norm, _apply(self.feed_forward, h, route))
        h = x + self.attention(norm(self.attention_norm, x), cos, sin, at, route)
        return h + _apply(self.feed_forward, norm(self.ffn_norm, h), route)


class Transformer(nn.Module):
    """Decoder-only transformer. Build with ``Transformer(cfg)`` under ``torch.device("meta")``, then
    ``to_empty(device=...)`` and ``init_weights()``; or build on a real device and call ``init_weights()``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # A ModuleDict keyed by index keeps parameter names stable under FSDP / activation-checkpoint wrapping.
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_table(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.tok_embeddings.weight.device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("cache_lens", torch.zeros(0, dtype=torch.int32), persistent=False)

    # ---- initialisation -------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise every parameter and the RoPE table in place (after ``to_empty``). Residual-branch output
        projections are scaled by 1/sqrt(2 * n_layers) so the residual stream does not grow with depth."""
        cfg = self.config
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.tok_embeddings.weight.device).manual_seed(seed)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        emb_std = cfg.init_std if cfg.tie_embeddings else 1.0
        nn.init.normal_(self.tok_embeddings.weight, 0.0, emb_std, generator=gen)

        def each(m: nn.Module | nn.ModuleList | None) -> list[nn.Module]:
            return [] if m is None else list(m) if isinstance(m, nn.ModuleList) else [m]

        for block in self.layers.values():
            ffns = each(block.feed_forward)
            for w in each(block.attention.wqkv):
                nn.init.normal_(w.weight, 0.0, cfg.init_std, generator=gen)
            for w in each(block.attention.wo):
                nn.init.normal_(w.weight, 0.0, out_std, generator=gen)
            for f in ffns:
                nn.init.normal_(f.w13.weight, 0.0, cfg.init_std, generator=gen)
            for f in ffns:
                nn.init.normal_(f.w2.weight, 0.0, out_std, generator=gen)
            parts = (block.attention_norm, block.ffn_norm, block.attention.q_norm, block.attention.k_norm)
            for m in (n for part in parts for n in each(part)):
                m.reset_parameters()
        self.norm.reset_parameters()
        if self.output is not None:
            nn.init.normal_(self.output.weight, 0.0, cfg.dim**-0.5, generator=gen)
        self.init_buffers()

    @torch.no_grad()
    def init_buffers(self) -> None:
        """Recompute the non-persistent buffers (after ``to_empty`` or loading weights)."""
        cfg = self.config
        cos, sin = rope_table(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    @torch.no_grad()
    def use_bf16_weights(self, enable: bool = True) -> None:
        """Weight-only bf16 for inference with float32 activations (decode steps on CPUs without native bf16
        matmuls): every projection and the output head keep a bf16 copy of their weight, which steps of
        up to ``ops.linear.MAX_ROWS`` rows read through the weight-only kernel (half the memory traffic of float32,
        float32 accumulation). Longer inputs (prompts) multiply by the same copies widened to float32, and a tied
        embedding looks its rows up in the copy, so every input computes one function — the function a bf16-autocast
        forward computes. The float32 weights themselves are left as they are: ``enable=False`` drops the copies and
        gives back the model exactly as it was. For inference only (no gradient reaches the float32 weights while
        the copies are on)."""
        head = self.tok_embeddings.weight if self.output is None else self.output.weight
        layers = [m for m in self.layers.modules() if isinstance(m, nn.Linear)]
        for m, w in [(m, m.weight) for m in layers] + [(self, head)]:
            name = "head_bf16" if m is self else "weight_bf16"
            if not enable:
                m._buffers.pop(name, None)
                continue
            if w.dtype != torch.float32:
                raise ConfigError(f"use_bf16_weights needs float32 weights, found {w.dtype}")
            m.register_buffer(name, w.detach().to(torch.bfloat16), persistent=False)

    # ---- forward --------------------------------------------------------------------------------
    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        w16 = self._buffers.get("head_bf16")
        if w16 is not None:
            if ops.linear_fused_supported(h, w16):
                return torch.ops.chameleon_lite.linear_bf16w(h, w16)
            return F.linear(h, w16.to(h.dtype))
        w = self.tok_embeddings.weight if self.output is None else self.output.weight
        return _bf16_rows(h, w) if _bf16_step(h, w) else F.linear(h, w)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        w16 = self._buffers.get("head_bf16") if self.output is None else None  # tied: the head's bf16 copy
        if w16 is None:
            return self.tok_embeddings(input_ids)
        return F.embedding(input_ids, w16).to(self.tok_embeddings.weight.dtype)

    def _run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, at: Packed | CachedStep, head: bool = True
    ) -> torch.Tensor:
        h = self._embed(input_ids)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        route = route_of(input_ids, self.config) if self.config.untied_parts else None
        for block in self.layers.values():
            h = block(h, cos, sin, at, route)
        return self._head(h) if head else h

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, doc_ids: torch.Tensor, span_ids: torch.Tensor
    ) -> torch.Tensor:
        """input_ids, positions: [B, L] int64; doc_ids, span_ids: [B, L] int32 -> logits [B, L, V] (compute dtype)."""
        return self._run(input_ids, positions, Packed(doc_ids.to(torch.int32), span_ids.to(torch.int32)))

    @torch.no_grad()
    def attention_probs(
        self, input_ids: torch.Tensor, positions: torch.Tensor, doc_ids: torch.Tensor, span_ids: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`forward` that also returns every layer's attention probabilities, [B, Hq, L, L] float32 each
        (:func:`chameleon_lite.ops.modality_attention_probs` of the q and k the layer attends with)."""
        layers = [block.attention for block in self.layers.values()]
        for a in layers:
            a.probs = []
        try:
            logits = self.forward(input_ids, positions, doc_ids, span_ids)
            return logits, [a.probs[0] for a in layers]
        finally:
            for a in layers:
                a.probs = None

    # ---- cached inference -----------------------------------------------------------------------
    def setup_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        """Preallocate a KV cache for ``batch`` rows of up to ``max_len`` positions in every layer."""
        cfg = self.config
        if max_len > cfg.max_seq_len:
            raise ConfigError(f"cache length {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        dev = self.tok_embeddings.weight.device
        dtype = dtype or self.tok_embeddings.weight.dtype
        for block in self.layers.values():
            block.attention.kv_cache = KVCache(batch, max_len, cfg.n_kv_heads, cfg.head_dim, dtype, dev)
        self.cache_lens = torch.zeros(batch, dtype=torch.int32, device=dev)

    def _cache(self) -> KVCache:
        kv = next(iter(self.layers.values())).attention.kv_cache
        if kv is None:
            raise ConfigError("no KV cache: call setup_cache(batch, max_len) before prefill/decode_step")
        return kv

    def prefill(
        self,
        input_ids: torch.Tensor,
        prompt_lens: torch.Tensor | None = None,
        span_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run right-padded prompts and fill the cache from position 0.

        input_ids: [B, L] int64; prompt_lens: [B] real length of each row (default L); span_ids: [B, L] int32,
        >0 marks bidirectional input spans (e.g. a prompt image); positions: [B, L] (default 0..L-1); rows: [B]
        int64, the distinct cache rows the prompts fill (default the first B; the other rows keep their contents
        and lengths, so requests can join a batch that is decoding).
        Returns the logits of each row's last real token: [B, V].
        """
        B, L = input_ids.shape
        kv = self._cache()
        n_rows = kv.k_cache.shape[0]
        if rows is not None and (
            rows.shape != (B,) or int(rows.min()) < 0 or int(rows.max()) >= n_rows or rows.unique().numel() != B
        ):
            raise ConfigError(f"prefill rows must be {B} distinct cache rows in [0, {n_rows}), got {rows.tolist()}")
        if (B > n_rows and rows is None) or L > kv.max_len:
            raise ConfigError(f"prompt batch {B} x {L} does not fit the cache ({n_rows} x {kv.max_len})")
        dev = input_ids.device
        lens = (
            torch.full((B,), L, dtype=torch.int32, device=dev)
            if prompt_lens is None
            else prompt_lens.to(device=dev, dtype=torch.int32)
        )
        if bool((lens < 1).any()) or bool((lens > L).any()):
            raise ConfigError(f"prompt_lens must lie in [1, {L}], got {lens.tolist()}")
        col = torch.arange(L, device=dev).unsqueeze(0)
        doc_ids = (col >= lens.unsqueeze(1).long()).to(torch.int32)  # padding is its own document
        span_ids = torch.zeros(B, L, dtype=torch.int32, device=dev) if span_ids is None else span_ids.to(torch.int32)
        positions = col.expand(B, L) if positions is None else positions
        rows = torch.arange(B, device=dev) if rows is None else rows.to(dev)
        h = self._run(input_ids, positions, Packed(doc_ids, span_ids, fill_cache=True, cache_rows=rows), head=False)
        self.cache_lens[rows] = lens
        return self._head(h[torch.arange(B, device=dev), lens.long() - 1])  # the output head only where it is read

    def decode_step(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``Lq`` new tokens per row (causal among themselves) and return their logits.

        input_ids: [B, Lq] int64; positions: [B, Lq] (default: continue each row's count) -> logits [B, Lq, V].
        """
        B, Lq = input_ids.shape
        kv = self._cache()
        start = self.cache_lens[:B].long()
        write = start.unsqueeze(1) + torch.arange(Lq, device=input_ids.device).unsqueeze(0)
        if int(write.max()) >= kv.max_len:
            raise ConfigError(f"KV cache full: a row would reach position {int(write.max())} of {kv.max_len}")
        positions = write if positions is None else positions
        new_lens = (start + Lq).to(torch.int32)
        logits = self._run(input_ids, positions, CachedStep(write, new_lens))
        self.cache_lens[:B] = new_lens
        return logits


# Rows of the loss processed per step: about 2 MiB of fp32 logits, so each chunk's fp32 temporaries stay in cache.
LOSS_CHUNK_BYTES = 2 << 20


def _loss_chunks(n: int, v: int) -> range:
    """Start rows of the chunks of an [n, v] loss (each LOSS_CHUNK_BYTES // (4 v) rows, at least one)."""
    return range(0, n, max(1, LOSS_CHUNK_BYTES // (4 * v)))


class _TokenLosses(torch.autograd.Function):
    """Cross-entropy and log-sum-exp of [N, V] logits in row chunks, with a backward that writes the gradient once:
    d/dlogits = softmax * (g_ce + g_lse) - onehot(target) * g_ce. Autograd of the log-softmax-and-gather form
    zero-fills two [N, V] fp32 gradients, scatters into them, runs the log-softmax backward and adds them — on a
    CPU training step that was a third of the step at an 8k vocabulary."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, v = logits.shape
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        chunks = _loss_chunks(n, v)
        for lo in chunks:
            hi = min(n, lo + chunks.step)
            lse[lo:hi] = torch.logsumexp(logits[lo:hi].float(), dim=-1)
        ce = lse - logits.gather(-1, targets[:, None]).squeeze(-1).float()
        ctx.save_for_backward(logits, targets, lse)
        return ce, lse

    @staticmethod
    def backward(ctx, g_ce: torch.Tensor | None, g_lse: torch.Tensor | None):
        logits, targets, lse = ctx.saved_tensors
        n, v = logits.shape
        zeros = torch.zeros(n, dtype=torch.float32, device=logits.device)
        g_ce = zeros if g_ce is None else g_ce.float()
        coef = g_ce + (zeros if g_lse is None else g_lse.float())
        grad = torch.empty_like(logits)
        chunks = _loss_chunks(n, v)
        for lo in chunks:
            hi = min(n, lo + chunks.step)
            p = (logits[lo:hi].float() - lse[lo:hi, None]).exp_().mul_(coef[lo:hi, None])
            p.scatter_add_(-1, targets[lo:hi, None], -g_ce[lo:hi, None])
            grad[lo:hi] = p
        return grad, None


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits: [B, L, V]; targets: [B, L] int64 -> (cross-entropy [B, L] fp32, log-sum-exp [B, L] fp32).

    ce = lse - logit[target]; the log-sum-exp also feeds the z-loss (lse^2). Eager runs take the chunked form with
    its one-pass backward (_TokenLosses); a compiled graph keeps the log-softmax form, which inductor fuses itself.
    """
    if torch.compiler.is_compiling():
        lf = logits.float()
        idx = targets.unsqueeze(-1)
        logp = F.log_softmax(lf, dim=-1).gather(-1, idx).squeeze(-1)
        return -logp, lf.gather(-1, idx).squeeze(-1) - logp
    shape = targets.shape
    ce, lse = _TokenLosses.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return ce.view(shape), lse.view(shape)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu", seed: int | None = None) -> Transformer:
    """Build on the meta device, materialise on ``device`` and initialise (fp32 master weights)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.init_weights(seed=seed)
    return model
