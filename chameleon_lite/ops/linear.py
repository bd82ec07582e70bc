"""Weight-only bf16 linear for decode steps: ``x @ weight.T`` with float32 activations and bfloat16 weights.

A decode step multiplies a few rows by every weight of the model, so on a CPU its time is the time to stream the
weights from memory; keeping them in bf16 halves it while activations and accumulation stay float32. The C++ op
runs CPU float32 inputs with up to :data:`MAX_ROWS` rows (beyond that a GEMM on float32 weights is faster);
:func:`linear_bf16w_reference` is the oracle of the tests and the path everything else takes.
"""

from __future__ import annotations

import torch

from chameleon_lite.ops._loader import load_extensions
from chameleon_lite.ops.verify import kernel_ok

load_extensions()

MAX_ROWS = 32  # measured crossover against a float32 GEMM on a 2-core AVX2 machine: 32-64 rows


def linear_bf16w_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] float32, weight [N, K] bfloat16 -> x @ weight.float().T, float32 [..., N]."""
    return torch.nn.functional.linear(x, weight.float())


@torch.library.register_fake("chameleon_lite::linear_bf16w")
def _linear_bf16w_fake(x, weight):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def fused_supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the C++ op takes this call: CPU, float32 x with at most MAX_ROWS rows, bf16 weight, no autograd."""
    return (
        x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.bfloat16
        and x.dim() >= 1
        and x.numel() <= MAX_ROWS * x.shape[-1]
        and not (x.requires_grad and torch.is_grad_enabled())
        and kernel_ok("linear_bf16w", x.device, torch.float32)
    )


def linear_bf16w(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., K] float32, weight [N, K] bfloat16 -> x @ weight.T float32 [..., N] (float32 accumulation)."""
    if x.shape[-1] != weight.shape[-1]:
        raise ValueError(f"linear_bf16w: x has {x.shape[-1]} features but the weight expects {weight.shape[-1]}")
    if fused_supported(x, weight):
        return torch.ops.chameleon_lite.linear_bf16w(x, weight)
    return linear_bf16w_reference(x, weight)
