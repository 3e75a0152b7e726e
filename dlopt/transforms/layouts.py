"""`flatten`: run a transform on all parameters concatenated into one vector."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.base import with_extra_args_support as _extra_args


def _flatten(tree: chex.ArrayTree) -> chex.Array:
    return jnp.concatenate([jnp.reshape(x, [-1]) for x in jax.tree.leaves(tree)])


def _unflatten(like: chex.ArrayTree, flat: chex.Array) -> chex.ArrayTree:
    leaves, treedef = jax.tree.flatten(like)
    offsets, total = [], 0
    for leaf in leaves[:-1]:
        total += math.prod(jnp.shape(leaf))
        offsets.append(total)
    pieces = jnp.split(flat, offsets)
    pairs = zip(pieces, leaves, strict=True)
    shaped = [jnp.reshape(piece, jnp.shape(leaf)) for piece, leaf in pairs]
    return jax.tree.unflatten(treedef, shaped)


def flatten(inner: GradientTransformation) -> GradientTransformationExtraArgs:
    """``inner`` applied to one vector: ``u <- unflatten(inner(concat_i vec(u_i)))``.

    A tree of many small leaves becomes one array, so ``inner``'s per-leaf work runs once
    (fewer, larger kernels); ``inner``'s state holds vectors of the total size. Leaves are
    concatenated in ``jax.tree.leaves`` order (and promoted to one dtype by the concatenate).

    Args:
        inner: the transform to run on the flat vector.

    Returns:
        A `GradientTransformationExtraArgs`; its state is ``inner``'s over the flat vector.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.flatten(dlopt.sgd(0.1))
        >>> params = {"a": jnp.ones(2), "b": jnp.ones((1, 1))}
        >>> tx.update(params, tx.init(params), params)[0]["b"]
        Array([[-0.1]], dtype=float32)
    """
    inner = _extra_args(inner)

    def init_fn(params):
        return inner.init(_flatten(params))

    def update_fn(updates, state, params=None, **extra_args):
        flat_params = None if params is None else _flatten(params)
        flat, state = inner.update(_flatten(updates), state, flat_params, **extra_args)
        return _unflatten(updates, flat), state

    return GradientTransformationExtraArgs(init_fn, update_fn)
