"""Signature parity with optax: parameter names, kinds and defaults (defaults that are objects
compared by type, enum members by name, functions not at all)."""

from __future__ import annotations

import enum
import inspect
from typing import Any


def _default(value: Any) -> Any:
    if value is inspect.Parameter.empty or value is None:
        return value
    if isinstance(value, enum.Enum):
        return ("enum", value.name)
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return ("function",)
    if isinstance(value, bool | int | float | str | tuple | complex):
        return value
    return ("object", type(value).__name__)


def parameters(fn: Any) -> list[tuple]:
    """``(name, kind, default)`` of each parameter of ``fn``."""
    return [
        (p.name, p.kind, _default(p.default)) for p in inspect.signature(fn).parameters.values()
    ]


def public_names(module: Any) -> set[str]:
    """A module's public non-module attributes (optax's ``optax.tree`` style listing)."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
