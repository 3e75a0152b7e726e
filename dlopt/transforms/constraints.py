"""Constraints on what an update may do: freeze leaves, zero NaNs, keep params non-negative."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics
from dlopt.core import tree as tree_lib
from dlopt.core.base import EmptyState, GradientTransformation, init_empty_state
from dlopt.core.combine import masked, partition, resolve_mask

NonNegativeParamsState = EmptyState


def _nonnegative_leaf(p, u, out_dtype):
    f = numerics.compute_dtype(tree_lib.dtype_of(p), u.dtype)
    p_f, u_f = jnp.asarray(p).astype(f), u.astype(f)
    return jnp.where(p_f + u_f < 0, -p_f, u_f).astype(out_dtype)


def keep_params_nonnegative() -> GradientTransformation:
    """Clips each update so the params stay >= 0: :math:`u \\leftarrow -p` where
    :math:`p + u < 0`, :math:`u` elsewhere (a projection onto the non-negative orthant).

    Put it last in a chain, after the learning rate. Params that are already negative are
    moved to 0. Arithmetic in float32 (or wider); updates in each parameter's dtype.

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.sgd(1.0), dlopt.keep_params_nonnegative())
        >>> params = jnp.array([0.5, 2.0])
        >>> tx.update(jnp.array([1.0, 1.0]), tx.init(params), params)[0]
        Array([-0.5, -1. ], dtype=float32)
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "keep_params_nonnegative needs params: call update(updates, state, params)."
            )
        tree_lib.check_matching_trees(params, updates, "params", "updates")
        dtypes = numerics.out_dtypes(updates, params)
        return jax.tree.map(_nonnegative_leaf, params, updates, dtypes), state

    return GradientTransformation(init_empty_state, update_fn)


class ZeroNansState(NamedTuple):
    found_nan: Any  # a bool per leaf: whether the last update had a NaN there


def zero_nans() -> GradientTransformation:
    """Replaces NaNs in the updates by 0 and records, per leaf, whether there was one.

    .. math:: u_i \\leftarrow 0 \\text{ where } u_i \\text{ is NaN}

    Infinities pass (clip them separately). ``state.found_nan`` is a tree of scalar bools
    shaped like the params, for logging; the rule does not read it.

    Returns:
        A `GradientTransformation` with state `ZeroNansState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.zero_nans()
        >>> updates, state = tx.update(jnp.array([1.0, jnp.nan]), tx.init(jnp.zeros(2)))
        >>> updates, bool(state.found_nan)
        (Array([1., 0.], dtype=float32), True)
    """

    def init_fn(params):
        return ZeroNansState(found_nan=jax.tree.map(lambda p: jnp.zeros([], jnp.bool_), params))

    def update_fn(updates, state, params=None):
        del params, state
        found = jax.tree.map(lambda u: jnp.any(jnp.isnan(u)), updates)
        clean = jax.tree.map(lambda u: jnp.where(jnp.isnan(u), jnp.zeros_like(u), u), updates)
        return clean, ZeroNansState(found_nan=found)

    return GradientTransformation(init_fn, update_fn)


def _set_to_zero() -> GradientTransformation:
    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init_empty_state, update_fn)


def freeze(
    mask: bool | chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree],
) -> GradientTransformation:
    """Zeroes the updates of the leaves where ``mask`` is True (those params stay fixed).

    ``mask`` is a bool (True freezes everything), a pytree of bools with the params' structure
    or a prefix of it, or a callable ``params -> such a pytree``; it must not depend on
    traced values. The other updates pass unchanged. To keep no optimizer state for frozen
    leaves, use `partition` with ``freeze(True)`` for the frozen group instead.

    Returns:
        ``masked(set_to_zero, mask)``: a `GradientTransformation` with a `masked` state.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.freeze({"embed": True, "head": False}), dlopt.adam(1e-3))
        >>> state = tx.init({"embed": jnp.zeros(4), "head": jnp.zeros(2)})
    """
    if not (callable(mask) or isinstance(mask, bool | jax.Array) or jax.tree.leaves(mask)):
        raise TypeError(f"mask must be a bool, a pytree of bools or a callable, got {mask=!r}.")
    return masked(_set_to_zero(), mask)


def selective_transform(
    optimizer: GradientTransformation,
    *,
    freeze_mask: bool | chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree],
) -> GradientTransformation:
    """``optimizer`` on the leaves where ``freeze_mask`` is False; zero updates and no
    optimizer state on the others (optax's name for a `partition` with a frozen group).

    Unlike `freeze` (which masks the updates of a chain), the frozen leaves here keep no
    ``optimizer`` state: ``partition({"train": optimizer, "freeze": set_to_zero()}, labels)``.

    Args:
        optimizer: the transform for the trained leaves.
        freeze_mask: a pytree of bools with the params' structure (True freezes the leaf),
            or (dlopt only) a callable ``params -> such a pytree``.

    Returns:
        A `GradientTransformation` with state `dlopt.PartitionState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> params = {"embed": jnp.ones(2), "head": jnp.ones(2)}
        >>> tx = dlopt.selective_transform(
        ...     dlopt.sgd(0.1), freeze_mask={"embed": True, "head": False}
        ... )
        >>> tx.update(params, tx.init(params), params)[0]["embed"]
        Array([0., 0.], dtype=float32)
    """

    def labels(params):
        mask = resolve_mask(freeze_mask, params)
        return jax.tree.map(lambda m: "freeze" if m else "train", mask)

    return partition({"train": optimizer, "freeze": _set_to_zero()}, labels)
