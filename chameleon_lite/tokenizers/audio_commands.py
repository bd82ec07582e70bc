"""CLI commands of this tokenizer (registered by chameleon_lite.cli)."""
from __future__ import annotations


def register(cli) -> None:
    pass
