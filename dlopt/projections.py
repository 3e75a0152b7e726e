r"""Euclidean projections of a pytree onto convex sets (optax.projections).

Each function solves ``argmin_p ||x - p||_2^2`` subject to ``p`` in a set ``C``, with every
leaf of the tree one block of the vector ``x``:

=======================  =========================  ===================================
function                 ``C``                      solution
=======================  =========================  ===================================
projection_non_negative  ``p >= 0``                 ``max(x, 0)``
projection_box           ``lower <= p <= upper``    ``clip(x, lower, upper)``
projection_hypercube     ``0 <= p <= scale``        a box
projection_linf_ball     ``||p||_inf <= scale``     a box
projection_simplex       ``p >= 0, sum p = scale``  sort-based, below
projection_l1_sphere     ``||p||_1 = scale``        ``sign(x) * simplex(|x|)``
projection_l1_ball       ``||p||_1 <= scale``       ``x`` inside, else the sphere
projection_l2_sphere     ``||p||_2 = scale``        ``scale * x / ||x||``
projection_l2_ball       ``||p||_2 <= scale``       ``x * scale / max(||x||, scale)``
projection_vector        the line ``t a``           ``<x, a> / <a, a> * a``
projection_hyperplane    ``<a, p> = b``             ``x + (b - <a, x>) / <a, a> * a``
projection_halfspace     ``<a, p> <= b``            that step where it is negative
=======================  =========================  ===================================

The simplex projection (Held et al., 1974; Duchi et al., 2008): sort ``u = sort(x)``
descending, ``rho = #{j : 1 + j u_j > sum_{i<=j} u_i}`` (for scale 1), ``tau = (sum_{i<=rho}
u_i - 1) / rho``, ``p = max(x - tau, 0)``; its JVP is that of the projection onto the
support's affine hull.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import flatten_util

from dlopt import tree as tree_math


def projection_non_negative(tree: Any) -> Any:
    """Onto the non-negative orthant: ``max(x, 0)`` per element."""
    return jax.tree.map(jax.nn.relu, tree)


def projection_box(tree: Any, lower: Any, upper: Any) -> Any:
    """Onto ``lower <= p <= upper`` (scalars or trees like ``tree``): a clip."""
    return jax.tree.map(jnp.clip, tree, lower, upper)


def projection_hypercube(tree: Any, scale: Any = 1) -> Any:
    """Onto ``0 <= p <= scale`` (the unit hypercube by default)."""
    return projection_box(tree, lower=0, upper=scale)


@jax.custom_jvp
def _projection_unit_simplex(values: jax.Array) -> jax.Array:
    n = values.shape[0]
    u = jnp.sort(values)[::-1]
    cumsum_u = jnp.cumsum(u)
    ind = jnp.arange(1, n + 1, dtype=values.dtype)
    idx = jnp.count_nonzero(1 / ind + (u - cumsum_u / ind) > 0)
    rho = idx.astype(values.dtype)
    return jax.nn.relu(1 / rho + (values - cumsum_u[idx - 1] / rho))


@_projection_unit_simplex.defjvp
def _projection_unit_simplex_jvp(primals, tangents):
    (values,), (values_dot,) = primals, tangents
    out = _projection_unit_simplex(values)
    supp = (out > 0).astype(values_dot.dtype)
    card = jnp.sum(supp)
    return out, supp * values_dot - (jnp.dot(supp, values_dot) / card) * supp


def projection_simplex(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto the simplex ``p >= 0, sum(p) = scale`` (the probability simplex by default).

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> p = dlopt.projections.projection_simplex({"w": jnp.array([2.5, 3.2]), "b": 0.5})
    >>> print(f"{dlopt.tree.sum(p):.4f}")
    1.0000
    """
    values, unravel = flatten_util.ravel_pytree(tree)
    return unravel(scale * _projection_unit_simplex(values / scale))


def projection_l1_sphere(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto ``||p||_1 = scale``: ``sign(x) * projection_simplex(|x|, scale)``."""
    signs = jax.tree.map(jnp.sign, tree)
    return tree_math.mul(signs, projection_simplex(jax.tree.map(jnp.abs, tree), scale))


def projection_l1_ball(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto ``||p||_1 <= scale``: ``x`` if inside, else its `projection_l1_sphere`."""
    return jax.lax.cond(
        tree_math.norm(tree, ord=1) <= scale,
        lambda t: t,
        lambda t: projection_l1_sphere(t, scale),
        tree,
    )


def projection_l2_sphere(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto ``||p||_2 = scale``: ``scale * x / ||x||_2``."""
    return tree_math.scale(scale / tree_math.norm(tree), tree)


def projection_l2_ball(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto ``||p||_2 <= scale``: ``x * scale / max(||x||_2, scale)``."""
    squared_norm = tree_math.norm(tree, squared=True)
    return tree_math.scale(scale / jnp.sqrt(jnp.maximum(squared_norm, scale**2)), tree)


def projection_linf_ball(tree: Any, scale: jax.typing.ArrayLike = 1) -> Any:
    """Onto ``||p||_inf <= scale``: a clip to ``[-scale, scale]``."""
    lower = tree_math.full_like(tree, -scale)
    upper = tree_math.full_like(tree, scale)
    return projection_box(tree, lower=lower, upper=upper)


def projection_vector(x: Any, a: Any) -> Any:
    """Onto the line spanned by ``a`` (a tree like ``x``): ``<x, a> / <a, a> * a``."""
    return tree_math.scale(tree_math.vdot(x, a) / tree_math.vdot(a, a), a)


def projection_hyperplane(x: Any, a: Any, b: jax.typing.ArrayLike) -> Any:
    """Onto ``<a, p> = b``: ``x + (b - <a, x>) / <a, a> * a``."""
    step = (b - tree_math.vdot(x, a)) / tree_math.vdot(a, a)
    return tree_math.add_scale(x, step, a)


def projection_halfspace(x: Any, a: Any, b: jax.typing.ArrayLike) -> Any:
    """Onto ``<a, p> <= b``: the hyperplane step where ``x`` is outside, none inside.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> dlopt.projections.projection_halfspace(jnp.array([2.0, 0.0]), jnp.array([1.0, 0.0]), 1.0)
    Array([1., 0.], dtype=float32)
    """
    step = (b - tree_math.vdot(x, a)) / tree_math.vdot(a, a)
    return tree_math.add_scale(x, jnp.clip(step, max=0), a)
