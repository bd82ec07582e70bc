"""Unified-id classification op (C++), with the pure-PyTorch oracle in chameleon_lite.vocab."""

from __future__ import annotations

import torch

from chameleon_lite.ops._loader import load_extensions


@torch.library.register_fake("chameleon_lite::classify_ids")
def _classify_ids_fake(ids, text_offset, image_offset, audio_offset, audio_codebook, vocab_size):
    return (
        torch.empty_like(ids, dtype=torch.int8),
        torch.empty_like(ids, dtype=torch.int64),
        torch.empty_like(ids, dtype=torch.int64),
    )


def classify_ids(
    ids: torch.Tensor, text_offset: int, image_offset: int, audio_offset: int, audio_codebook: int, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids: any shape, integer -> (modality int8, local int64, level int64), each shaped like ids.

    Raises IndexError naming the first id outside [0, vocab_size).
    """
    load_extensions()
    if ids.device.type != "cpu" and not _has_impl(ids.device.type):
        mod, local, level = torch.ops.chameleon_lite.classify_ids(
            ids.cpu(), text_offset, image_offset, audio_offset, audio_codebook, vocab_size
        )
        return mod.to(ids.device), local.to(ids.device), level.to(ids.device)
    return torch.ops.chameleon_lite.classify_ids(
        ids, text_offset, image_offset, audio_offset, audio_codebook, vocab_size
    )


def _has_impl(device_type: str) -> bool:
    key = {"cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("chameleon_lite::classify_ids", key)
