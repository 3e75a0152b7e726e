"""The scaling blocks every optimizer ends with: scale, by schedule, by learning rate."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    init_empty_state,
)


def _scale_leaf(u: chex.Array, factor: chex.Numeric, out_dtype) -> chex.Array:
    return (u * tree_lib.scalar_like(factor, u)).astype(out_dtype)


def _scaled(updates, params, factor):
    """``factor * u`` leaf by leaf, in each parameter's dtype when ``params`` are given."""
    dtypes = numerics.out_dtypes(updates, params)
    return jax.tree.map(lambda u, d: _scale_leaf(u, factor, d), updates, dtypes)


ScaleState = EmptyState  # the state of `scale` (optax's alias)


def scale(step_size: chex.Numeric) -> GradientTransformation:
    """``u <- step_size * u``, returned in each parameter's dtype when params are given.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.scale(-0.1)  # plain gradient descent with lr 0.1
        >>> tx.update(jnp.array([1.0, 2.0]), tx.init(None))[0]
        Array([-0.1, -0.2], dtype=float32)
    """
    validation.check_finite("step_size", step_size)

    def update_fn(updates, state, params=None):
        return _scaled(updates, params, step_size), state

    return GradientTransformation(init_empty_state, update_fn)


class ScaleByScheduleState(NamedTuple):
    count: chex.Array  # int32, saturating


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """``u <- step_size_fn(t) * u`` where ``t`` counts updates from 0 (saturating int32).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.scale_by_schedule(lambda t: -0.1 * 0.5 ** (t // 100))
        >>> tx.update(jnp.array([1.0, 2.0]), tx.init(jnp.zeros(2)))[0]  # step 0: factor -0.1
        Array([-0.1, -0.2], dtype=float32)
    """

    if not callable(step_size_fn):
        raise TypeError(
            f"step_size_fn must be a schedule (step -> value), got {step_size_fn=!r}; use "
            "dlopt.scale for a constant."
        )

    def init_fn(params):
        del params
        return ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        updates = _scaled(updates, params, step_size_fn(state.count))
        return updates, ScaleByScheduleState(count=tree_lib.safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn)


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """``u <- -lr * u`` (or ``+lr * u`` with ``flip_sign=False``); ``lr`` may be a schedule.

    A constant learning rate keeps no state (`EmptyState`); a schedule keeps the step count.
    Deliberate difference from optax: ``learning_rate`` is required (optax's default ``None``
    silently makes the transform `identity`; write ``identity()`` for that).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adam(), dlopt.scale_by_learning_rate(1e-3))
    """
    validation.check_learning_rate(learning_rate)
    sign = -1.0 if flip_sign else 1.0
    if callable(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))
    return scale(sign * learning_rate)
