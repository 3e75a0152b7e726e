"""An exponential moving average of the updates (optionally debiased), as a transform."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation


class EmaState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    ema: chex.ArrayTree  # the moving average (in accumulator_dtype)


def _ema_leaf(u, e, leaf, out_dtype, *, decay, debias, writer):
    f = numerics.compute_dtype(u.dtype, e.dtype)
    e = writer.put(numerics.ema(e.astype(f), u.astype(f), decay), e, leaf, 1)
    average = e.astype(f)
    if debias:
        average = numerics.unbias(average, decay, writer.count)
    return average.astype(out_dtype), e


def ema(
    decay: chex.Numeric,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Replaces the updates by their exponential moving average.

    .. math::
        e_t = \\rho e_{t-1} + (1 - \\rho) u_t, \\qquad
        u_t \\leftarrow \\frac{e_t}{1 - \\rho^t} \\ \\text{(debias)} \\quad \\text{or} \\quad e_t

    from :math:`e_0 = 0`. (`trace` instead sums :math:`e_t = \\rho e_{t-1} + u_t`.)
    Arithmetic in float32 (or wider); :math:`e` is stored in its dtype with stochastic
    rounding when narrower, and the update is computed from the stored value.

    Args:
        decay: :math:`\\rho` in [0, 1) (1, a frozen zero average, only without ``debias``).
        debias: divide by :math:`1 - \\rho^t`, so that early averages are not shrunk to 0.
        accumulator_dtype: dtype of :math:`e` (default: each parameter's dtype).
        mu_dtype: the same as ``accumulator_dtype``, under the name every dlopt optimizer
            uses (dlopt only; pass one of the two).
        state_rounding: ``"stochastic"`` or ``"nearest"`` (dlopt only).

    Returns:
        A `GradientTransformation` with state `EmaState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.ema(0.9), dlopt.scale_by_learning_rate(0.1))
    """
    validation.check_in_range("decay", decay, 0.0, 1.0, high_closed=not debias)
    numerics.check_rounding(state_rounding)
    dtype = numerics.moment_dtype("accumulator_dtype", accumulator_dtype, mu_dtype)

    def init_fn(params):
        return EmaState(count=jnp.zeros([], jnp.int32), ema=tree_lib.moments_like(params, dtype))

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        count = tree_lib.safe_increment(state.count)
        writer = numerics.StateWriter(count, state_rounding)
        updates, new_ema = tree_lib.map_unzip(
            functools.partial(_ema_leaf, decay=decay, debias=debias, writer=writer),
            updates,
            state.ema,
            numerics.leaf_indices(updates),
            numerics.out_dtypes(updates, params, state.ema if dtype is None else None),
        ) or (updates, state.ema)
        return updates, EmaState(count=count, ema=new_ema)

    return GradientTransformation(init_fn, update_fn)
