"""Yogi: Adam whose second moment moves additively, by the sign of its error."""

from __future__ import annotations

import functools
from typing import Any

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.optimizers.adam import ScaleByAdamState
from dlopt.transforms.scaling import scale_by_learning_rate


def _yogi_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, eps_root, writer):
    count = writer.count
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, b1), mu, leaf, 1)
    g2 = numerics.abs_sq(g)  # real
    v = jnp.real(nu.astype(f)).astype(g2.dtype)
    v = v - tree_lib.scalar_like(1 - b2, g2) * jnp.sign(v - g2) * g2
    nu = writer.put(v.astype(f), nu, leaf, 2)
    m_hat = numerics.unbias(mu.astype(f), b1, count)
    v_hat = numerics.unbias(nu.astype(f), b2, count)
    denominator = jnp.sqrt(v_hat + tree_lib.scalar_like(eps_root, v_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (m_hat / denominator).astype(out_dtype), mu, nu


def scale_by_yogi(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-3,
    eps_root: chex.Numeric = 0.0,
    initial_accumulator_value: chex.Numeric = 1e-6,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by Yogi's step: Adam's, with an additive second-moment update.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = v_{t-1} - (1 - \\beta_2) \\operatorname{sign}(v_{t-1} - g_t^2)\\, g_t^2, \\quad
        u_t = \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{v_t / (1 - \\beta_2^t) + \\epsilon_{root}}
        + \\epsilon}

    Adam's :math:`v_t - v_{t-1} = (1 - \\beta_2)(g_t^2 - v_{t-1})` can make :math:`v` (and so
    the step) change fast; Yogi's change has magnitude :math:`(1 - \\beta_2) g_t^2` whatever
    :math:`v_{t-1}`. Both moments start at ``initial_accumulator_value`` (as in optax and the
    paper), so zero gradients still move the parameters slightly at first. Complex
    parameters use :math:`|g_t|^2`.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0 (1e-3 in the paper and optax).
        eps_root: :math:`\\epsilon_{root}` >= 0.
        initial_accumulator_value: the initial :math:`m_0 = v_0` >= 0.
        mu_dtype, nu_dtype: storage dtypes of :math:`m` and :math:`v` (default: each
            parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState` (optax's too).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_yogi(), dlopt.scale_by_learning_rate(1e-2))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    validation.check_non_negative("initial_accumulator_value", initial_accumulator_value)
    start = rule.filled(initial_accumulator_value)
    return rule.moment_rule(
        ScaleByAdamState,
        functools.partial(_yogi_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        moments={"mu": rule.Moment(mu_dtype, start), "nu": rule.Moment(nu_dtype, start)},
        rounding=state_rounding,
    )


def yogi(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-3,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Yogi: Adam with a second moment that cannot grow or shrink multiplicatively.

    .. math::
        v_t = v_{t-1} - (1 - \\beta_2) \\operatorname{sign}(v_{t-1} - g_t^2)\\, g_t^2, \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m_t}{\\sqrt{v_t / (1 - \\beta_2^t)} + \\epsilon}

    with :math:`m_t, \\hat m_t` as in `adam` and :math:`m_0 = v_0 = 10^{-6}`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1, b2, eps: as in `scale_by_yogi`.
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_yogi` (dlopt only).

    Returns:
        ``chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.yogi(1e-2)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Zaheer, Reddi, Sachan, Kale and Kumar, 2018, "Adaptive Methods for Nonconvex
        Optimization", NeurIPS.
    """
    return chain(
        scale_by_yogi(
            b1, b2, eps, mu_dtype=mu_dtype, nu_dtype=nu_dtype, state_rounding=state_rounding
        ),
        scale_by_learning_rate(learning_rate),
    )
