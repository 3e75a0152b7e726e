"""Optimistic methods for games (min-max problems): optimistic gradient descent and Adam."""

from __future__ import annotations

import warnings
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
from dlopt.core.combine import chain
from dlopt.optimizers.adam import scale_by_adam
from dlopt.transforms.scaling import scale_by_learning_rate


def _optimistic_leaf(g, prev, leaf, out_dtype, *, writer, alpha, beta, is_initial_step):
    f = numerics.compute_dtype(g.dtype, prev.dtype)
    g = g.astype(f)
    # at the first step there is no previous gradient: use the current one (optax #1082)
    previous = jnp.where(is_initial_step, g, prev.astype(f))
    update = tree_lib.scalar_like(alpha + beta, g) * g - tree_lib.scalar_like(beta, g) * previous
    return update.astype(out_dtype), writer.put(g, prev, leaf, 1)


class ScaleByOptimisticGradientState(NamedTuple):
    is_initial_step: chex.Array  # bool: no previous gradient yet
    previous_gradient: chex.ArrayTree  # g_{t-1} (in mu_dtype)
    count: chex.Array | None = None  # int32 step (dlopt only): schedules, rounding seeds


def scale_by_optimistic_gradient(
    alpha: ScalarOrSchedule = 1.0,
    beta: ScalarOrSchedule = 1.0,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Generalized optimistic gradients: the current gradient plus a negative momentum.

    .. math:: u_t = (\\alpha_t + \\beta_t)\\, g_t - \\beta_t\\, g_{t-1}, \\qquad g_0 := g_1

    :math:`\\alpha = \\beta = 1` is optimistic gradient descent :math:`2 g_t - g_{t-1}`, a
    one-gradient approximation of the extra-gradient method.

    Args:
        alpha: :math:`\\alpha` (finite), or a schedule ``step -> alpha`` (dlopt only: optax
            takes numbers).
        beta: :math:`\\beta` (finite), or a schedule; the weight of the negative momentum.
        mu_dtype: dtype of the stored previous gradient (default: each parameter's); dlopt
            only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``mu_dtype`` (dlopt only).

    Returns:
        A `GradientTransformation` with state `ScaleByOptimisticGradientState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_optimistic_gradient(),
        ...                  dlopt.scale_by_learning_rate(1e-2))
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not callable(value):
            validation.check_finite(name, value)

    def step(state, count, params):  # schedules read at the steps taken so far
        taken = jnp.zeros([], jnp.int32) if state.count is None else state.count
        return {
            "alpha": alpha(taken) if callable(alpha) else alpha,
            "beta": beta(taken) if callable(beta) else beta,
            "is_initial_step": state.is_initial_step,
        }

    return rule.moment_rule(
        ScaleByOptimisticGradientState,
        _optimistic_leaf,
        moments={"previous_gradient": mu_dtype},
        rounding=state_rounding,
        step=step,
        extra_init=lambda params: {"is_initial_step": jnp.array(True)},
        extra_update=lambda state, *_: {"is_initial_step": jnp.zeros_like(state.is_initial_step)},
    )


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: ScalarOrSchedule = 1.0,
    beta: ScalarOrSchedule = 1.0,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Optimistic gradient descent (OGD): last-iterate convergence in min-max games.

    .. math:: w_{t+1} = w_t - \\eta_t \\left((\\alpha_t + \\beta_t) g_t - \\beta_t
        g_{t-1}\\right)

    On a bilinear game :math:`\\min_x \\max_y xy` simultaneous gradient descent-ascent
    spirals outwards; the correction :math:`-\\beta (g_t - g_{t-1})` makes it converge.
    (For a game, pass the ascent player's gradient negated.)

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        alpha, beta: as in `scale_by_optimistic_gradient`.
        mu_dtype, state_rounding: as in `scale_by_optimistic_gradient` (dlopt only).

    Returns:
        ``chain(scale_by_optimistic_gradient(alpha, beta),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.optimistic_gradient_descent(1e-2)
        >>> state = tx.init({"x": jnp.zeros(2)})

    References:
        Mokhtari, Ozdaglar and Pattathil, 2020, "A Unified Analysis of Extra-gradient and
        Optimistic Gradient Methods for Saddle Point Problems: Proximal Point Approach",
        AISTATS.
    """
    return chain(
        scale_by_optimistic_gradient(
            alpha=alpha, beta=beta, mu_dtype=mu_dtype, state_rounding=state_rounding
        ),
        scale_by_learning_rate(learning_rate),
    )


def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: chex.Numeric = 1.0,
    beta: chex.Numeric = 1.0,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-08,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Optimistic Adam: optimistic gradient steps on Adam's normalized direction.

    .. math::
        r_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon}, \\qquad
        w_{t+1} = w_t - \\eta_t \\left((\\alpha + \\beta) r_t - \\beta r_{t-1}\\right)

    with :math:`\\hat m_t, \\hat v_t` Adam's bias-corrected moments (Nesterov's
    :math:`\\hat m_t` by default, as in optax). Built for GANs and other saddle-point
    problems, where Adam cycles.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        alpha, beta: the optimism weights, as in `scale_by_optimistic_gradient`.
        b1, b2, eps, eps_root, nesterov: as in `scale_by_adam`.
        mu_dtype: dtype of Adam's first moment and of the stored :math:`r_{t-1}`.
        nu_dtype, state_rounding: as in `scale_by_adam` (dlopt only).

    Returns:
        ``chain(scale_by_adam(...), scale_by_optimistic_gradient(alpha, beta),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.optimistic_adam_v2(1e-3)
        >>> state = tx.init({"x": jnp.zeros(2)})

    References:
        Daskalakis, Ilyas, Syrgkanis and Zeng, 2018, "Training GANs with Optimism", ICLR.
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        scale_by_optimistic_gradient(
            alpha=alpha, beta=beta, mu_dtype=mu_dtype, state_rounding=state_rounding
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip


def optimistic_adam(
    learning_rate: chex.Numeric,
    optimism: chex.Numeric | None = None,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-08,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformationExtraArgs:
    """optax's deprecated optimistic Adam: the learning rate is the optimism weight alpha.

    .. math:: w_{t+1} = w_t - \\left((\\eta + o)\\, r_t - o\\, r_{t-1}\\right)

    with :math:`r_t` Adam's direction (see `optimistic_adam_v2`) and :math:`o` =
    ``optimism`` (default :math:`\\eta`). Use `optimistic_adam_v2`, which takes schedules and
    separates the step size from the optimism; this one warns ``DeprecationWarning`` as
    optax's does.

    Args:
        learning_rate: :math:`\\eta` >= 0, a number (a schedule raises ``ValueError``).
        optimism: :math:`o` (default ``learning_rate``).
        b1, b2, eps, eps_root, mu_dtype, nesterov: as in `scale_by_adam`.

    Returns:
        ``chain(scale_by_adam(...), scale_by_optimistic_gradient(alpha=learning_rate,
        beta=optimism), scale_by_learning_rate(1.0))``.

    Example:
        >>> import warnings, jax.numpy as jnp, dlopt
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     tx = dlopt.optimistic_adam(1e-3)
        >>> state = tx.init({"x": jnp.zeros(2)})

    References:
        Daskalakis, Ilyas, Syrgkanis and Zeng, 2018, "Training GANs with Optimism", ICLR.
    """
    warnings.warn(
        "`optimistic_adam` is deprecated (as in optax), please use `optimistic_adam_v2` instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    if callable(learning_rate):
        raise ValueError(
            "optimistic_adam takes a number as learning_rate, not a schedule; use "
            "dlopt.optimistic_adam_v2 for schedules."
        )
    validation.check_non_negative("learning_rate", learning_rate)
    if optimism is None:
        optimism = learning_rate
    validation.check_finite("optimism", optimism)
    return chain(
        scale_by_adam(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
        ),
        scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
        scale_by_learning_rate(1.0),
    )
