"""The one loader of dataclass configs: from a JSON object (``config_from_dict``) and from ``--key=value`` /
``--model.key=value`` command-line overrides (``parse_overrides``), with one-line errors for unknown keys and
bad values.

Bottom layer: every config (model, tokenizers, corpus, training runs) uses it; it imports nothing of the package
but its errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from typing import Any, TypeVar

from chameleon_lite.errors import ConfigError

T = TypeVar("T")


def config_from_dict(
    cls: type[T], d: Any, source: str = "<dict>", what: str = "config", defaults: dict[str, Any] | None = None
) -> T:
    """Build the dataclass ``cls`` from the JSON object ``d`` (``defaults`` first: values of fields that older files
    lack). ConfigError, prefixed with ``source``, for a non-object, unknown keys, a value of the wrong type or one
    the dataclass's ``__post_init__`` refuses. Values are passed as they are (a file's JSON stays what it was)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: {what} must be a JSON object, got {type(d).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ConfigError(f"{source}: unknown {what} key(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    try:
        return cls(**{**(defaults or {}), **d})
    except TypeError as e:
        raise ConfigError(f"{source}: bad {what} ({e})") from None
    except ConfigError as e:
        text = str(e).removeprefix(f"{what}: ")  # the source already says what it is
        raise ConfigError(text if text.startswith(source) else f"{source}: {text}") from None


def coerce(field: dataclasses.Field, raw: str, flag: str) -> Any:
    """A command-line string as a value of ``field``: as written for str fields, else JSON, checked against int,
    float (finite; an int becomes a float) and bool fields."""
    if field.type in ("str", str):
        return raw
    try:
        v = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ConfigError(f"{flag}={raw}: not a valid value (expected {field.type}, written as JSON)") from None
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    if field.type in ("float", float):
        if not (number and math.isfinite(v)):
            raise ConfigError(f"{flag}={raw}: expected a finite number")
        return float(v)
    if field.type in ("int", int) and not (number and isinstance(v, int)):
        raise ConfigError(f"{flag}={raw}: expected an integer")
    if field.type in ("bool", bool) and not isinstance(v, bool):
        raise ConfigError(f"{flag}={raw}: expected true or false")
    return v


def field_map(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def parse_overrides(items: Iterable[str], cls: type, nested: dict[str, type] | None = None) -> dict[str, Any]:
    """``--key=value`` items -> {field of cls: value}; ``--<prefix>.key=value`` -> {prefix: {field of
    nested[prefix]: value}} (e.g. ``--model.dim=64``). Dashes in keys read as underscores."""
    fields, nested = field_map(cls), nested or {}
    out: dict[str, Any] = {}
    for item in items:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"override {item!r} must look like --key=value")
        key, raw = item[2:].split("=", 1)
        key = key.replace("-", "_")
        prefix, dot, sub = key.partition(".")
        if dot and prefix in nested:
            sub_fields = field_map(nested[prefix])
            if sub not in sub_fields:
                raise ConfigError(f"--{key}: unknown {prefix} field; known: {', '.join(sorted(sub_fields))}")
            out.setdefault(prefix, {})[sub] = coerce(sub_fields[sub], raw, f"--{key}")
        elif key in fields:
            out[key] = coerce(fields[key], raw, f"--{key}")
        else:
            raise ConfigError(f"--{key}: unknown training option; known: {', '.join(sorted(fields))}")
    return out


def flag_values(args: Any, cls: type) -> dict[str, Any]:
    """The values of ``cls``'s fields that the parsed command line ``args`` holds a flag of."""
    values = vars(args)
    return {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
