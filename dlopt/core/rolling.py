"""A fixed-size rolling window of recent scalars (a ring buffer) and its mean and deviation.

The history that `dlopt.skip_step_on_spikes` and `dlopt.clip_by_norm_history` compare each
step against. Its size is fixed when it is built, so the state that holds it has the same
shapes at every step: it checkpoints, restores and compiles once.

Each slot holds one row of ``width`` values (the spike wrapper keeps the loss and the gradient
norm side by side); the statistics are per column, over the valid rows only:

.. math::
    \\bar x = \\frac{1}{n} \\sum_{i<n} x_i, \\qquad
    s = \\sqrt{\\frac{1}{n - 1} \\sum_{i<n} (x_i - \\bar x)^2}

(Bessel's correction, as MaxText's and OLMo-core's spike detectors; ``s = 0`` for ``n < 2``).
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import validation


class RollingWindow(NamedTuple):
    """The last ``size`` rows pushed into a window (oldest overwritten first)."""

    values: chex.Array  # float32[size, width]: the rows, a ring
    count: chex.Array  # int32: how many rows are valid (at most size)
    index: chex.Array  # int32: the slot the next row goes to


def check_window(interval: int, scaling_factor: chex.Numeric, min_history: int | None) -> int:
    """Checks the arguments of a transform that compares against a window (``interval`` >= 2,
    ``scaling_factor`` > 0 or inf, ``min_history`` in ``[2, interval]``); returns
    ``min_history``, by default ``max(2, interval // 2)`` (MaxText, Levanter, OLMo-core)."""
    validation.check_int("interval", interval, 2)
    validation.check_positive_or_inf("scaling_factor", scaling_factor)
    if min_history is None:
        min_history = max(2, interval // 2)
    validation.check_int("min_history", min_history, 2)
    if min_history > interval:
        raise ValueError(f"min_history must be <= interval={interval}, got {min_history=}.")
    return min_history


def window_init(size: int, width: int = 1) -> RollingWindow:
    """An empty window of ``size`` rows of ``width`` float32 values (every leaf its own
    buffer, so a donated state never donates one buffer twice)."""
    values = jnp.zeros((size, width), jnp.float32)
    return RollingWindow(values, jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))


def window_push(window: RollingWindow, row: chex.Array, keep: chex.Array) -> RollingWindow:
    """``window`` with ``row`` (``width`` values) written as its newest row where ``keep``;
    unchanged otherwise (bit for bit: a skipped row leaves no trace)."""
    size = window.values.shape[0]
    row = jnp.reshape(jnp.asarray(row, jnp.float32), window.values.shape[1:])
    written = window.values.at[window.index].set(row)
    return RollingWindow(
        values=jnp.where(keep, written, window.values),
        count=jnp.where(keep, jnp.minimum(window.count + 1, size), window.count),
        index=jnp.where(keep, (window.index + 1) % size, window.index),
    )


def window_restart(window: RollingWindow, restart: chex.Array) -> RollingWindow:
    """``window`` emptied (no valid rows; the values stay but no longer count) where
    ``restart``."""
    return window._replace(count=jnp.where(restart, jnp.zeros_like(window.count), window.count))


def window_stats(window: RollingWindow) -> tuple[chex.Array, chex.Array]:
    """The mean and the Bessel-corrected standard deviation of each column over the valid
    rows: two float32 arrays of shape ``(width,)`` (zeros for an empty window)."""
    size = window.values.shape[0]
    age = (window.index - 1 - jnp.arange(size)) % size  # 0 for the newest row
    valid = (age < window.count)[:, None]
    n = window.count.astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, window.values, 0.0), axis=0) / jnp.maximum(n, 1.0)
    squares = jnp.where(valid, jnp.square(window.values - mean[None, :]), 0.0)
    std = jnp.sqrt(jnp.sum(squares, axis=0) / jnp.maximum(n - 1.0, 1.0))
    return mean, std


def window_threshold(
    window: RollingWindow, scaling_factor: chex.Numeric, *, min_relative_std: float = 1e-3
) -> chex.Array:
    """``mean + scaling_factor * max(std, min_relative_std * |mean|)`` per column.

    The floor on the deviation keeps a (near-)constant history from flagging a value a hair
    above it: with a window of identical values the threshold is ``mean (1 + k 10^-3)``, not
    ``mean`` itself. It never binds on a noisy history (a loss or a gradient norm over
    mini-batches varies by percents). ``scaling_factor = inf`` gives an infinite threshold.
    """
    mean, std = window_stats(window)
    std = jnp.maximum(std, min_relative_std * jnp.abs(mean))
    k = jnp.asarray(scaling_factor, jnp.float32)
    return jnp.where(jnp.isposinf(k), jnp.inf, mean + k * std)  # k = inf: no threshold
