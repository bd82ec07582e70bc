"""Errors a user can act on. The CLI prints them as one line and exits non-zero; anything else is a bug."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a file, an argument, a configuration. The message says what and where."""


class DataError(UserError, ValueError):
    """A data file (manifest, image, audio, shard) that cannot be used."""


class ConfigError(UserError, ValueError):
    """A configuration or checkpoint that does not fit."""
