"""Stochastic gradient descent, with heavy-ball momentum or Nesterov momentum."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.transforms.scaling import scale_by_learning_rate


class TraceState(NamedTuple):
    trace: chex.ArrayTree  # the velocity, one buffer per parameter
    count: chex.Array | None = None  # int32 step (dlopt only): seeds stochastic rounding


def _trace_leaf(g, t, leaf, out_dtype, *, decay, nesterov, writer):
    f = numerics.compute_dtype(g.dtype, t.dtype)
    g = g.astype(f)
    new_t = writer.put(g + tree_lib.scalar_like(decay, g) * t.astype(f), t, leaf, 1)
    stored = new_t.astype(f)
    update = g + tree_lib.scalar_like(decay, g) * stored if nesterov else stored
    return update.astype(out_dtype), new_t


def trace(
    decay: chex.Numeric,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Momentum: accumulates a velocity ``v``.

    .. math::
        v_t = g_t + \\mu v_{t-1}, \\qquad
        u_t = v_t \\ \\text{(heavy ball)} \\quad\\text{or}\\quad u_t = g_t + \\mu v_t
        \\ \\text{(Nesterov)}

    ``decay=1`` is a running sum of the updates. Arithmetic runs in float32 (or wider);
    ``v`` is stored in its dtype with stochastic rounding when that is narrower.

    Args:
        decay: the momentum coefficient ``mu`` in [0, 1].
        nesterov: use Nesterov's look-ahead form.
        accumulator_dtype: dtype of ``v`` (default: each parameter's dtype).
        mu_dtype: the same as ``accumulator_dtype``, under the name every other dlopt
            optimizer uses (dlopt only; pass one of the two).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower dtype
            (dlopt only).

    Returns:
        A `GradientTransformation` with state `TraceState`.
    """
    validation.check_in_range("decay", decay, 0.0, 1.0, high_closed=True)
    numerics.check_rounding(state_rounding)
    dtype = numerics.moment_dtype("accumulator_dtype", accumulator_dtype, mu_dtype)
    leaf_fn = functools.partial(_trace_leaf, decay=decay, nesterov=nesterov)
    return rule.moment_rule(TraceState, leaf_fn, moments={"trace": dtype}, rounding=state_rounding)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: chex.Numeric | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Plain SGD: :math:`w \\leftarrow w - \\eta g`.

    Momentum, in the classic form :math:`v \\leftarrow a v - \\eta g,\\ w \\leftarrow w + v`,
    computed as optax does (identical for a constant ``eta``): :math:`m \\leftarrow g + a m,\\
    w \\leftarrow w - \\eta m`.

    Nesterov (NAG), in the classic form :math:`v \\leftarrow a v - \\eta \\nabla f(w + a v),\\
    w \\leftarrow w + v`, computed in the Sutskever et al. reparametrisation used by optax and
    torch: :math:`m \\leftarrow g + a m,\\ w \\leftarrow w - \\eta (g + a m)`.

    Deliberate difference from optax: ``nesterov=True`` without ``momentum`` raises a
    ``ValueError`` (optax silently runs plain SGD).

    Args:
        learning_rate: step size ``eta`` >= 0, or a schedule ``step -> eta``.
        momentum: ``a`` in [0, 1], or None for plain SGD (no state).
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum buffer.
        mu_dtype, state_rounding: as in `trace` (dlopt only).

    Returns:
        A `GradientTransformationExtraArgs`: ``chain(trace(momentum, nesterov),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.sgd(0.1, momentum=0.9, nesterov=True)
        >>> state = tx.init({"w": jnp.zeros(2)})

    References:
        Polyak, 1964; Sutskever et al., 2013, "On the importance of initialization and
        momentum in deep learning".
    """
    validation.check_learning_rate(learning_rate)
    numerics.check_rounding(state_rounding)
    if momentum is not None:
        validation.check_in_range("momentum", momentum, 0.0, 1.0, high_closed=True)
    if nesterov and momentum is None:
        raise ValueError("nesterov=True needs a momentum, got momentum=None. Pass momentum=0.9.")
    numerics.moment_dtype("accumulator_dtype", accumulator_dtype, mu_dtype)  # even unused
    if momentum is None:
        first = float_params_only()
    else:
        first = trace(
            momentum, nesterov, accumulator_dtype, mu_dtype=mu_dtype, state_rounding=state_rounding
        )
    return chain(first, scale_by_learning_rate(learning_rate))


def float_params_only() -> GradientTransformation:
    """The identity, whose ``init`` rejects non-floating params (naming the leaf), as every
    optimizer with state does; plain `sgd` starts with it."""

    def init_fn(params):
        tree_lib.check_float_params(params)
        return EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init_fn, update_fn)
