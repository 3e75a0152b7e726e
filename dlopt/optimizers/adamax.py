"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp

from dlopt import tree as tree_lib
from dlopt import validation
from dlopt.base import GradientTransformation, GradientTransformationExtraArgs, ScalarOrSchedule
from dlopt.combine import chain
from dlopt.optimizers.adam import check_betas
from dlopt.optimizers.scaling import scale_by_learning_rate


def _adamax_leaf(g, mu, nu, count, b1, b2, eps):
    mu = tree_lib.ema(mu, g, b1)
    g_abs = jnp.abs(g).astype(nu.dtype) + tree_lib.scalar_like(eps, nu)
    nu = jnp.maximum(g_abs, tree_lib.scalar_like(b2, nu) * nu)
    mu_hat = mu / tree_lib.bias_correction(b1, count).astype(mu.dtype)
    return (mu_hat / nu.astype(mu_hat.dtype)).astype(g.dtype), mu, nu


class ScaleByAdamaxState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the first moment
    nu: chex.ArrayTree  # u, the exponentially weighted infinity norm


def scale_by_adamax(
    b1: chex.Numeric = 0.9, b2: chex.Numeric = 0.999, eps: chex.Numeric = 1e-8
) -> GradientTransformation:
    """Scales by the bias-corrected first moment over a decaying maximum of ``|g|``.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        u_t = \\max(\\beta_2 u_{t-1}, |g_t| + \\epsilon), \\quad
        \\text{update}_t = \\frac{m_t}{(1 - \\beta_1^t)\\, u_t}

    :math:`u` needs no bias correction. :math:`\\epsilon` sits inside the maximum, as in
    optax, so :math:`u_t \\ge \\epsilon` and a zero gradient cannot divide by zero.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamaxState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adamax(), dlopt.scale_by_learning_rate(2e-3))
    """
    check_betas(b1, b2)
    validation.check_non_negative("eps", eps)

    def init_fn(params):
        return ScaleByAdamaxState(
            count=jnp.zeros([], jnp.int32),
            mu=tree_lib.moments_like(params),
            nu=tree_lib.moments_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = tree_lib.safe_increment(state.count)
        updates, mu, nu = tree_lib.map_unzip(
            lambda g, m, v: _adamax_leaf(g, m, v, count, b1, b2, eps),
            updates,
            state.mu,
            state.nu,
        )
        return updates, ScaleByAdamaxState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
) -> GradientTransformationExtraArgs:
    """Adamax (Kingma and Ba, section 7.1): Adam with an infinity-norm second moment.

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        u \\leftarrow \\max(\\beta_2 u, |g| + \\epsilon), \\quad
        w \\leftarrow w - \\frac{\\eta}{1 - \\beta_1^t} \\frac{m}{u}

    The paper has no :math:`\\epsilon`; dlopt, like optax, adds it to :math:`|g|` inside
    the maximum. Like optax's ``adamax`` this takes no ``mu_dtype``: both moments are kept
    in each parameter's dtype.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.

    Returns:
        ``chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adamax(2e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization", ICLR, section 7.1.
    """
    return chain(scale_by_adamax(b1=b1, b2=b2, eps=eps), scale_by_learning_rate(learning_rate))
