"""Sign methods: signSGD (the sign of the gradient) and Signum (the sign of its momentum)."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.transforms.ema import ema
from dlopt.transforms.scaling import scale_by_learning_rate


def scale_by_sign() -> GradientTransformation:
    """Replaces each update element by its sign: :math:`u \\leftarrow \\operatorname{sign}(u)`.

    ``sign(0) = 0``; a complex element becomes :math:`u / |u|` (``jnp.sign``'s convention).
    Updates come back in each parameter's dtype.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.scale_by_sign()
        >>> tx.update({"w": jnp.array([-3.0, 0.0, 0.5])}, tx.init(None))[0]["w"]
        Array([-1.,  0.,  1.], dtype=float32)
    """

    def init_fn(params):
        tree_lib.check_float_params(params)
        return EmptyState()

    def update_fn(updates, state, params=None):
        dtypes = numerics.out_dtypes(updates, params)
        return jax.tree.map(lambda u, d: jnp.sign(u).astype(d), updates, dtypes), state

    return GradientTransformation(init_fn, update_fn)


def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformationExtraArgs:
    """signSGD: every coordinate moves by the learning rate, against its gradient's sign.

    .. math:: w \\leftarrow w - \\eta_t \\operatorname{sign}(g_t)

    One bit per coordinate is all a worker needs to send (gradient compression); the step is
    the steepest descent for the :math:`\\ell_\\infty` norm. Without momentum or a decaying
    :math:`\\eta_t` it oscillates at distance about :math:`\\eta` around a minimum.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.

    Returns:
        ``chain(scale_by_sign(), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.sign_sgd(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Bernstein, Wang, Azizzadenesheli and Anandkumar, 2018, "signSGD: Compressed
        Optimisation for Non-Convex Problems", ICML.
    """
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(
    learning_rate: ScalarOrSchedule,
    beta: chex.Numeric = 0.9,
    accumulator_dtype: Any | None = None,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Signum: signSGD on the momentum, the sign of a moving average of the gradients.

    .. math::
        m_t = \\beta m_{t-1} + (1 - \\beta) g_t, \\qquad
        w \\leftarrow w - \\eta_t \\operatorname{sign}(m_t)

    (no bias correction: it would not change the sign). Averaging first filters the
    gradient noise the sign would otherwise amplify.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        beta: :math:`\\beta` in [0, 1); 0 is `sign_sgd`.
        accumulator_dtype: dtype of :math:`m` (default: each parameter's dtype).
        mu_dtype: the same as ``accumulator_dtype`` under dlopt's uniform name (dlopt only;
            pass one of the two).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower dtype
            (dlopt only).

    Returns:
        ``chain(ema(beta, debias=False), scale_by_sign(),
        scale_by_learning_rate(learning_rate))``; the first state is optax's
        ``EmaState(count, ema)``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.signum(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Bernstein, Wang, Azizzadenesheli and Anandkumar, 2018, "signSGD: Compressed
        Optimisation for Non-Convex Problems", ICML.
    """
    validation.check_in_range("beta", beta, 0.0, 1.0)
    dtype = numerics.moment_dtype("accumulator_dtype", accumulator_dtype, mu_dtype)
    return chain(
        ema(beta, debias=False, accumulator_dtype=dtype, state_rounding=state_rounding),
        scale_by_sign(),
        scale_by_learning_rate(learning_rate),
    )
