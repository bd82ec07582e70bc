"""CLI commands of the training layer: plot, export (registered by chameleon_lite.cli)."""
from __future__ import annotations


def register(cli) -> None:
    pass
