"""MADGRAD: momentumized, adaptive, dual-averaged gradient descent (Defazio & Jelassi)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, ScalarOrSchedule
from dlopt.core.combine import chain
from dlopt.transforms.regularizers import add_decayed_weights


class MadgradState(NamedTuple):
    """State of `scale_by_madgrad` (optax's field names)."""

    count: chex.Array  # int32 step k, saturating
    grad_sum_sq: chex.ArrayTree  # G_k, the lambda-weighted sum of squared gradients
    s: chex.ArrayTree  # s_k, the lambda-weighted sum of gradients
    x0: chex.ArrayTree  # x_0, the starting point


def _madgrad_leaf(g, big_g, s, x0, x, leaf, out_dtype, *, momentum, eps, lamb, writer):
    f = numerics.compute_dtype(g.dtype, big_g.dtype, s.dtype, x.dtype)
    g, x = g.astype(f), x.astype(f)
    lamb = lamb.astype(f)
    big_g = writer.put(big_g.astype(f) + lamb * numerics.abs_sq(g), big_g, leaf, 1)
    s = writer.put(s.astype(f) + lamb * g, s, leaf, 2)
    sigma = jnp.cbrt(big_g.astype(f)) + tree_lib.scalar_like(eps, g)
    z = x0.astype(f) - s.astype(f) / sigma
    c = tree_lib.scalar_like(momentum, g)
    x_new = (1 - c) * z + c * x
    return (x_new - x).astype(out_dtype), big_g, s, x0


def scale_by_madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: chex.Numeric = 0.9,
    eps: chex.Numeric = 1e-6,
) -> GradientTransformation:
    """Replaces the gradient with MADGRAD's step :math:`x_{k+1} - x_k` (already signed).

    .. math::
        \\lambda_k = (\\eta_k + \\epsilon)\\sqrt{k + 1}, \\quad
        G_{k+1} = G_k + \\lambda_k g_k^2, \\quad s_{k+1} = s_k + \\lambda_k g_k,

        z_{k+1} = x_0 - \\frac{s_{k+1}}{G_{k+1}^{1/3} + \\epsilon}, \\quad
        x_{k+1} = (1 - c)\\, z_{k+1} + c\\, x_k

    with :math:`c` = ``momentum``. A dual-averaging method: the iterate is rebuilt from
    :math:`x_0` and the weighted gradient sum each step; the cube root (not AdaGrad's
    square root) matches the growing weights :math:`\\lambda_k`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule (applied inside the rule).
        momentum: :math:`c` in [0, 1).
        eps: :math:`\\epsilon` > 0, added to the learning rate and to the denominator.

    Returns:
        A `GradientTransformation` with state `MadgradState`; ``update`` needs ``params``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.scale_by_madgrad(1e-2)

    References:
        Defazio and Jelassi, 2021, "Adaptivity without Compromise: A Momentumized, Adaptive,
        Dual Averaged Gradient Method for Stochastic Optimization" (arXiv:2101.11075).
    """
    validation.check_learning_rate(learning_rate)
    validation.check_in_range("momentum", momentum, 0.0, 1.0)
    validation.check_positive("eps", eps)

    def step(state, count, params):
        k = state.count
        lr = learning_rate(k) if callable(learning_rate) else learning_rate
        lr = jnp.asarray(lr).astype(jnp.float32) + jnp.float32(eps)
        return {"lamb": lr * jnp.sqrt(k.astype(jnp.float32) + 1)}

    return rule.moment_rule(
        MadgradState,
        functools.partial(_madgrad_leaf, momentum=momentum, eps=eps),
        moments={
            "grad_sum_sq": None,
            "s": None,
            "x0": rule.Moment(init=lambda params, dtype: tree_lib.copy(params, dtype)),
        },
        rounding="nearest",
        needs_params="scale_by_madgrad",
        inputs=lambda updates, state, params: (params,),
        step=step,
    )


def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: chex.Numeric = 0.9,
    weight_decay: chex.Numeric = 0.0,
    eps: chex.Numeric = 1e-6,
) -> GradientTransformation:
    """MADGRAD: SGD+momentum's generalization with Adam's speed (Defazio & Jelassi, 2021).

    The L2 term :math:`\\lambda w` is added to the gradient, then `scale_by_madgrad` makes
    the step (the learning rate acts inside the rule, through :math:`\\lambda_k`).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        momentum, eps: as in `scale_by_madgrad`.
        weight_decay: :math:`\\lambda` >= 0, an L2 term added to the gradient.

    Returns:
        ``chain(add_decayed_weights(weight_decay), scale_by_madgrad(learning_rate, momentum,
        eps))``; ``update`` needs ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.madgrad(0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(10):
        ...     grads = jax.grad(lambda w: jnp.sum(w**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = dlopt.apply_updates(params, updates)
        >>> bool(jnp.sum(params**2) < 5.0)
        True

    References:
        Defazio and Jelassi, 2021, "Adaptivity without Compromise: A Momentumized, Adaptive,
        Dual Averaged Gradient Method for Stochastic Optimization" (arXiv:2101.11075).
    """
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate=learning_rate, momentum=momentum, eps=eps),
    )
