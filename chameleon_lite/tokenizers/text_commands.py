"""CLI commands of the data layer (registered by chameleon_lite.cli)."""
from __future__ import annotations


def register(cli) -> None:
    pass
