"""Polyak's step size: the gap to the optimal value over the squared gradient norm."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    EmptyState,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.transforms.scaling import scale_by_learning_rate

VARIANTS = ("sps", "sps+")
_TINY = float(jnp.finfo(float).eps)  # optax's guard on the squared norm (float64's eps)


def scale_by_polyak(
    f_min: chex.Numeric = 0.0,
    max_learning_rate: chex.Numeric = 1.0,
    eps: chex.Numeric = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    """Scales the gradient by Polyak's step size, from the loss value passed as ``value=``.

    .. math::
        \\gamma_t = \\min\\left(\\frac{f(w_t) - f^\\star}{\\|g_t\\|^2 + \\epsilon},
        \\gamma_{max}\\right), \\qquad u_t = \\gamma_t g_t

    (:math:`\\gamma_t = 0` when :math:`\\|g_t\\|^2 + \\epsilon` is below float64's machine
    epsilon). ``variant="sps+"`` uses :math:`\\max(f(w_t) - f^\\star, 0)`. The norm is the
    global one, over all leaves. On a function with minimum value :math:`f^\\star` the step
    lands where the linearization reaches :math:`f^\\star`.

    Args:
        f_min: :math:`f^\\star` (finite), a lower bound on the loss (0 for models that
            interpolate the data).
        max_learning_rate: :math:`\\gamma_{max}` >= 0.
        eps: :math:`\\epsilon` >= 0.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        A stateless `GradientTransformationExtraArgs`: ``update(updates, state, params=None,
        *, value)`` with ``value`` the loss at ``params``; inside `dlopt.chain`, pass
        ``value=`` to the chain's ``update``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_polyak(), dlopt.scale(-1.0))
        >>> params = jnp.array([1.0, 2.0])
        >>> value, grad = jax.value_and_grad(lambda w: jnp.sum(w**2))(params)
        >>> updates, _ = tx.update(grad, tx.init(params), params, value=value)
        >>> params + updates
        Array([0.5, 1. ], dtype=float32)
    """
    validation.check_finite("f_min", f_min)
    validation.check_non_negative("max_learning_rate", max_learning_rate)
    validation.check_non_negative("eps", eps)
    validation.check_choice("variant", variant, VARIANTS)

    def init_fn(params):
        tree_lib.check_float_params(params)
        return EmptyState()

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del extra_args
        grad_sq_norm = numerics.squared_norm(updates)
        gap = jnp.asarray(value).astype(grad_sq_norm.dtype) - tree_lib.scalar_like(
            f_min, grad_sq_norm
        )
        if variant == "sps+":
            gap = jnp.maximum(gap, jnp.zeros_like(gap))
        denominator = grad_sq_norm + tree_lib.scalar_like(eps, grad_sq_norm)
        step = jnp.where(
            denominator <= _TINY,
            jnp.zeros_like(gap),
            jnp.minimum(gap / denominator, tree_lib.scalar_like(max_learning_rate, gap)),
        )
        dtypes = numerics.out_dtypes(updates, params)

        def scale_leaf(u, d):
            f = numerics.compute_dtype(u.dtype, step.dtype)
            return (u.astype(f) * step.astype(f)).astype(d)

        return jax.tree.map(scale_leaf, updates, dtypes), state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def polyak_sgd(
    max_learning_rate: chex.Numeric = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: chex.Numeric = 0.0,
    eps: chex.Numeric = 0.0,
    variant: str = "sps",
) -> GradientTransformationExtraArgs:
    """SGD with the stochastic Polyak step size (SPS).

    .. math::
        w \\leftarrow w - s_t \\min\\left(\\frac{f(w) - f^\\star}{\\|\\nabla f(w)\\|^2 +
        \\epsilon}, \\gamma_{max}\\right) \\nabla f(w)

    with :math:`s_t` = ``scaling`` (a number or a schedule). Needs the loss value:
    ``tx.update(grads, state, params, value=loss)``. ``variant="sps+"`` clips the gap
    :math:`f(w) - f^\\star` at 0 (Garrigos et al., 2023). Set ``f_min`` to a lower bound of
    the loss; a wrong one can stall or diverge.

    Deliberate difference from optax: :math:`s_t` multiplies the step as the formula says;
    optax applies it before measuring the gradient norm, so its step is
    :math:`\\min(\\text{gap} / (s_t^2 \\|g\\|^2 + \\epsilon), \\gamma_{max})\\, s_t\\, g` (the
    same for the default ``scaling=1``).

    Args:
        max_learning_rate: :math:`\\gamma_{max}` >= 0.
        scaling: :math:`s_t` >= 0, or a schedule.
        f_min: :math:`f^\\star`, finite.
        eps: :math:`\\epsilon` >= 0.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        ``chain(scale_by_polyak(f_min, max_learning_rate, eps, variant),
        scale_by_learning_rate(scaling))``, a `GradientTransformationExtraArgs`.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.polyak_sgd()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> value, grad = jax.value_and_grad(lambda w: jnp.sum(w**2))(params)
        >>> updates, state = tx.update(grad, tx.init(params), params, value=value)
        >>> dlopt.apply_updates(params, updates)
        Array([0.5, 1. , 1.5], dtype=float32)

    References:
        Loizou, Vaswani, Laradji and Lacoste-Julien, 2021, "Stochastic Polyak Step-size for
        SGD: An Adaptive Learning Rate for Fast Convergence", AISTATS.
    """
    validation.check_learning_rate(scaling, "scaling")
    return chain(
        scale_by_polyak(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps, variant=variant),
        scale_by_learning_rate(scaling),
    )
