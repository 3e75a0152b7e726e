"""Lion: the sign of an interpolated momentum (found by program search)."""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

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

LION_MODES = ("hard", "smooth", "refined")


def _direction(x, mode, smooth_beta):
    if mode == "hard":
        return jnp.sign(x)
    if mode == "smooth":
        return jnp.tanh(tree_lib.scalar_like(smooth_beta, x) * x)
    return jnp.where(jnp.abs(x) < 1, x, jnp.sign(x))  # "refined"


def _lion_leaf(g, mu, leaf, out_dtype, *, b1, b2, mode, smooth_beta, writer):
    f = numerics.compute_dtype(g.dtype, mu.dtype)
    m, g = mu.astype(f), g.astype(f)
    interpolated = tree_lib.scalar_like(1 - b1, g) * g + tree_lib.scalar_like(b1, m) * m
    new_mu = writer.put(numerics.ema(m, g, b2), mu, leaf, 1)
    return _direction(interpolated, mode, smooth_beta).astype(out_dtype), new_mu


class ScaleByLionState(NamedTuple):
    count: chex.Array  # int32 step, saturating
    mu: chex.ArrayTree  # m, the momentum (in mu_dtype)


def scale_by_lion(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.99,
    mu_dtype: Any | None = None,
    *,
    mode: Literal["hard", "smooth", "refined"] = "hard",
    smooth_beta: float = 1.0,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """The sign of an interpolation of momentum and gradient (Lion's direction).

    .. math::
        c_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        u_t = \\operatorname{sign}(c_t), \\quad
        m_t = \\beta_2 m_{t-1} + (1 - \\beta_2) g_t

    ``mode="smooth"`` uses :math:`\\tanh(\\beta_s c_t)` and ``mode="refined"`` keeps
    :math:`c_t` where :math:`|c_t| < 1` and its sign elsewhere (as optax does).

    Args:
        b1: :math:`\\beta_1` in [0, 1), the interpolation weight of the momentum.
        b2: :math:`\\beta_2` in [0, 1), the momentum's decay.
        mu_dtype: dtype of :math:`m` (default: each parameter's dtype).
        mode: "hard" (sign, the paper), "smooth" or "refined".
        smooth_beta: :math:`\\beta_s` > 0 for ``mode="smooth"``.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``mu_dtype`` (dlopt only).

    Returns:
        A `GradientTransformation` with state `ScaleByLionState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_lion(), dlopt.scale_by_learning_rate(1e-4))
    """
    numerics.check_betas(b1, b2)
    validation.check_choice("mode", mode, LION_MODES)
    validation.check_positive("smooth_beta", smooth_beta)
    leaf_fn = functools.partial(_lion_leaf, b1=b1, b2=b2, mode=mode, smooth_beta=smooth_beta)
    return rule.moment_rule(
        ScaleByLionState, leaf_fn, moments={"mu": mu_dtype}, rounding=state_rounding
    )


def lion(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: Mask | None = None,
    *,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Lion (EvoLved Sign Momentum): every coordinate moves by exactly the learning rate.

    .. math::
        c \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        w \\leftarrow w - \\eta\\,(\\operatorname{sign}(c) + \\lambda w), \\quad
        m \\leftarrow \\beta_2 m + (1 - \\beta_2) g

    Sign updates are larger than Adam's, so Lion wants a 3-10x smaller learning rate and a
    3-10x larger weight decay :math:`\\lambda` (decoupled, as in `adamw`).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        mu_dtype: dtype of the momentum (e.g. ``jnp.bfloat16``).
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.
        state_rounding: as in `scale_by_lion` (dlopt only).

    Returns:
        ``chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.lion(1e-4, weight_decay=1e-2)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms", NeurIPS.
    """
    return chain(
        scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype, state_rounding=state_rounding),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
