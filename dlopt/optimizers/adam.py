"""Adam and its family: Adam, AdamW (decoupled weight decay), Nadam, NadamW."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt import tree as tree_lib
from dlopt import validation
from dlopt.base import GradientTransformation, GradientTransformationExtraArgs, ScalarOrSchedule
from dlopt.combine import Mask, chain
from dlopt.optimizers.scaling import scale_by_learning_rate
from dlopt.regularizers import add_decayed_weights


def canonical_dtype(dtype: Any | None) -> Any | None:
    """``dtype`` as the dtype JAX will really use (float64 -> float32 without x64), or None."""
    return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def wider_float(a: Any, b: Any) -> Any:
    """The float dtype with more bits (``b`` on a tie); no implicit promotion involved."""
    return a if jnp.finfo(a).bits > jnp.finfo(b).bits else b


def check_betas(b1: chex.Numeric, b2: chex.Numeric) -> None:
    validation.check_in_range("b1", b1, 0.0, 1.0)
    validation.check_in_range("b2", b2, 0.0, 1.0)


def _unbias(x, decay, count):
    """``x / (1 - decay**count)``: the correction is computed in float32, then cast."""
    return x / tree_lib.bias_correction(decay, count).astype(x.dtype)


def _adam_leaf(g, mu, nu, count, b1, b2, eps, eps_root, nesterov):
    wide = wider_float(mu.dtype, g.dtype)
    new_mu = tree_lib.ema(mu.astype(wide), g, b1)  # full precision until stored
    new_nu = tree_lib.ema(nu, jnp.square(g), b2)
    if nesterov:
        b1_ = tree_lib.scalar_like(b1, new_mu)
        mu_hat = b1_ * _unbias(new_mu, b1, tree_lib.safe_increment(count)) + tree_lib.scalar_like(
            1 - b1, new_mu
        ) * _unbias(g.astype(wide), b1, count)
    else:
        mu_hat = _unbias(new_mu, b1, count)
    nu_hat = _unbias(new_nu, b2, count)
    denominator = jnp.sqrt(nu_hat + tree_lib.scalar_like(eps_root, nu_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    update = mu_hat / denominator.astype(mu_hat.dtype)
    return update.astype(g.dtype), new_mu.astype(mu.dtype), new_nu


class ScaleByAdamState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the first moment (in mu_dtype)
    nu: chex.ArrayTree  # v, the second moment


def scale_by_adam(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Scales by Adam's bias-corrected first moment over the root of its second moment.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        \\hat m_t = \\frac{m_t}{1 - \\beta_1^t}, \\quad \\hat v_t = \\frac{v_t}{1 - \\beta_2^t},
        \\quad u_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon}

    With ``nesterov=True`` (Nadam, Dozat 2016) the first moment looks one step ahead:
    :math:`\\hat m_t = \\beta_1 \\frac{m_t}{1 - \\beta_1^{t+1}} + (1 - \\beta_1)
    \\frac{g_t}{1 - \\beta_1^t}`.

    The bias corrections are computed in float32 and then cast. The first moment is updated
    at the gradients' precision and stored in ``mu_dtype``; updates come back in the
    gradients' dtype (optax returns the wider of the two when ``mu_dtype`` is wider).

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0, added outside the root.
        eps_root: :math:`\\epsilon_{root}` >= 0, added inside the root (keeps the gradient of
            the update finite when differentiating through it, e.g. in meta-learning).
        mu_dtype: dtype of :math:`m` (e.g. ``jnp.bfloat16`` to save memory); default: each
            parameter's dtype.
        nesterov: use Nesterov momentum (Nadam).

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adam(), dlopt.scale_by_learning_rate(1e-3))
    """
    check_betas(b1, b2)
    validation.check_non_negative("eps", eps)
    validation.check_non_negative("eps_root", eps_root)
    mu_dtype = canonical_dtype(mu_dtype)

    def init_fn(params):
        return ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=tree_lib.moments_like(params, mu_dtype),
            nu=tree_lib.moments_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        count = tree_lib.safe_increment(state.count)
        updates, mu, nu = tree_lib.map_unzip(
            lambda g, m, v: _adam_leaf(g, m, v, count, b1, b2, eps, eps_root, nesterov),
            updates,
            state.mu,
            state.nu,
        )
        return updates, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


def adam(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """Adam: momentum on the gradient, step sizes from its running second moment.

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad
        \\hat m = \\frac{m}{1 - \\beta_1^t}, \\quad \\hat v = \\frac{v}{1 - \\beta_2^t}, \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon}

    with :math:`t` = 1, 2, ... the step. ``nesterov=True`` is `nadam`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16``).
        nesterov: use Nesterov momentum (Nadam).

    Returns:
        ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adam(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization", ICLR.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformationExtraArgs:
    """AdamW: Adam with weight decay decoupled from the adaptive scaling.

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} +
        \\epsilon} + \\lambda w\\right)

    with :math:`\\hat m, \\hat v` as in `adam`. The decay :math:`\\lambda w` skips the
    division by :math:`\\sqrt{\\hat v}` (an L2 penalty in the loss would not), and is scaled
    by :math:`\\eta` as in optax and torch (the paper scales it by a schedule multiplier only).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: dtype of the first moment.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves, e.g.
            to skip biases and normalization scales.
        nesterov: use Nesterov momentum (`nadamw`).

    Returns:
        ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adamw(1e-3, weight_decay=1e-2)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Loshchilov and Hutter, 2019, "Decoupled Weight Decay Regularization", ICLR.
    """
    return chain(
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformationExtraArgs:
    """Nadam: Adam with Nesterov momentum (`adam` with ``nesterov=True``).

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad
        \\hat m = \\frac{\\beta_1 m}{1 - \\beta_1^{t+1}} + \\frac{(1 - \\beta_1) g}{1 -
        \\beta_1^t}, \\quad \\hat v = \\frac{v}{1 - \\beta_2^t}, \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon}

    As in optax (and torch without momentum decay), the paper's momentum schedule
    :math:`\\mu_t` is the constant :math:`\\beta_1` and :math:`\\hat v` is not multiplied
    by :math:`\\beta_2`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: dtype of the first moment.
        nesterov: kept for optax's signature; False gives plain `adam`.

    Returns:
        ``adam(..., nesterov=nesterov)``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.nadam(1e-3)

    References:
        Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformationExtraArgs:
    """NadamW: Nadam with decoupled weight decay (`adamw` with ``nesterov=True``).

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} +
        \\epsilon} + \\lambda w\\right)

    with :math:`\\hat m, \\hat v` as in `nadam`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: dtype of the first moment.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.
        nesterov: kept for optax's signature; False gives plain `adamw`.

    Returns:
        ``adamw(..., nesterov=nesterov)``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.nadamw(1e-3, weight_decay=1e-2)

    References:
        Dozat, 2016; Loshchilov and Hutter, 2019.
    """
    return adamw(
        learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov
    )
