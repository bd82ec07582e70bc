"""Snake activation ``x + sin(a x)^2 / a`` (a = exp(log_alpha), one per channel) of the audio codec.

The fused C++ op (one pass forward, one backward) runs float32 tensors on the CPU; everything else (other dtypes,
other devices, double-precision gradient checks) takes :func:`snake_reference`, which is also the tests' oracle.
"""

from __future__ import annotations

import torch

from chameleon_lite.ops._loader import load_extensions
from chameleon_lite.ops.verify import kernel_ok

load_extensions()


def snake_reference(x: torch.Tensor, log_alpha: torch.Tensor) -> torch.Tensor:
    """x [B, C, T], log_alpha with C values -> x + sin(a x)^2 / a, in plain PyTorch (differentiable)."""
    a = log_alpha.reshape(1, -1, 1).exp()
    return x + torch.sin(a * x).pow(2) / a


@torch.library.register_fake("chameleon_lite::snake")
def _snake_fake(x, log_alpha):
    return torch.empty_like(x)


@torch.library.register_fake("chameleon_lite::snake_bwd")
def _snake_bwd_fake(grad, x, log_alpha):
    return torch.empty_like(x), torch.empty_like(log_alpha)


def _setup_context(ctx, inputs, output):
    x, log_alpha = inputs
    ctx.save_for_backward(x, log_alpha)


def _backward(ctx, grad):
    x, log_alpha = ctx.saved_tensors
    gx, ga = torch.ops.chameleon_lite.snake_bwd(grad, x, log_alpha)
    return gx, ga


torch.library.register_autograd("chameleon_lite::snake", _backward, setup_context=_setup_context)


def fused_supported(x: torch.Tensor, log_alpha: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and log_alpha.dtype == torch.float32
        and x.dim() == 3
        and log_alpha.numel() == x.shape[1]
        and log_alpha.device.type == "cpu"
        and kernel_ok("snake", x.device, torch.float32)
    )


def snake(x: torch.Tensor, log_alpha: torch.Tensor) -> torch.Tensor:
    """x [B, C, T], log_alpha with C values (e.g. [1, C, 1]) -> x + sin(a x)^2 / a with a = exp(log_alpha).

    Fused on CPU float32 (differentiable in x and log_alpha, not twice); the reference elsewhere."""
    if fused_supported(x, log_alpha):
        return torch.ops.chameleon_lite.snake(x, log_alpha)
    return snake_reference(x, log_alpha)
