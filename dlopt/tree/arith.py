"""Arithmetic, reductions and norms over pytrees (optax.tree's math, same signatures).

Every function is one `jax.tree.map` or one reduction over leaves; the results follow JAX's
promotion of the leaves (an int tree sums to an int), as optax's do. The two-norm is the
exception in precision, not in dtype: it accumulates in float32 (float64 if a leaf is) through
`dlopt.core.numerics.squared_norm` and comes back in the leaves' dtype, so a bfloat16 tree's
norm is the float32 norm rounded once, not a sum rounded at every term.
"""

from __future__ import annotations

import builtins
import functools
import operator
from typing import Any

import jax
import jax.numpy as jnp

from dlopt.core import numerics
from dlopt.core.tree import dtype_of


def add(tree_x: Any, tree_y: Any, *other_trees: Any) -> Any:
    """``tree_x + tree_y (+ ...)``, leaf by leaf."""
    return jax.tree.map(lambda *leaves: builtins.sum(leaves), tree_x, tree_y, *other_trees)


def sub(tree_x: Any, tree_y: Any) -> Any:
    """``tree_x - tree_y``, leaf by leaf."""
    return jax.tree.map(operator.sub, tree_x, tree_y)


def mul(tree_x: Any, tree_y: Any) -> Any:
    """``tree_x * tree_y``, leaf by leaf."""
    return jax.tree.map(operator.mul, tree_x, tree_y)


def div(tree_x: Any, tree_y: Any) -> Any:
    """``tree_x / tree_y``, leaf by leaf."""
    return jax.tree.map(operator.truediv, tree_x, tree_y)


def scale(scalar: jax.typing.ArrayLike, tree: Any) -> Any:
    """``scalar * tree``."""
    return jax.tree.map(lambda x: scalar * x, tree)


def add_scale(tree_x: Any, scalar: jax.typing.ArrayLike, tree_y: Any) -> Any:
    """``tree_x + scalar * tree_y``; a ``None`` leaf of ``tree_x`` stays ``None``."""
    scalar = jnp.asarray(scalar)
    return jax.tree.map(
        lambda x, y: None if x is None else x + scalar * y,
        tree_x,
        tree_y,
        is_leaf=lambda x: x is None,
    )


def vdot(tree_x: Any, tree_y: Any) -> jax.typing.ArrayLike:
    """``<x, y> = sum over leaves of sum(conj(x) * y)``, each leaf contracted at the highest
    precision (`dlopt.core.numerics.vdot_leaf`), in the leaves' promoted dtype.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> dlopt.tree.vdot({"a": jnp.array([1, 2])}, {"a": jnp.array([-1, 1])})
    Array(1, dtype=int32)
    """
    vdots = jax.tree.map(numerics.vdot_leaf, tree_x, tree_y)
    return jax.tree.reduce(operator.add, vdots, initializer=0)


def sum(tree: Any, associative_reduction: bool = False) -> jax.typing.ArrayLike:  # noqa: A001
    """The sum of every element of every leaf. ``associative_reduction`` sums the per-leaf
    sums as a balanced tree (``jax.tree.reduce_associative``): faster to compile for large
    trees, a different rounding order."""
    sums = jax.tree.map(jnp.sum, tree)
    if associative_reduction:
        return jax.tree.reduce_associative(operator.add, sums, identity=0)
    return jax.tree.reduce(operator.add, sums, initializer=0)


def _reduce_nonempty(tree: Any, leaf_fn, combine, initializer: float) -> jax.typing.ArrayLike:
    parts = jax.tree.map(lambda x: None if jnp.size(x) == 0 else leaf_fn(x), tree)
    return jax.tree.reduce(combine, parts, initializer=initializer)


def max(tree: Any) -> jax.typing.ArrayLike:  # noqa: A001
    """The largest element over all leaves (``-inf`` for a tree with no elements)."""
    return _reduce_nonempty(tree, jnp.max, jnp.maximum, -float("inf"))


def min(tree: Any) -> jax.typing.ArrayLike:  # noqa: A001
    """The smallest element over all leaves (``inf`` for a tree with no elements)."""
    return _reduce_nonempty(tree, jnp.min, jnp.minimum, float("inf"))


def size(tree: Any) -> int:
    """The number of elements over all leaves, a Python int."""
    return builtins.sum(jnp.size(leaf) for leaf in jax.tree.leaves(tree))


def conj(tree: Any) -> Any:
    """The complex conjugate of every leaf."""
    return jax.tree.map(jnp.conj, tree)


def real(tree: Any) -> Any:
    """The real part of every leaf."""
    return jax.tree.map(jnp.real, tree)


def _real_dtype(dtype: Any) -> Any:
    dtype = jnp.dtype(dtype)
    return jnp.finfo(dtype).dtype if jnp.issubdtype(dtype, jnp.complexfloating) else dtype


def _norm_dtype(tree: Any, squared: bool) -> Any:
    """The dtype optax's sum of ``|x|^2`` over ``tree`` has (and its square root's)."""
    dtypes = [_real_dtype(dtype_of(x)) for x in jax.tree.leaves(tree)]
    dtype = functools.reduce(jnp.promote_types, dtypes) if dtypes else jnp.dtype(jnp.int32)
    if squared:
        return dtype
    return jax.eval_shape(jnp.sqrt, jax.ShapeDtypeStruct((), dtype)).dtype


def norm(
    tree: Any,
    ord: int | str | float | None = None,  # noqa: A002 - optax's and numpy's name
    squared: bool = False,
) -> jax.Array:
    """The vector norm of all leaves together, of order ``ord`` (None or 2, 1, inf).

    ``||x||_2 = sqrt(sum |x_i|^2)`` (accumulated in float32 or wider, returned in the leaves'
    dtype), ``||x||_1 = sum |x_i|``, ``||x||_inf = max |x_i|``; ``squared`` returns the square.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> print(dlopt.tree.norm({"w": jnp.array([3.0, 4.0])}))
    5.0
    """
    if ord is None or ord == 2:
        sq = numerics.squared_norm(tree)
        out = sq if squared else jnp.sqrt(sq)
        return jnp.asarray(out).astype(_norm_dtype(tree, squared))
    if ord == 1:
        out = sum(jax.tree.map(jnp.abs, tree))
    elif ord == jnp.inf or ord in ("inf", "infinity"):
        out = max(jax.tree.map(jnp.abs, tree))
    else:
        raise ValueError(f"ord must be None, 1, 2 or inf (or 'inf'), got ord={ord!r}.")
    return jnp.array(numerics.abs_sq(jnp.asarray(out)) if squared else out)


def batch_shape(tree: Any, shape: tuple[int, ...] = ()) -> Any:
    """Every leaf broadcast to ``(*shape, *leaf.shape)``: leading batch axes added."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*shape, *jnp.shape(x))), tree)


def ones_like(tree: Any, dtype: jax.typing.DTypeLike | None = None) -> Any:
    """A tree of ones shaped like ``tree``, in ``dtype`` or each leaf's own."""
    return jax.tree.map(lambda x: jnp.ones_like(x, dtype=dtype), tree)


def clip(
    tree: Any,
    min_value: jax.typing.ArrayLike | None = None,
    max_value: jax.typing.ArrayLike | None = None,
) -> Any:
    """Every leaf clipped to ``[min_value, max_value]`` (``None``: no bound on that side)."""
    return jax.tree.map(lambda g: jnp.clip(g, min_value, max_value), tree)


def where(condition: Any, tree_x: Any, tree_y: Any) -> Any:
    """``tree_x`` where ``condition`` holds, else ``tree_y``, leaf by leaf."""
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)


def allclose(
    a: Any,
    b: Any,
    rtol: jax.typing.ArrayLike = 1e-05,
    atol: jax.typing.ArrayLike = 1e-08,
    equal_nan: bool = False,
) -> Any:
    """Whether every pair of leaves is ``jnp.allclose`` (``|a - b| <= atol + rtol * |b|``)."""
    close = jax.tree.map(
        lambda x, y: jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan), a, b
    )
    return functools.reduce(operator.and_, jax.tree.leaves(close), True)
