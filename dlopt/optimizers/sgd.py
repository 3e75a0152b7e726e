"""Stochastic gradient descent, with heavy-ball momentum or Nesterov momentum."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex

from dlopt import tree as tree_lib
from dlopt import validation
from dlopt.base import GradientTransformation, GradientTransformationExtraArgs, ScalarOrSchedule
from dlopt.base import identity as identity_transform
from dlopt.combine import chain
from dlopt.optimizers.scaling import scale_by_learning_rate


class TraceState(NamedTuple):
    trace: chex.ArrayTree  # the velocity, one buffer per parameter


def _trace_leaf(g, t, decay, nesterov):
    new_t = g.astype(t.dtype) + tree_lib.scalar_like(decay, t) * t
    update = g + tree_lib.scalar_like(decay, g) * new_t.astype(g.dtype) if nesterov else new_t
    return update.astype(g.dtype), new_t


def trace(
    decay: chex.Numeric, nesterov: bool = False, accumulator_dtype: Any | None = None
) -> GradientTransformation:
    """Momentum: accumulates a velocity ``v``.

    .. math::
        v_t = g_t + \\mu v_{t-1}, \\qquad
        u_t = v_t \\ \\text{(heavy ball)} \\quad\\text{or}\\quad u_t = g_t + \\mu v_t
        \\ \\text{(Nesterov)}

    Args:
        decay: the momentum coefficient ``mu`` in [0, 1).
        nesterov: use Nesterov's look-ahead form.
        accumulator_dtype: dtype of ``v`` (default: each parameter's dtype).

    Returns:
        A `GradientTransformation` with state `TraceState`.
    """
    validation.check_in_range("decay", decay, 0.0, 1.0)

    def init_fn(params):
        return TraceState(trace=tree_lib.moments_like(params, accumulator_dtype))

    def update_fn(updates, state, params=None):
        del params
        updates, new_trace = tree_lib.map_unzip(
            lambda g, t: _trace_leaf(g, t, decay, nesterov), updates, state.trace
        )
        return updates, TraceState(trace=new_trace)

    return GradientTransformation(init_fn, update_fn)


def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: chex.Numeric | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
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
        momentum: ``a`` in [0, 1), or None for plain SGD (no state).
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum buffer.

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
    if momentum is not None:
        validation.check_in_range("momentum", momentum, 0.0, 1.0)
    if nesterov and momentum is None:
        raise ValueError("nesterov=True needs a momentum, got momentum=None. Pass momentum=0.9.")
    return chain(
        trace(momentum, nesterov, accumulator_dtype)
        if momentum is not None
        else identity_transform(),
        scale_by_learning_rate(learning_rate),
    )
