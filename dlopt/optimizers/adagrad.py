"""AdaGrad: per-coordinate step sizes from the sum of all squared gradients so far."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.transforms.scaling import scale_by_learning_rate


def _rss_leaf(g, h, leaf, out_dtype, *, eps, writer):
    f = numerics.compute_dtype(g.dtype, h.dtype)
    g = g.astype(f)
    h = writer.put(h.astype(f) + numerics.abs_sq(g).astype(f), h, leaf, 2)
    total = jnp.real(h.astype(f))  # a sum of |g|^2: real even for complex params
    scaling = jax.lax.rsqrt(total + tree_lib.scalar_like(eps, total))
    scaling = jnp.where(total > 0, scaling, jnp.zeros_like(scaling))
    return (scaling.astype(f) * g).astype(out_dtype), h


class ScaleByRssState(NamedTuple):
    sum_of_squares: chex.ArrayTree  # h, the running sum of squared gradients
    count: chex.Array | None = None  # int32 step (dlopt only): seeds stochastic rounding


def scale_by_rss(
    initial_accumulator_value: chex.Numeric = 0.1,
    eps: chex.Numeric = 1e-7,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Divides by the root of the sum of squared gradients (AdaGrad's scaling).

    .. math::
        h_t = h_{t-1} + g_t \\odot g_t, \\qquad u_t = g_t / \\sqrt{h_t + \\epsilon}

    with :math:`h_0` = ``initial_accumulator_value``. Coordinates whose sum is still 0 get a
    zero update instead of ``0 / sqrt(eps)``. Complex gradients add :math:`|g|^2`.

    Args:
        initial_accumulator_value: :math:`h_0` >= 0.
        eps: :math:`\\epsilon` >= 0, added inside the square root (as optax does).
        nu_dtype: storage dtype of :math:`h` (default: each parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``nu_dtype``; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByRssState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_rss(), dlopt.scale_by_learning_rate(0.1))
    """
    validation.check_non_negative("initial_accumulator_value", initial_accumulator_value)
    validation.check_non_negative("eps", eps)
    h = rule.Moment(nu_dtype, rule.filled(initial_accumulator_value))
    return rule.moment_rule(
        ScaleByRssState,
        functools.partial(_rss_leaf, eps=eps),
        moments={"sum_of_squares": h},
        rounding=state_rounding,
    )


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: chex.Numeric = 0.1,
    eps: chex.Numeric = 1e-7,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """AdaGrad: large steps for rarely-seen features, small steps for frequent ones.

    The classic update (Duchi et al.):

    .. math::
        h \\leftarrow h + g \\odot g, \\qquad w \\leftarrow w - \\eta\\, g / (\\sqrt{h} + \\epsilon)

    dlopt, like optax (and so with identical numbers), puts :math:`\\epsilon` inside the root,
    :math:`w \\leftarrow w - \\eta\\, g / \\sqrt{h + \\epsilon}`; the two agree exactly at
    ``eps=0`` and differ by :math:`O(\\epsilon / \\sqrt{h})` otherwise.

    Args:
        learning_rate: step size :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        initial_accumulator_value: :math:`h_0` >= 0 (torch's default is 0, optax's 0.1).
        eps: :math:`\\epsilon` >= 0.
        nu_dtype, state_rounding: as in `scale_by_rss` (dlopt only).

    Returns:
        ``chain(scale_by_rss(initial_accumulator_value, eps),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adagrad(0.1)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Duchi, Hazan and Singer, 2011, "Adaptive Subgradient Methods for Online Learning
        and Stochastic Optimization", JMLR 12.
    """
    return chain(
        scale_by_rss(
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )
