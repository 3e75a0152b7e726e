"""Adadelta: step sizes from the ratio of moving RMS of past steps and of gradients."""

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


def _adadelta_leaf(g, e_g, e_x, leaf, out_dtype, *, rho, eps, writer):
    f = numerics.compute_dtype(g.dtype, e_g.dtype, e_x.dtype)
    g = g.astype(f)
    e_g = writer.put(numerics.ema(e_g.astype(f), numerics.abs_sq(g), rho), e_g, leaf, 1)
    eps_ = tree_lib.scalar_like(eps, g)
    step = jnp.sqrt(e_x.astype(f) + eps_) / jnp.sqrt(e_g.astype(f) + eps_) * g
    e_x = writer.put(numerics.ema(e_x.astype(f), numerics.abs_sq(step), rho), e_x, leaf, 2)
    return step.astype(out_dtype), e_g, e_x


class ScaleByAdaDeltaState(NamedTuple):
    e_g: chex.ArrayTree  # E[g^2], the moving average of squared gradients
    e_x: chex.ArrayTree  # E[dx^2], the moving average of squared steps
    count: chex.Array | None = None  # int32 step (dlopt only): seeds stochastic rounding


def scale_by_adadelta(
    rho: chex.Numeric = 0.9,
    eps: chex.Numeric = 1e-6,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by the ratio of the moving RMS of past steps to that of gradients (Adadelta).

    .. math::
        E[g^2]_t = \\rho E[g^2]_{t-1} + (1 - \\rho) g_t^2, \\quad
        \\Delta x_t = \\frac{\\sqrt{E[\\Delta x^2]_{t-1} + \\epsilon}}
        {\\sqrt{E[g^2]_t + \\epsilon}}\\, g_t, \\quad
        E[\\Delta x^2]_t = \\rho E[\\Delta x^2]_{t-1} + (1 - \\rho) \\Delta x_t^2

    The update is :math:`\\Delta x_t` (a later `scale_by_learning_rate` flips its sign).

    Args:
        rho: :math:`\\rho` in [0, 1).
        eps: :math:`\\epsilon` > 0; it also sets the size of the first steps,
            :math:`\\approx \\sqrt{\\epsilon / (1 - \\rho)}`, so it cannot be 0.
        nu_dtype: storage dtype of both running averages (default: each parameter's);
            dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``nu_dtype``; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByAdaDeltaState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adadelta(), dlopt.scale_by_learning_rate(1.0))
    """
    validation.check_in_range("rho", rho, 0.0, 1.0)
    validation.check_positive("eps", eps)
    return rule.moment_rule(
        ScaleByAdaDeltaState,
        functools.partial(_adadelta_leaf, rho=rho, eps=eps),
        moments={"e_g": nu_dtype, "e_x": nu_dtype},
        rounding=state_rounding,
    )


def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: chex.Numeric = 0.9,
    eps: chex.Numeric = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask | None = None,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Adadelta (Zeiler): AdaGrad's per-coordinate steps without its ever-shrinking rate.

    The update, with :math:`g` the gradient (plus :math:`\\lambda w` when ``weight_decay``
    :math:`\\lambda > 0`, an L2 penalty coupled to the scaling, as in optax and torch):

    .. math::
        E[g^2] \\leftarrow \\rho E[g^2] + (1 - \\rho) g^2, \\quad
        \\Delta x = \\frac{\\sqrt{E[\\Delta x^2] + \\epsilon}}{\\sqrt{E[g^2] + \\epsilon}}\\, g,
        \\quad E[\\Delta x^2] \\leftarrow \\rho E[\\Delta x^2] + (1 - \\rho) \\Delta x^2,
        \\quad w \\leftarrow w - \\eta \\Delta x

    The paper's method has no learning rate (:math:`\\eta = 1`); :math:`E[\\Delta x^2]`
    tracks the steps before :math:`\\eta` is applied, as in optax.

    Deliberate difference from optax: ``learning_rate=None`` means :math:`\\eta = 1`, a
    descent step as in the paper; optax's ``None`` skips the sign flip and so ascends.
    ``eps`` must be > 0.

    Args:
        learning_rate: :math:`\\eta` >= 0, a schedule ``step -> eta``, or None for 1.
        rho: :math:`\\rho` in [0, 1).
        eps: :math:`\\epsilon` > 0.
        weight_decay: :math:`\\lambda` >= 0 (or a schedule), added to the gradient.
        weight_decay_mask: pytree of bools (or ``params -> pytree``) choosing decayed leaves.
        nu_dtype, state_rounding: as in `scale_by_adadelta` (dlopt only).

    Returns:
        ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adadelta(rho=0.95)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701.
    """
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_adadelta(rho=rho, eps=eps, nu_dtype=nu_dtype, state_rounding=state_rounding),
        scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )
