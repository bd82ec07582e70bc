"""Python face of the chameleon_lite kernels: custom ops, fake (meta) impls, autograd, and pure-PyTorch references.

Importing this package loads the compiled extension (``chameleon_lite._C``), which registers the operator
schemas and their CPU implementations with ``torch.library``; the CUDA implementations live in
``chameleon_lite._C_cuda`` and are loaded when present.
"""

from __future__ import annotations

from chameleon_lite.ops._loader import load_extensions

load_extensions()

from chameleon_lite.ops import selfcheck, verify  # noqa: E402
from chameleon_lite.ops._loader import HAS_CUDA_EXT  # noqa: E402
from chameleon_lite.ops.attention import (  # noqa: E402
    modality_attention,
    modality_attention_decode,
    modality_attention_probs,
)
from chameleon_lite.ops.linear import fused_supported as linear_fused_supported  # noqa: E402
from chameleon_lite.ops.linear import linear_bf16w, linear_bf16w_reference  # noqa: E402
from chameleon_lite.ops.norm import rms_norm, rms_norm_reference, rope, rope_reference  # noqa: E402
from chameleon_lite.ops.sampling import sample  # noqa: E402
from chameleon_lite.ops.snake import snake, snake_reference  # noqa: E402

verify.install(selfcheck)  # each kernel checks itself on first use (ops/verify.py)

__all__ = [
    "HAS_CUDA_EXT",
    "linear_bf16w",
    "linear_fused_supported",
    "linear_bf16w_reference",
    "load_extensions",
    "modality_attention",
    "modality_attention_decode",
    "modality_attention_probs",
    "rms_norm",
    "rms_norm_reference",
    "rope",
    "rope_reference",
    "sample",
    "snake",
    "snake_reference",
]
