"""Adamax: Adam with the infinity norm in place of the second moment; AdamaxW adds decoupled
weight decay."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


def _adamax_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, writer):
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, b1), mu, leaf, 1)
    g_abs = jnp.abs(g) + tree_lib.scalar_like(eps, jnp.abs(g))  # real, also for complex g
    decayed = tree_lib.scalar_like(b2, g_abs) * jnp.real(nu).astype(g_abs.dtype)
    nu = writer.put(jnp.maximum(g_abs, decayed), nu, leaf, 2)
    m_hat = numerics.unbias(mu.astype(f), b1, writer.count)
    return (m_hat / nu.astype(f)).astype(out_dtype), mu, nu


class ScaleByAdamaxState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the first moment
    nu: chex.ArrayTree  # u, the exponentially weighted infinity norm


def scale_by_adamax(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
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
        eps: :math:`\\epsilon` > 0 (it keeps :math:`u_t > 0`).
        mu_dtype, nu_dtype: storage dtypes of :math:`m` and :math:`u` (default: each
            parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamaxState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adamax(), dlopt.scale_by_learning_rate(2e-3))
    """
    numerics.check_betas(b1, b2)
    validation.check_positive("eps", eps)
    leaf_fn = functools.partial(_adamax_leaf, b1=b1, b2=b2, eps=eps)
    return rule.moment_rule(
        ScaleByAdamaxState,
        leaf_fn,
        moments={"mu": mu_dtype, "nu": nu_dtype},
        rounding=state_rounding,
    )


def adamax(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Adamax (Kingma and Ba, section 7.1): Adam with an infinity-norm second moment.

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        u \\leftarrow \\max(\\beta_2 u, |g| + \\epsilon), \\quad
        w \\leftarrow w - \\frac{\\eta}{1 - \\beta_1^t} \\frac{m}{u}

    The paper has no :math:`\\epsilon`; dlopt, like optax, adds it to :math:`|g|` inside
    the maximum. Deliberate difference from optax: ``eps`` must be > 0 (with 0 a zero
    gradient divides zero by zero).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` > 0.
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_adamax` (dlopt only).

    Returns:
        ``chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adamax(2e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization", ICLR, section 7.1.
    """
    return chain(
        scale_by_adamax(
            b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip


def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """AdamaxW: `adamax` with weight decay decoupled from the scaling (as AdamW is to Adam).

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{m}{(1 - \\beta_1^t)\\, u} + \\lambda w\\right)

    with :math:`m, u` as in `adamax`; the decay is scaled by :math:`\\eta` as in optax and
    torch. Deliberate difference from optax: ``eps`` must be > 0 (see `adamax`).

    Args:
        learning_rate, b1, b2, eps, mu_dtype, nu_dtype, state_rounding: as in `adamax`.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.

    Returns:
        ``chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adamaxw(2e-3, weight_decay=1e-2)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Kingma and Ba, 2015, section 7.1; Loshchilov and Hutter, 2019, "Decoupled Weight
        Decay Regularization", ICLR.
    """
    return chain(
        scale_by_adamax(
            b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
