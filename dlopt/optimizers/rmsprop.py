"""RMSProp: divide by a moving root-mean-square of the gradients (plain or centered)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.base import identity as identity_transform
from dlopt.core.combine import chain
from dlopt.optimizers.sgd import trace
from dlopt.transforms.scaling import scale_by_learning_rate


def _check(decay, eps, initial_scale) -> None:
    validation.check_in_range("decay", decay, 0.0, 1.0)
    validation.check_non_negative("eps", eps)
    validation.check_non_negative("initial_scale", initial_scale)


def _inverse_root(variance, eps, eps_in_sqrt):
    """``1 / sqrt(variance + eps)`` or ``1 / (sqrt(variance) + eps)``."""
    eps = tree_lib.scalar_like(eps, variance)
    if eps_in_sqrt:
        return jax.lax.rsqrt(variance + eps)
    return 1 / (jnp.sqrt(variance) + eps)


def _unbias(moment, decay, count, bias_correction):
    return numerics.unbias(moment, decay, count) if bias_correction else moment


def _rms_leaf(g, nu, leaf, out_dtype, *, decay, eps, eps_in_sqrt, bias_correction, writer):
    f = numerics.compute_dtype(g.dtype, nu.dtype)
    g = g.astype(f)
    nu = writer.put(numerics.ema(nu.astype(f), numerics.abs_sq(g), decay), nu, leaf, 2)
    h = _unbias(nu.astype(f), decay, writer.count, bias_correction)
    return (_inverse_root(h, eps, eps_in_sqrt) * g).astype(out_dtype), nu


class ScaleByRmsState(NamedTuple):
    count: chex.Array  # int32, saturating; used by bias_correction
    nu: chex.ArrayTree  # h, the moving average of g * g


def scale_by_rms(
    decay: chex.Numeric = 0.9,
    eps: chex.Numeric = 1e-8,
    initial_scale: chex.Numeric = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Divides by the root of a moving average of squared gradients (RMSProp's scaling).

    .. math::
        h_t = \\rho h_{t-1} + (1 - \\rho) g_t \\odot g_t, \\qquad
        u_t = g_t / \\sqrt{\\hat h_t + \\epsilon} \\ \\text{or}\\ g_t / (\\sqrt{\\hat h_t} +
        \\epsilon)

    where :math:`\\hat h_t = h_t / (1 - \\rho^t)` with ``bias_correction`` and :math:`h_t`
    otherwise, and :math:`h_0` = ``initial_scale``. Complex gradients use
    :math:`|g|^2` for :math:`g \\odot g`.

    Args:
        decay: :math:`\\rho` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        initial_scale: :math:`h_0` >= 0.
        eps_in_sqrt: add :math:`\\epsilon` inside the root (True) or outside it.
        bias_correction: divide :math:`h_t` by :math:`1 - \\rho^t` (Adam-style).
        nu_dtype: storage dtype of :math:`h` (default: each parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``nu_dtype`` (`dlopt.core.numerics.store`); dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByRmsState`. Unlike optax, the state
        always holds the step count (one int32), whatever ``bias_correction`` is.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_rms(0.99), dlopt.scale_by_learning_rate(1e-3))
    """
    _check(decay, eps, initial_scale)
    leaf_fn = functools.partial(
        _rms_leaf, decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt, bias_correction=bias_correction
    )
    nu = rule.Moment(nu_dtype, rule.filled(initial_scale))
    return rule.moment_rule(ScaleByRmsState, leaf_fn, moments={"nu": nu}, rounding=state_rounding)


def _stddev_leaf(g, mu, nu, leaf, out_dtype, *, decay, eps, eps_in_sqrt, bias_correction, writer):
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, decay), mu, leaf, 1)
    nu = writer.put(numerics.ema(nu.astype(f), numerics.abs_sq(g), decay), nu, leaf, 2)
    mu_hat = _unbias(mu.astype(f), decay, writer.count, bias_correction)
    nu_hat = _unbias(nu.astype(f), decay, writer.count, bias_correction)
    variance = nu_hat - numerics.abs_sq(mu_hat).astype(f)
    if not jnp.iscomplexobj(variance):
        variance = jnp.maximum(variance, jnp.zeros_like(variance))
    return (_inverse_root(variance, eps, eps_in_sqrt) * g).astype(out_dtype), mu, nu


class ScaleByRStdDevState(NamedTuple):
    count: chex.Array  # int32, saturating; used by bias_correction
    mu: chex.ArrayTree  # m, the moving average of g
    nu: chex.ArrayTree  # h, the moving average of g * g


def scale_by_stddev(
    decay: chex.Numeric = 0.9,
    eps: chex.Numeric = 1e-8,
    initial_scale: chex.Numeric = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Divides by a moving standard deviation of the gradients (centered RMSProp's scaling).

    .. math::
        m_t = \\rho m_{t-1} + (1 - \\rho) g_t, \\quad
        h_t = \\rho h_{t-1} + (1 - \\rho) g_t \\odot g_t, \\quad
        u_t = g_t / \\sqrt{\\hat h_t - \\hat m_t^2 + \\epsilon}

    (or :math:`g_t / (\\sqrt{\\hat h_t - \\hat m_t^2} + \\epsilon)` with ``eps_in_sqrt=False``);
    hats are the bias-corrected moments with ``bias_correction``. The variance estimate
    :math:`\\hat h - \\hat m^2` is clipped at 0, so rounding cannot make the root NaN (optax
    does not clip; the results agree wherever optax's are finite).

    Args:
        decay: :math:`\\rho` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        initial_scale: :math:`h_0` >= 0.
        eps_in_sqrt: add :math:`\\epsilon` inside the root (True) or outside it.
        bias_correction: divide both moments by :math:`1 - \\rho^t`.
        mu_dtype, nu_dtype: storage dtypes of :math:`m` and :math:`h` (default: each
            parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"``, as in `scale_by_rms`.

    Returns:
        A `GradientTransformation` with state `ScaleByRStdDevState` (always with the count).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_stddev(), dlopt.scale_by_learning_rate(1e-3))
    """
    _check(decay, eps, initial_scale)
    leaf_fn = functools.partial(
        _stddev_leaf, decay=decay, eps=eps, eps_in_sqrt=eps_in_sqrt,
        bias_correction=bias_correction,
    )  # fmt: skip
    nu = rule.Moment(nu_dtype, rule.filled(initial_scale))
    return rule.moment_rule(
        ScaleByRStdDevState, leaf_fn, moments={"mu": mu_dtype, "nu": nu}, rounding=state_rounding
    )


def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: chex.Numeric = 0.9,
    eps: chex.Numeric = 1e-8,
    initial_scale: chex.Numeric = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: chex.Numeric | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """RMSProp (Hinton): gradient steps normalised by a moving RMS of the gradients.

    The classic update:

    .. math::
        h \\leftarrow \\rho h + (1 - \\rho) g \\odot g, \\qquad
        w \\leftarrow w - \\eta\\, g / \\sqrt{h + \\epsilon}

    (:math:`g / (\\sqrt{h} + \\epsilon)` with ``eps_in_sqrt=False``). ``centered=True``
    divides by the moving standard deviation :math:`\\sqrt{h - m^2 + \\epsilon}` instead,
    with :math:`m \\leftarrow \\rho m + (1 - \\rho) g` (Graves, 2013). With ``momentum``
    :math:`a`, the scaled step is accumulated as in `sgd`:
    :math:`v \\leftarrow a v - \\eta\\, g / \\sqrt{h + \\epsilon},\\ w \\leftarrow w + v`
    (computed as optax does, the learning rate applied before the momentum; ``nesterov``
    uses the look-ahead form).

    Deliberate differences from optax: ``nesterov=True`` without ``momentum`` raises a
    ``ValueError`` (optax silently ignores it); see also `scale_by_stddev` (variance clipped
    at 0) and `scale_by_rms` (the state always holds the count).

    Args:
        learning_rate: step size :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        decay: :math:`\\rho` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        initial_scale: :math:`h_0` >= 0 (TensorFlow 1 used 1.0, torch and optax 0).
        eps_in_sqrt: add :math:`\\epsilon` inside the root (True) or outside it (torch).
        centered: normalise by the moving standard deviation instead of the RMS.
        momentum: :math:`a` in [0, 1), or None for no momentum.
        nesterov: Nesterov momentum (needs ``momentum``).
        bias_correction: divide the moments by :math:`1 - \\rho^t`.
        mu_dtype: storage dtype of the first-moment buffers (the centered mean :math:`m`
            and the momentum :math:`v`); dlopt only.
        nu_dtype: storage dtype of :math:`h`; dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        ``chain(scale_by_rms(...) or scale_by_stddev(...), scale_by_learning_rate(lr),
        trace(momentum, nesterov) or identity())``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.rmsprop(1e-3, centered=True, momentum=0.9)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Tieleman and Hinton, 2012, "Lecture 6.5 - rmsprop", COURSERA: Neural Networks for
        Machine Learning; Graves, 2013, "Generating Sequences With Recurrent Neural Networks".
    """
    if momentum is not None:
        validation.check_in_range("momentum", momentum, 0.0, 1.0)
    if nesterov and momentum is None:
        raise ValueError("nesterov=True needs a momentum, got momentum=None. Pass momentum=0.9.")
    validation.check_storage_dtype("mu_dtype", mu_dtype)  # checked even without momentum
    common = dict(
        decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
        bias_correction=bias_correction, nu_dtype=nu_dtype, state_rounding=state_rounding,
    )  # fmt: skip
    scaling = scale_by_stddev(**common, mu_dtype=mu_dtype) if centered else scale_by_rms(**common)
    return chain(
        scaling,
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov, mu_dtype, state_rounding=state_rounding)
        if momentum is not None
        else identity_transform(),
    )
