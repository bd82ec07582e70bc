"""Loads the compiled extensions once, with an actionable message when they are missing."""

from __future__ import annotations

import importlib

import torch  # noqa: F401  (loads libc10 / libtorch before the extension)

HAS_CUDA_EXT = False
_loaded = False


class ExtensionMissingError(ImportError):
    pass


def load_extensions() -> None:
    global _loaded, HAS_CUDA_EXT
    if _loaded:
        return
    try:
        importlib.import_module("chameleon_lite._C")
    except ImportError as e:
        raise ExtensionMissingError(
            "the C++ extension chameleon_lite._C is not built or does not match this torch "
            f"({e}). Reinstall with: pip install --no-build-isolation -e ."
        ) from e
    try:
        importlib.import_module("chameleon_lite._C_cuda")
        HAS_CUDA_EXT = True
    except ImportError:
        HAS_CUDA_EXT = False
    _loaded = True
