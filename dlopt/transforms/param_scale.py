"""Steps relative to the parameters' own scale: `scale_by_param_block_norm` (a leaf's norm)
and `scale_by_distance_over_gradients` (DoG, the distance travelled from the start)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import EmptyState, GradientTransformation
from dlopt.core.per_leaf import per_leaf


def safe_block_norm(x: chex.Array, min_norm: chex.Numeric) -> chex.Array:
    """``max(||x||, min_norm)`` (Frobenius) whose gradient is 0, not NaN, at ``x = 0``
    (shared with `dlopt.scale_by_trust_ratio`)."""
    norm = jnp.linalg.norm(x)
    floor = tree_lib.scalar_like(min_norm, norm)
    x = jnp.where(norm <= floor, jnp.ones_like(x), x)
    return jnp.where(norm <= floor, floor, jnp.linalg.norm(x))


@per_leaf
def scale_by_param_block_norm(min_scale: chex.Numeric = 1e-3) -> GradientTransformation:
    """Multiplies each leaf's update by the norm of its parameter (a block).

    .. math:: u \\leftarrow u \\cdot \\max(\\lVert w \\rVert_2, s_{min})

    The norm-based sibling of `dlopt.scale_by_param_block_rms` (a step relative to each
    parameter's size). Needs ``params``.

    Args:
        min_scale: :math:`s_{min}` >= 0, the floor on the scale (zero-initialised leaves move).

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.scale_by_param_block_norm()
        >>> params = jnp.array([3.0, 4.0])
        >>> tx.update(jnp.ones(2), tx.init(params), params)[0]
        Array([5., 5.], dtype=float32)
    """
    validation.check_non_negative("min_scale", min_scale)
    return param_block_scaling("scale_by_param_block_norm", lambda p: safe_block_norm(p, min_scale))


def param_block_scaling(
    name: str, block_scale: Callable[[chex.Array], chex.Array]
) -> GradientTransformation:
    """``u <- u * block_scale(w)`` leaf by leaf (in the wider of the two dtypes, returned in
    the parameter's): the stateless body of `scale_by_param_block_norm` and
    `dlopt.scale_by_param_block_rms`. ``name`` is the factory's, for the missing-params error.
    """

    def init_fn(params):
        tree_lib.check_float_params(params)
        return EmptyState()

    def scale_leaf(u, p, out_dtype):
        f = numerics.compute_dtype(u.dtype, p.dtype)
        return (u.astype(f) * block_scale(p.astype(f)).astype(f)).astype(out_dtype)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{name} needs params: call update(u, s, params).")
        dtypes = numerics.out_dtypes(updates, params)
        return jax.tree.map(scale_leaf, updates, params, dtypes), state

    return GradientTransformation(init_fn, update_fn)


class ScaleByDistanceOverGradientsState(NamedTuple):
    max_dist: chex.ArrayTree  # per leaf: max(r_eps, max_s ||x_s - x_0||), float32 scalar
    grad_sum_of_squares: chex.ArrayTree  # per leaf: sum_s ||g_s||^2, float32 scalar
    init_params: chex.ArrayTree  # x_0 in param_dtype


def _l2(x: chex.Array, y: chex.Array | float = 0.0) -> chex.Array:
    d = jnp.asarray(x).astype(jnp.float32) - jnp.asarray(y).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(numerics.abs_sq(d)))


@per_leaf
def scale_by_distance_over_gradients(
    reps_rel: chex.Numeric = 1e-6,
    eps: chex.Numeric = 1e-8,
    param_dtype: Any = jnp.float32,
    global_scale: chex.Numeric = 1.0,
) -> GradientTransformation:
    """Layer-wise DoG ("Distance over Gradients"), a parameter-free step size per leaf:

    .. math::
        \\bar r_t = \\max\\big(\\bar r_{t-1}, \\lVert x_t - x_0 \\rVert\\big), \\quad
        \\bar r_0 = r_\\epsilon (1 + \\lVert x_0 \\rVert), \\quad
        G_t = G_{t-1} + \\lVert g_t \\rVert^2, \\quad
        u_t = c \\, \\frac{\\bar r_t}{\\sqrt{G_t + \\epsilon}} \\, g_t

    with :math:`r_\\epsilon` = ``reps_rel`` and :math:`c` = ``global_scale``. Put a negative
    scale after it (``chain(scale_by_distance_over_gradients(), scale(-1.0))``). Needs
    ``params``. Deliberate difference from optax: the running sums are scalars per leaf
    (optax keeps a shape-(1,) array, which turns a scalar parameter's update into shape (1,)).

    Args:
        reps_rel: :math:`r_\\epsilon` > 0, the initial distance relative to ``1 + ||x_0||``.
        eps: :math:`\\epsilon` >= 0 in the denominator.
        param_dtype: dtype of the stored :math:`x_0`.
        global_scale: :math:`c`, a multiplier on every step.

    Returns:
        A `GradientTransformation` with state `ScaleByDistanceOverGradientsState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_distance_over_gradients(), dlopt.scale(-1.0))
        >>> params = jnp.array([1.0, 2.0])
        >>> u, _ = tx.update(jnp.ones(2), tx.init(params), params)

    References:
        Ivgi, Hinder, Carmon, `DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule <https://arxiv.org/abs/2302.12022>`_, ICML 2023.
    """
    validation.check_positive("reps_rel", reps_rel)
    validation.check_non_negative("eps", eps)
    validation.check_finite("global_scale", global_scale)

    def init_fn(params):
        tree_lib.check_float_params(params)
        return ScaleByDistanceOverGradientsState(
            jax.tree.map(lambda x: reps_rel * (1.0 + _l2(x)), params),
            jax.tree.map(lambda x: jnp.zeros([], jnp.float32), params),
            tree_lib.cast(params, param_dtype),
        )

    def step_leaf(g, d, g_sos):
        eta = global_scale * (d / jnp.sqrt(g_sos + eps))
        return (g.astype(jnp.float32) * eta).astype(g.dtype)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "scale_by_distance_over_gradients needs params: call update(u, s, params)."
            )
        max_dist = jax.tree.map(
            lambda d, x, x0: jnp.maximum(d, _l2(x, x0)), state.max_dist, params, state.init_params
        )
        g_sos = jax.tree.map(
            lambda s, g: s + jnp.sum(numerics.abs_sq(g)).astype(jnp.float32),
            state.grad_sum_of_squares,
            updates,
        )
        new_updates = jax.tree.map(step_leaf, updates, max_dist, g_sos)
        return new_updates, ScaleByDistanceOverGradientsState(max_dist, g_sos, state.init_params)

    return GradientTransformation(init_fn, update_fn)
