"""Stateless rescalings of the update: gradient centralization and global-norm normalization."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import EmptyState, GradientTransformation, init_empty_state
from dlopt.core.per_leaf import per_leaf


def _centralize_leaf(u, out_dtype):
    if jnp.ndim(u) <= 1:
        return u.astype(out_dtype)
    u_f = numerics.widen(u)
    return (u_f - jnp.mean(u_f, axis=tuple(range(1, u.ndim)), keepdims=True)).astype(out_dtype)


@per_leaf
def centralize() -> GradientTransformation:
    """Gradient centralization: removes the mean over all but the leading axis.

    .. math:: u_{i, \\ldots} \\leftarrow u_{i, \\ldots} - \\operatorname{mean}_{\\ldots}
        u_{i, \\ldots}

    for each leaf with two or more dimensions; vectors and scalars pass unchanged. The mean
    is taken in float32 (or wider); updates come back in each parameter's dtype.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.centralize()
        >>> tx.update(jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]]), tx.init(None))[0]
        Array([[-1.,  0.,  1.],
               [-2., -1.,  3.]], dtype=float32)

    References:
        Yong, Huang, Hua and Zhang, 2020, "Gradient Centralization: A New Optimization
        Technique for Deep Neural Networks", ECCV.
    """

    def update_fn(updates, state, params=None):
        return jax.tree.map(_centralize_leaf, updates, numerics.out_dtypes(updates, params)), state

    return GradientTransformation(init_empty_state, update_fn)


def _divide(updates, params, divisor):
    """``u / divisor`` leaf by leaf, 0 where ``divisor`` is 0 (a zero update stays zero)."""
    nonzero = divisor != 0
    safe = jnp.where(nonzero, divisor, jnp.ones_like(divisor))

    def leaf(u, out_dtype):
        u_f = u.astype(numerics.compute_dtype(u.dtype, safe.dtype))
        scaled = u_f / tree_lib.scalar_like(safe, u_f)
        return jnp.where(nonzero, scaled, jnp.zeros_like(scaled)).astype(out_dtype)

    return jax.tree.map(leaf, updates, numerics.out_dtypes(updates, params))


def normalize_by_update_norm(
    scale_factor: chex.Numeric = 1.0, eps: chex.Numeric = 1e-6
) -> GradientTransformation:
    """Scales the updates to global norm about ``scale_factor``.

    .. math:: u \\leftarrow \\frac{s\\, u}{\\|u\\|_2 + \\epsilon}

    with :math:`\\|u\\|_2` over the whole tree, accumulated in float32. Use
    ``scale_factor=-lr`` for normalized gradient descent.

    Deliberate difference from optax: with ``eps=0`` an all-zero update stays zero (optax
    gives NaN).

    Args:
        scale_factor: :math:`s`, any finite number.
        eps: :math:`\\epsilon` >= 0.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.normalize_by_update_norm(scale_factor=-0.1)
        >>> updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(None))
        >>> [round(float(u), 4) for u in updates]
        [-0.06, -0.08]
    """
    validation.check_finite("scale_factor", scale_factor)
    validation.check_non_negative("eps", eps)

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        norm = numerics.global_norm(updates)
        divisor = (norm + tree_lib.scalar_like(eps, norm)) / tree_lib.scalar_like(
            scale_factor, norm
        )
        return _divide(updates, params, jnp.where(scale_factor == 0, jnp.inf, divisor)), state

    return GradientTransformation(init_empty_state, update_fn)


NormalizeState = EmptyState  # optax.contrib's name for `normalize`'s (empty) state


def normalize() -> GradientTransformation:
    """Divides the updates by their global norm: :math:`u \\leftarrow u / \\|u\\|_2`.

    The usual first step of `sam`'s adversarial optimizer (optax.contrib's ``normalize``).

    Deliberate difference from optax: an all-zero update stays zero (optax gives NaN).

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> adv_optimizer = dlopt.chain(dlopt.normalize(), dlopt.sgd(0.05))
        >>> g = jnp.array([3.0, 4.0])
        >>> adv_optimizer.update(g, adv_optimizer.init(g))[0]  # a step of length 0.05
        Array([-0.03, -0.04], dtype=float32)
    """

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        return _divide(updates, params, numerics.global_norm(updates)), state

    return GradientTransformation(init_empty_state, update_fn)
