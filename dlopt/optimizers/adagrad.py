"""AdaGrad: per-coordinate step sizes from the sum of all squared gradients so far."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt import tree as tree_lib
from dlopt import validation
from dlopt.base import GradientTransformation, GradientTransformationExtraArgs, ScalarOrSchedule
from dlopt.combine import chain
from dlopt.optimizers.scaling import scale_by_learning_rate


def _rss_leaf(g, h, eps):
    h = h + jnp.square(g).astype(h.dtype)
    scaling = jnp.where(h > 0, jax.lax.rsqrt(h + tree_lib.scalar_like(eps, h)), jnp.zeros_like(h))
    return (scaling.astype(g.dtype) * g), h


class ScaleByRssState(NamedTuple):
    sum_of_squares: chex.ArrayTree  # h, the running sum of squared gradients


def scale_by_rss(
    initial_accumulator_value: chex.Numeric = 0.1, eps: chex.Numeric = 1e-7
) -> GradientTransformation:
    """Divides by the root of the sum of squared gradients (AdaGrad's scaling).

    .. math::
        h_t = h_{t-1} + g_t \\odot g_t, \\qquad u_t = g_t / \\sqrt{h_t + \\epsilon}

    with :math:`h_0` = ``initial_accumulator_value``. Coordinates whose sum is still 0 get a
    zero update instead of ``0 / sqrt(eps)``.

    Args:
        initial_accumulator_value: :math:`h_0` >= 0.
        eps: :math:`\\epsilon` >= 0, added inside the square root (as optax does).

    Returns:
        A `GradientTransformation` with state `ScaleByRssState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_rss(), dlopt.scale_by_learning_rate(0.1))
    """
    validation.check_non_negative("initial_accumulator_value", initial_accumulator_value)
    validation.check_non_negative("eps", eps)

    def init_fn(params):
        tree_lib.check_float_params(params)
        return ScaleByRssState(sum_of_squares=tree_lib.full_like(params, initial_accumulator_value))

    def update_fn(updates, state, params=None):
        del params
        updates, h = tree_lib.map_unzip(
            lambda g, h: _rss_leaf(g, h, eps), updates, state.sum_of_squares
        )
        return updates, ScaleByRssState(sum_of_squares=h)

    return GradientTransformation(init_fn, update_fn)


def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: chex.Numeric = 0.1,
    eps: chex.Numeric = 1e-7,
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
        scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
        scale_by_learning_rate(learning_rate),
    )
