"""Generation: prefill/decode engine, the per-row modality state machine, detokenizer routing and writers.

The names below are loaded on first use, so that ``chameleon_lite.generate.commands`` (imported for ``--help``)
does not import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Document": "document",
    "close_turn": "document",
    "load_history": "document",
    "Span": "document",
    "GenerationConfig": "engine",
    "Generator": "engine",
    "Prompt": "engine",
    "SamplingSettings": "engine",
    "StreamEvent": "engine",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
