"""Adan: adaptive Nesterov momentum from gradient differences, without a look-ahead gradient."""

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


def _adan_leaf(g, m, v, n, g_prev, leaf, out_dtype, *, b1, b2, b3, eps, eps_root, writer):
    t = writer.count
    f = numerics.compute_dtype(g.dtype, m.dtype, v.dtype, n.dtype, g_prev.dtype)
    g = g.astype(f)
    first = t == 1
    diff = jnp.where(first, jnp.zeros_like(g), g - g_prev.astype(f))
    m = writer.put(numerics.ema(m.astype(f), g, b1), m, leaf, 1)
    v = writer.put(numerics.ema(v.astype(f), diff, b2), v, leaf, 2)
    sq = g + tree_lib.scalar_like(1 - b2, diff) * diff
    n = writer.put(numerics.ema(n.astype(f), numerics.abs_sq(sq), b3), n, leaf, 3)
    g_prev = writer.put(g, g_prev, leaf, 4)
    m_hat = numerics.unbias(m.astype(f), b1, t)
    v_hat = numerics.unbias(v.astype(f), b2, t)
    n_hat = numerics.unbias(n.astype(f), b3, t)
    direction = m_hat + tree_lib.scalar_like(1 - b2, v_hat) * v_hat
    denominator = jnp.sqrt(n_hat + tree_lib.scalar_like(eps_root, n_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (direction / denominator).astype(out_dtype), m, v, n, g_prev


class ScaleByAdanState(NamedTuple):
    m: chex.ArrayTree  # EMA of the gradients (in mu_dtype)
    v: chex.ArrayTree  # EMA of the gradient differences (in mu_dtype)
    n: chex.ArrayTree  # EMA of the squared corrected gradients (in nu_dtype)
    g: chex.ArrayTree  # the previous gradient (in mu_dtype)
    t: chex.Array  # int32 step, saturating


def scale_by_adan(
    b1: chex.Numeric = 0.98,
    b2: chex.Numeric = 0.92,
    b3: chex.Numeric = 0.99,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by Adan's step: momentum of the gradients plus momentum of their differences,
    over the root of a second moment of the Nesterov-corrected gradient.

    .. math::
        \\Delta_t = g_t - g_{t-1}\\ (\\Delta_1 = 0), \\quad
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) \\Delta_t

    .. math::
        n_t = \\beta_3 n_{t-1} + (1 - \\beta_3) (g_t + (1 - \\beta_2) \\Delta_t)^2, \\quad
        u_t = \\frac{\\hat m_t + (1 - \\beta_2) \\hat v_t}{\\sqrt{\\hat n_t + \\epsilon_{root}}
        + \\epsilon}

    where hats divide by :math:`1 - \\beta^t`. The betas here are decay rates, as in optax
    (the paper's :math:`\\beta_k` are one minus these).

    Args:
        b1: decay of :math:`m`, in [0, 1).
        b2: decay of :math:`v`, in [0, 1).
        b3: decay of :math:`n`, in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: storage dtype of :math:`m`, :math:`v` and the previous gradient (default:
            each parameter's); dlopt only.
        nu_dtype: storage dtype of :math:`n`; dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByAdanState` (optax's field names).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adan(), dlopt.scale_by_learning_rate(1e-3))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    validation.check_in_range("b3", b3, 0.0, 1.0)
    leaf_fn = functools.partial(_adan_leaf, b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root)
    moments = {"m": mu_dtype, "v": mu_dtype, "n": nu_dtype, "g": mu_dtype}
    return rule.moment_rule(
        ScaleByAdanState, leaf_fn, moments=moments, rounding=state_rounding, count="t"
    )


def adan(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.98,
    b2: chex.Numeric = 0.92,
    b3: chex.Numeric = 0.99,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Adan (ADAptive Nesterov momentum): Nesterov acceleration estimated from gradient
    differences, so no gradient at an extrapolated point is needed.

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{\\hat m_t + (1 - \\beta_2) \\hat v_t}
        {\\sqrt{\\hat n_t + \\epsilon_{root}} + \\epsilon} + \\lambda w\\right)

    with :math:`m, v, n` as in `scale_by_adan`. As in optax, the weight decay is decoupled
    and added (the paper's is proximal, :math:`w / (1 + \\lambda\\eta)`), and the moments
    are bias-corrected.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1, b2, b3, eps, eps_root: as in `scale_by_adan`.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_adan` (dlopt only).

    Returns:
        ``chain(scale_by_adan(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adan(1e-3, weight_decay=0.02)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Xie, Zhou, Li, Lin and Yan, 2024, "Adan: Adaptive Nesterov Momentum Algorithm for
        Faster Optimizing Deep Models", IEEE TPAMI (arXiv:2208.06677).
    """
    return chain(
        scale_by_adan(
            b1, b2, b3, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
