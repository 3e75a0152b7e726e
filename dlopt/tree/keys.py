"""Random pytrees: one PRNG key per leaf, samples shaped like a tree (optax.tree's)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax


def split_key_like(rng_key: jax.Array, target_tree: Any) -> Any:
    """``rng_key`` split into one key per leaf of ``target_tree``, in its structure."""
    treedef = jax.tree.structure(target_tree)
    keys = jax.random.split(rng_key, treedef.num_leaves)
    return jax.tree.unflatten(treedef, keys)


def random_like(
    rng_key: jax.Array,
    target_tree: Any,
    sampler: Callable[..., jax.typing.ArrayLike] = jax.random.normal,
    dtype: jax.typing.DTypeLike | None = None,
) -> Any:
    """A tree shaped like ``target_tree`` whose leaves are ``sampler(key, shape, dtype)``
    draws (``dtype`` default: each leaf's), each from its own key and with its leaf's
    sharding when ``sampler`` takes ``out_sharding``.

    >>> import jax, jax.numpy as jnp
    >>> import dlopt
    >>> noise = dlopt.tree.random_like(jax.random.key(0), {"w": jnp.zeros((2, 3))})
    >>> noise["w"].shape
    (2, 3)
    """
    keys = split_key_like(rng_key, target_tree)
    if "out_sharding" in inspect.signature(sampler).parameters:
        draw = sampler
    else:

        def draw(key, shape, dtype, *, out_sharding):
            del out_sharding
            return sampler(key, shape, dtype)

    return jax.tree.map(
        lambda leaf, key: draw(
            key, leaf.shape, dtype or leaf.dtype, out_sharding=jax.typeof(leaf).sharding
        ),
        target_tree,
        keys,
    )


def unwrap_random_key_data(input_tree: Any) -> Any:
    """``input_tree`` with each typed PRNG key replaced by its raw ``jax.random.key_data``
    (for numerical comparison of states holding keys)."""

    def unwrap(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)
