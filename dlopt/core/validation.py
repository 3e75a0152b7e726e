"""Eager hyperparameter checks: a bad value fails when the optimizer is built, naming itself.

A hyperparameter is a real number (a Python or numpy scalar, or a 0-d array), a schedule
``step -> value`` where the check allows one, or a traced value (injected into state,
vmapped sweeps), which cannot be checked eagerly and passes. Strings, None, booleans and
other objects are rejected with a ``TypeError`` naming the argument; NaN and values out of
range with a ``ValueError`` naming the argument and the range.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete_float(name: str, value: Any, *, schedule_ok: bool = False) -> float | None:
    """``value`` as a Python float; None for tracers, allowed schedules and arrays of size > 1.

    Raises ``TypeError`` naming ``name`` for anything that is not a real number.
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if callable(value) and not isinstance(value, np.ndarray | jax.Array):
        if schedule_ok:
            return None
        raise TypeError(f"{name} must be a number, got the callable {name}={value!r}.")
    kind = "a number or a schedule (step -> value)" if schedule_ok else "a number"
    if isinstance(value, bool | np.bool_) or value is None or isinstance(value, str | bytes):
        raise TypeError(f"{name} must be {kind}, got {name}={value!r} ({type(value).__name__}).")
    if isinstance(value, np.ndarray | jax.Array):
        dtype = value.dtype
        if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
            raise TypeError(f"{name} must be {kind}, got an array of dtype {dtype}.")
        return float(value) if value.size == 1 else None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    raise TypeError(f"{name} must be {kind}, got {name}={value!r} ({type(value).__name__}).")


def check_finite(name: str, value: Any) -> None:
    """``value`` is a finite real number, of any sign."""
    v = _concrete_float(name, value)
    if v is not None and not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}.")


def check_int(name: str, value: Any, low: int = 0, *, array_ok: bool = False) -> None:
    """``value`` is an integer (Python or numpy; not a bool) >= ``low``.

    With ``array_ok``, a one-element integer array (a hyperparameter injected into state) is
    checked by its value, and a traced one passes.
    """
    if array_ok and isinstance(value, jax.core.Tracer):
        return
    if array_ok and isinstance(value, np.ndarray | jax.Array) and value.size == 1:
        if jnp.issubdtype(value.dtype, jnp.integer):
            value = int(value.reshape(()))
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{name} must be an int >= {low}, got {name}={value!r} ({type(value).__name__})."
        )
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {name}={value!r}.")


# --- flags, choices, unbounded limits, transformations


def check_flag(name: str, value: Any) -> None:
    """``value`` is a bool (Python or numpy): ``TypeError`` naming ``name`` otherwise."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"{name} must be True or False, got {name}={value!r} ({type(value).__name__})."
        )


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """``value`` is one of ``choices`` (compared with ``==``): ``ValueError`` listing them."""
    if not any(value == choice for choice in choices):
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}; got {name}={value!r}.")


def _is_plus_inf(value: Any) -> bool:
    if value is None or isinstance(value, jax.core.Tracer | str | bytes | bool | np.bool_):
        return False
    try:
        return np.size(value) == 1 and float(value) == math.inf
    except (TypeError, ValueError):
        return False


def check_positive_or_inf(name: str, value: Any) -> None:
    """``value > 0``; ``+inf`` allowed (no bound)."""
    if not _is_plus_inf(value):
        check_positive(name, value)


def check_non_negative_or_inf(name: str, value: Any) -> None:
    """``value >= 0``; ``+inf`` allowed (the condition it weighs is off)."""
    if not _is_plus_inf(value):
        check_non_negative(name, value)


def check_storage_dtype(name: str, dtype: Any) -> Any:
    """``dtype`` (a state buffer's storage dtype) canonicalized, or None for None.

    Floating dtypes (float8 to float64, bfloat16) and complex ones are accepted; integer and
    boolean dtypes are refused (a moment rounds to 0 there and the update never moves), as is
    anything that is not a dtype. Canonical: float64 is float32 while x64 is off.
    """
    if dtype is None:
        return None
    try:
        canonical = jax.dtypes.canonicalize_dtype(dtype)
    except TypeError as error:
        raise TypeError(f"{name} must be a dtype or None, got {name}={dtype!r}.") from error
    if not jnp.issubdtype(canonical, jnp.inexact):
        raise ValueError(
            f"{name} must be a floating dtype (e.g. jnp.bfloat16 or jnp.float32), got "
            f"{canonical}: optimizer state in an integer or bool dtype rounds to 0."
        )
    return canonical


def check_transformation(name: str, tx: Any) -> None:
    """``tx`` has ``init`` and ``update`` (a ``GradientTransformation``, dlopt's or optax's)."""
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"{name} must be a GradientTransformation (init, update), e.g. dlopt.adam(1e-3); "
            f"got {name}={tx!r}."
        )


# --- numbers


def check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> None:
    """A learning rate is a finite number >= 0 or a schedule ``step -> value``.

    A dlopt schedule carries its ``value_range`` (`dlopt.schedules.ranges`): one that goes
    below 0 (or is unbounded) is refused here, at construction. Any other callable cannot be
    checked without calling it: keeping its values >= 0 is the caller's responsibility.
    """
    value = _concrete_float(name, learning_rate, schedule_ok=True)
    value_range = getattr(learning_rate, "value_range", None) if callable(learning_rate) else None
    if value_range is not None:
        low = float(value_range[0])
        if not low >= 0:
            raise ValueError(
                f"{name} is a schedule whose values go down to {low:g}; a learning rate "
                "must stay >= 0. Build it from non-negative values (e.g. "
                "cosine_decay_schedule(0.1, 1000)); dlopt already subtracts the update."
            )
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
    v = _concrete_float(name, value)
    if v is None:
        return
    above = v >= low if low_closed else v > low
    below = v <= high if high_closed else v < high
    if not (above and below and math.isfinite(v)):
        interval = f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
        raise ValueError(f"{name} must be in {interval}, got {name}={value!r}.")


def check_non_negative(name: str, value: Any) -> None:
    """``value >= 0`` and finite."""
    v = _concrete_float(name, value)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {name}={value!r}.")


def check_positive(name: str, value: Any) -> None:
    """``value > 0`` and finite."""
    v = _concrete_float(name, value)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {name}={value!r}.")


def check_beta_pair(name: str, betas: Any) -> tuple[Any, Any]:
    """``betas`` is a pair ``(b1, b2)`` (tuple or list), each in [0, 1); returns the pair.

    Raises ``TypeError`` naming ``name`` when it is not a pair, ``ValueError`` naming
    ``name[0]`` or ``name[1]`` when a value is out of range.
    """
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair (b1, b2), got {name}={betas!r}.")
    for i, value in enumerate(betas):
        check_in_range(f"{name}[{i}]", value, 0.0, 1.0)
    return betas[0], betas[1]
