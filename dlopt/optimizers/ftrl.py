"""FTRL-Proximal (Follow The Regularized Leader), Keras 3's update rule."""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    with_extra_args_support,
)


def _ftrl_leaf(g, n, c, w, leaf, out_dtype, *, power, l1, l2, shrink, beta, writer, rates):
    first, lr, lr_prev = rates
    f = numerics.compute_dtype(g.dtype, n.dtype, c.dtype, w.dtype)
    g, w = g.astype(f), w.astype(f)
    lr, lr_prev = lr.astype(f), lr_prev.astype(f)
    n = writer.put(n.astype(f) + g * g, n, leaf, 2)
    if isinstance(power, int | float) and power == -0.5:
        n_pow = jnp.sqrt(n.astype(f))
    else:
        n_pow = jnp.power(n.astype(f), -tree_lib.scalar_like(power, n.astype(f)))
    l1_ = tree_lib.scalar_like(l1, g)
    l2_ = tree_lib.scalar_like(l2, g)
    # c = lr * clip(z, +-l1) ties the state to w; on the first step it is set from w.
    c_prev = jnp.where(first, -lr_prev * l1_ * jnp.sign(w), c.astype(f))
    g = g + tree_lib.scalar_like(2 * shrink, g) * w
    h = c_prev + lr * g + 2 * l2_ * (lr - lr_prev) * w
    q = n_pow + tree_lib.scalar_like(beta, g) + 2 * l2_ * lr
    y, bound = h - q * w, lr * l1_
    c = writer.put(jnp.clip(y, -bound, bound), c, leaf, 1)
    safe_q = jnp.where(q > 0, q, jnp.ones_like(q))
    step = jnp.where(q > 0, (c.astype(f) - h) / safe_q, jnp.zeros_like(q))
    update = jnp.where(jnp.abs(y) <= bound, -w, step)  # |y| <= lr * l1: w becomes exactly 0
    return update.astype(out_dtype), n, c


class FtrlState(NamedTuple):
    accumulator: chex.ArrayTree  # n, the sum of squared gradients (Keras's accumulator)
    clipped_linear: chex.ArrayTree  # lr * clip(z, -l1, l1), Keras's linear_clipped times lr
    count: chex.Array  # int32 step, saturating


def ftrl(
    learning_rate: ScalarOrSchedule,
    learning_rate_power: chex.Numeric = -0.5,
    initial_accumulator_value: chex.Numeric = 0.1,
    l1_regularization_strength: chex.Numeric = 0.0,
    l2_regularization_strength: chex.Numeric = 0.0,
    l2_shrinkage_regularization_strength: chex.Numeric = 0.0,
    beta: chex.Numeric = 0.0,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """FTRL-Proximal with per-coordinate learning rates, as keras.optimizers.Ftrl (Keras 3).

    Keras's rule for one weight :math:`w` (learning rate :math:`\\eta`, power :math:`p`):

    .. math::
        n_t = n_{t-1} + g_t^2, \\quad
        \\tilde g_t = g_t + 2 \\lambda_s w_{t-1}, \\quad
        \\sigma_t = \\frac{n_t^{-p} - n_{t-1}^{-p}}{\\eta}, \\quad
        z_t = z_{t-1} + \\tilde g_t - \\sigma_t w_{t-1}

    .. math::
        w_t = \\frac{\\operatorname{clip}(z_t, -\\lambda_1, \\lambda_1) - z_t}
        {(n_t^{-p} + \\beta) / \\eta + 2 \\lambda_2}

    i.e. :math:`w_t = 0` while :math:`|z_t| \\le \\lambda_1` (L1 gives exact zeros),
    :math:`\\lambda_2` is the paper's online L2 and :math:`\\lambda_s` the shrinkage L2 (an
    L2 penalty in the loss). dlopt keeps :math:`y = \\eta z` in place of :math:`z`, and of
    it only :math:`c = \\operatorname{clip}(y, \\pm\\eta\\lambda_1)` (the state
    ``clipped_linear``), since :math:`y_{t-1} = c_{t-1} - q_{t-1} w_{t-1}` with
    :math:`q = n^{-p} + \\beta + 2 \\eta \\lambda_2`; the update is
    :math:`u_t = (c_t - h_t) / q_t` with :math:`h_t = c_{t-1} + \\eta \\tilde g_t` and
    :math:`c_t = \\operatorname{clip}(h_t - q_t w_{t-1}, \\pm\\eta\\lambda_1)`. With no L1
    this is :math:`w \\leftarrow w - \\eta \\tilde g_t / q_t`, AdaGrad-like.

    Deliberate differences from Keras (the rule above, which it equals for a constant
    learning rate and parameters that start at 0, FTRL's usual start):

    - the first step starts from the current parameters (:math:`z_0` consistent with
      :math:`w_0`); Keras starts :math:`z_0 = 0`, which pulls nonzero initial weights to
      about :math:`(1 - \\sqrt{n_0 / n_1}) w_0` on the first step (0.05 w_0 for g = 0.1);
    - a schedule weights each step's gradient by its :math:`\\eta_t`
      (:math:`y_t = y_{t-1} + \\eta_t \\tilde g_t - (n_t^{-p} - n_{t-1}^{-p}) w_{t-1}`,
      :math:`w_t = (\\operatorname{clip}(y_t, \\pm\\eta_t\\lambda_1) - y_t) / q_t` with
      :math:`q_t` at :math:`\\eta_t`); Keras divides the whole accumulated :math:`z` by
      the current :math:`\\eta_t`, so a decaying schedule shrinks the weights towards 0;
    - ``learning_rate=0`` is allowed (no step); Keras divides by it.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        learning_rate_power: :math:`p` <= 0; -0.5 is AdaGrad's :math:`1 / \\sqrt{n}`
            per-coordinate rate, 0 a fixed rate.
        initial_accumulator_value: :math:`n_0` >= 0.
        l1_regularization_strength: :math:`\\lambda_1` >= 0.
        l2_regularization_strength: :math:`\\lambda_2` >= 0.
        l2_shrinkage_regularization_strength: :math:`\\lambda_s` >= 0.
        beta: :math:`\\beta` >= 0, the paper's smoothing of the per-coordinate rate.
        mu_dtype: storage dtype of ``clipped_linear``; dlopt only.
        nu_dtype: storage dtype of ``accumulator``; dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformationExtraArgs` with state `FtrlState`; ``update`` needs
        ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.ftrl(0.1, l1_regularization_strength=0.01)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        McMahan et al., 2013, "Ad Click Prediction: a View from the Trenches", KDD
        (Algorithm 1); Keras 3, keras/src/optimizers/ftrl.py (``Ftrl.update_step``).
    """
    validation.check_learning_rate(learning_rate)
    validation.check_in_range(
        "learning_rate_power", learning_rate_power, -math.inf, 0.0, high_closed=True
    )
    validation.check_non_negative("initial_accumulator_value", initial_accumulator_value)
    validation.check_non_negative("l1_regularization_strength", l1_regularization_strength)
    validation.check_non_negative("l2_regularization_strength", l2_regularization_strength)
    validation.check_non_negative(
        "l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength
    )
    validation.check_non_negative("beta", beta)

    def rate(count):
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        return jnp.asarray(lr).astype(jnp.float32)

    def step(state, count, params):
        lr = rate(state.count)
        lr_prev = rate(jnp.maximum(state.count - 1, 0)) if callable(learning_rate) else lr
        return {"rates": (state.count == 0, lr, lr_prev)}

    leaf_fn = functools.partial(
        _ftrl_leaf, power=learning_rate_power, l1=l1_regularization_strength,
        l2=l2_regularization_strength, shrink=l2_shrinkage_regularization_strength, beta=beta,
    )  # fmt: skip
    tx = rule.moment_rule(
        FtrlState,
        leaf_fn,
        moments={
            "accumulator": rule.Moment(nu_dtype, rule.filled(initial_accumulator_value)),
            "clipped_linear": rule.Moment(mu_dtype, tree_lib.zeros_like),
        },
        rounding=state_rounding,
        needs_params="ftrl",
        inputs=lambda updates, state, params: (params,),
        step=step,
    )
    return with_extra_args_support(tx)
