"""Eager hyperparameter checks: a bad value fails when the optimizer is built, naming itself.

Traced values (hyperparameters injected into state, vmapped sweeps) and schedules cannot be
checked eagerly and pass through.
"""

from __future__ import annotations

import math
from typing import Any

import jax


def _concrete_float(value: Any) -> float | None:
    """``value`` as a Python float, or None for schedules, tracers and arrays of size > 1."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> None:
    """A learning rate is a finite number >= 0 or a schedule ``step -> value``."""
    if learning_rate is None:
        raise ValueError(f"{name} must be a number or a schedule (step -> value), got None.")
    value = _concrete_float(learning_rate)
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{name} must be finite and >= 0, got {name}={learning_rate!r}. Pass a positive "
            "step size (e.g. 1e-3); dlopt already subtracts the update, so no sign flip is needed."
        )


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_closed: bool = True,
    high_closed: bool = False,
) -> None:
    """``value`` lies in the interval [low, high) (closedness chosen by the flags)."""
    v = _concrete_float(value)
    if v is None:
        return
    above = v >= low if low_closed else v > low
    below = v <= high if high_closed else v < high
    if not (above and below and math.isfinite(v)):
        interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {name}={value!r}.")


def check_non_negative(name: str, value: Any) -> None:
    """``value >= 0`` and finite."""
    v = _concrete_float(value)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {name}={value!r}.")


def check_positive(name: str, value: Any) -> None:
    """``value > 0`` and finite."""
    v = _concrete_float(value)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {name}={value!r}.")
