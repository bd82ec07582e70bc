"""RMSNorm and rotary embedding: one-pass C++ ops for float32 inference, differentiable PyTorch forms otherwise.

A decode step normalises and rotates a few rows in every layer; eager PyTorch spends five to eight small kernels on
each of those calls, and at batch 1 their dispatch costs more than the arithmetic. The C++ ops take CPU float32
tensors when no gradient is needed. Training on CPU (float32 or bfloat16 activations) goes through one-pass C++ ops
too: RMSNorm through rms_norm_fwd/rms_norm_bwd, rotary embedding through the same rope op with -sin as its backward
(a rotation's transpose); the references' chains of elementwise kernels and dtype copies were about a fifth of a
small model's training step. Other dtypes and devices, and compiled graphs (which fuse the references themselves),
take the references, which are also the tests' oracles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chameleon_lite.ops._loader import load_extensions
from chameleon_lite.ops.verify import kernel_ok

load_extensions()


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D], weight [D] -> x / sqrt(mean(x^2) + eps) * weight (weight cast to x's dtype)."""
    return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps)


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D]; cos, sin [B, L, D/2] fp32 -> x rotated in (first half, second half) pairs, dtype of x."""
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)  # fp32: type promotion computes the rotation in fp32 without copies
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


@torch.library.register_fake("chameleon_lite::rms_norm")
def _rms_norm_fake(x, weight, eps):
    return torch.empty_like(x)


@torch.library.register_fake("chameleon_lite::rms_norm_fwd")
def _rms_norm_fwd_fake(x, weight, eps):
    return torch.empty_like(x), x.new_empty((x.numel() // max(x.shape[-1], 1),), dtype=torch.float32)


@torch.library.register_fake("chameleon_lite::rms_norm_bwd")
def _rms_norm_bwd_fake(grad, x, weight, rstd):
    return torch.empty_like(x), torch.empty_like(weight)


@torch.library.register_fake("chameleon_lite::rope")
def _rope_fake(x, cos, sin):
    return torch.empty_like(x)


def _fused(*tensors: torch.Tensor) -> bool:
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or (grad and t.requires_grad):
            return False
    return True


SMALL_ROWS = 32  # bf16 calls of at most this many rows (decode steps) go through the float32 kernels


def _small_bf16(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """A few bf16 rows at inference (a decode step of a model run in bf16): widened to float32, the one-pass kernel
    is cheaper than the reference's chain of bf16 kernels and computes in float32 as the reference does inside."""
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() <= SMALL_ROWS * x.shape[-1] * (x.shape[-2] if x.dim() == 4 else 1)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *others)))
    )


class _RmsNormFn(torch.autograd.Function):
    """RMSNorm through rms_norm_fwd / rms_norm_bwd: output and input gradient in x's dtype, weight gradient fp32."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = torch.ops.chameleon_lite.rms_norm_fwd(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = torch.ops.chameleon_lite.rms_norm_bwd(g, x, weight, rstd)
        return dx, dw, None


def _trainable(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """A CPU float32/bfloat16 call that autograd records, outside a compiled graph."""
    return (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in (x, *others))
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and not torch.compiler.is_compiling()
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., D], weight [D] -> x / sqrt(mean(x^2) + eps) * weight."""
    if (
        _trainable(x, weight)
        and weight.dtype == torch.float32
        and x.dim() >= 1
        and weight.shape == (x.shape[-1],)
        and kernel_ok("rms_norm", x.device, x.dtype)
    ):
        return _RmsNormFn.apply(x, weight, eps)
    if _small_bf16(x, weight) and weight.shape == (x.shape[-1],) and kernel_ok("rms_norm", x.device, torch.float32):
        return torch.ops.chameleon_lite.rms_norm(x.float(), weight.float(), eps).to(x.dtype)
    if (
        _fused(x, weight)
        and x.dim() >= 1
        and weight.shape == (x.shape[-1],)
        and kernel_ok("rms_norm", x.device, x.dtype)
    ):
        return torch.ops.chameleon_lite.rms_norm(x, weight, eps)
    return rms_norm_reference(x, weight, eps)


class _RopeFn(torch.autograd.Function):
    """The C++ rotation with its transpose (the rotation by -sin) as the backward; cos and sin get no gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return torch.ops.chameleon_lite.rope(x, cos, sin)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return torch.ops.chameleon_lite.rope(g.contiguous(), cos, sin.neg()), None, None


def _trainable_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    return (
        _trainable(x)
        and not (cos.requires_grad or sin.requires_grad)
        and cos.dtype == sin.dtype == torch.float32
        and x.dim() == 4
        and x.shape[3] % 2 == 0
        and cos.shape == (*x.shape[:2], x.shape[3] // 2) == sin.shape
        and kernel_ok("rope", x.device, x.dtype)
    )


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, H, D]; cos, sin [B, L, D/2] -> x rotated in (first half, second half) pairs."""
    if _trainable_rope(x, cos, sin):
        return _RopeFn.apply(x, cos, sin)
    if (
        _small_bf16(x)
        and x.dim() == 4
        and cos.dtype == sin.dtype == torch.float32
        and cos.shape == (*x.shape[:2], x.shape[3] // 2) == sin.shape
        and kernel_ok("rope", x.device, torch.float32)
    ):
        return torch.ops.chameleon_lite.rope(x.float(), cos, sin).to(x.dtype)
    if (
        _fused(x, cos, sin)
        and x.dim() == 4
        and cos.shape == (*x.shape[:2], x.shape[3] // 2) == sin.shape
        and kernel_ok("rope", x.device, x.dtype)
    ):
        return torch.ops.chameleon_lite.rope(x, cos, sin)
    return rope_reference(x, cos, sin)
