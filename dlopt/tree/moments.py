"""Moment updates over pytrees (optax.tree.update_moment, ...): optax's signatures, the
per-leaf rules of `dlopt.core.numerics` (`ema`, `abs_sq`, `unbias`). ``None`` leaves of the
updates pass through as ``None``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dlopt.core import numerics


def _map_updates(fn, updates: Any, moments: Any) -> Any:
    return jax.tree.map(
        lambda g, t: None if g is None else fn(g, t),
        updates,
        moments,
        is_leaf=lambda x: x is None,
    )


def update_moment(updates: Any, moments: Any, decay: Any, order: Any) -> Any:
    """``m <- decay * m + (1 - decay) * g^order``, the EMA of the ``order``-th moment.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> dlopt.tree.update_moment(jnp.array([2.0]), jnp.array([0.0]), 0.9, 2)
    Array([0.4], dtype=float32)
    """
    return _map_updates(lambda g, t: numerics.ema(t, g**order, decay), updates, moments)


def update_infinity_moment(updates: Any, moments: Any, decay: Any, eps: Any) -> Any:
    """``u <- max(|g| + eps, decay * u)``: Adamax's exponentially weighted infinity norm."""
    return _map_updates(lambda g, t: jnp.maximum(jnp.abs(g) + eps, decay * t), updates, moments)


def _orderth_norm(g: jax.Array, order: Any) -> jax.Array:
    if jnp.isrealobj(g):
        return g**order
    half_order = order / 2
    if float(half_order).is_integer():  # an int power keeps the HLO optax generates
        half_order = int(half_order)
    return numerics.abs_sq(g) ** half_order


def update_moment_per_elem_norm(updates: Any, moments: Any, decay: Any, order: Any) -> Any:
    """``m <- decay * m + (1 - decay) * |g|^order`` with ``|g|^2 = g conj(g)`` for complex
    ``g`` (for real ``g`` the plain power ``g^order``, as optax)."""
    return _map_updates(
        lambda g, t: numerics.ema(t, _orderth_norm(g, order), decay), updates, moments
    )


def bias_correction(moment: Any, decay: Any, count: Any) -> Any:
    """``m / (1 - decay^count)`` per leaf: the correction is formed in float32 (a bfloat16
    ``decay^count`` rounds to 1 early), the division in each leaf's dtype
    (`dlopt.core.numerics.unbias`)."""
    return jax.tree.map(lambda t: numerics.unbias(t, decay, count), moment)
