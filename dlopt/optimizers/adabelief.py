"""AdaBelief: Adam whose second moment tracks the gradient's deviation from its momentum."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.transforms.scaling import scale_by_learning_rate


def _belief_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, eps_root, nesterov, writer):
    count = writer.count
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, b1), mu, leaf, 1)
    m = mu.astype(f)
    s = numerics.ema(nu.astype(f), numerics.abs_sq(g - m), b2)
    nu = writer.put(s + tree_lib.scalar_like(eps_root, s), nu, leaf, 2)
    m_hat = numerics.unbias_momentum(m, g, b1, count, nesterov=nesterov)
    s_hat = numerics.unbias(nu.astype(f), b2, count)
    denominator = jnp.sqrt(s_hat)
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (m_hat / denominator).astype(out_dtype), mu, nu


class ScaleByBeliefState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the first moment (in mu_dtype)
    nu: chex.ArrayTree  # s, the second moment of the prediction error g - m


def scale_by_belief(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-16,
    eps_root: chex.Numeric = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by AdaBelief's step: momentum over the root of the prediction error's moment.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        s_t = \\beta_2 s_{t-1} + (1 - \\beta_2) (g_t - m_t)^2 + \\epsilon_{root}, \\quad
        u_t = \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{s_t / (1 - \\beta_2^t)} + \\epsilon}

    A gradient that agrees with its momentum (the "belief") gets a large step, a surprising
    one a small step. ``nesterov=True`` uses Nadam's :math:`\\hat m_t` (see
    `scale_by_adam`). Complex parameters use :math:`|g_t - m_t|^2`.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0 (the paper's default is 1e-8, optax's 1e-16).
        eps_root: :math:`\\epsilon_{root}` >= 0, added to :math:`s_t` at every step (must be
            > 0 when differentiating through the update).
        nesterov: use Nesterov momentum.
        mu_dtype, nu_dtype: storage dtypes of :math:`m` and :math:`s` (default: each
            parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByBeliefState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_belief(), dlopt.scale_by_learning_rate(1e-3))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    leaf_fn = functools.partial(
        _belief_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov
    )
    return rule.moment_rule(
        ScaleByBeliefState,
        leaf_fn,
        moments={"mu": mu_dtype, "nu": nu_dtype},
        rounding=state_rounding,
    )


def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-16,
    eps_root: chex.Numeric = 1e-16,
    *,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """AdaBelief: Adam with the step size set by the belief in the gradient.

    .. math::
        s_t = \\beta_2 s_{t-1} + (1 - \\beta_2)(g_t - m_t)^2 + \\epsilon_{root}, \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m_t}{\\sqrt{s_t / (1 - \\beta_2^t)} + \\epsilon}

    with :math:`m_t, \\hat m_t` as in `adam`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1, b2, eps, eps_root, nesterov: as in `scale_by_belief`.
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_belief` (dlopt only).

    Returns:
        ``chain(scale_by_belief(...), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adabelief(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in
        Observed Gradients", NeurIPS.
    """
    return chain(
        scale_by_belief(
            b1, b2, eps, eps_root, nesterov=nesterov, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
