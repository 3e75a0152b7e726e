"""Regularization: penalties to add to a loss, weight decay as a transform, parameter masks.

Penalties (`l1_penalty`, `l2_penalty`, `elastic_net_penalty`) are pure functions of the
params returning a scalar to add to the loss, so they go through the optimizer's adaptive
scaling (coupled). The transforms (`add_decayed_weights`, `add_l1_subgradient`) add the
penalty's (sub)gradient to the updates instead; placed after ``scale_by_adam`` they are
decoupled from it (AdamW). `weights_only` is the usual mask: decay weight matrices and
kernels, not biases or normalization parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import EmptyState, GradientTransformation, ScalarOrSchedule
from dlopt.core.combine import Mask, masked, resolve_mask

# Leaf names that are never decayed by `weights_only`, whatever their rank: biases and the
# scale/offset of normalization layers (Flax linen and nnx: "bias", "scale"; Haiku: "b",
# "offset"; Keras-style: "beta", "gamma").
NOT_WEIGHTS = frozenset({"bias", "b", "scale", "offset", "beta", "gamma"})


def weights_only(params: chex.ArrayTree) -> chex.ArrayTree:
    """The mask that selects weights (rank >= 2, not named like a bias or a norm parameter).

    A leaf is selected when ``ndim >= 2`` and its name is not one of `NOT_WEIGHTS`
    (``bias``, ``b``, ``scale``, ``offset``, ``beta``, ``gamma``). So Dense/Conv ``kernel``
    and ``embedding`` tables are decayed; biases, LayerNorm/BatchNorm ``scale``/``bias``,
    batch statistics and scalars are not. Works on plain dicts, Flax linen variable dicts
    and ``flax.nnx.State`` (the result has the same structure, with bools as leaves).

    Args:
        params: the parameter pytree.

    Returns:
        A pytree of Python bools shaped like ``params``, for any ``mask=`` argument.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.weights_only({"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)})
        {'bias': False, 'kernel': True}
    """

    def select(path, leaf):
        return bool(jnp.ndim(leaf) >= 2 and tree_lib.leaf_name(path) not in NOT_WEIGHTS)

    return jax.tree_util.tree_map_with_path(select, params)


def _selected_leaves(params: chex.ArrayTree, mask: Mask | None) -> list[chex.Array]:
    """The leaves of ``params`` where ``mask`` (a bool pytree, prefix or callable) is True."""
    if mask is None:
        return jax.tree.leaves(params)
    mask_tree = resolve_mask(mask, params)
    flags, treedef = jax.tree.flatten(mask_tree)
    subtrees = treedef.flatten_up_to(params)
    return [
        leaf
        for flag, sub in zip(flags, subtrees, strict=True)
        if flag
        for leaf in jax.tree.leaves(sub)
    ]


def _total(
    params: chex.ArrayTree, mask: Mask | None, per_leaf: Callable[[chex.Array], chex.Array]
) -> chex.Array:
    """``sum over selected leaves of per_leaf(leaf)``, accumulated in float32 (or float64)."""
    total = jnp.zeros((), jnp.float32)
    for leaf in _selected_leaves(params, mask):
        term = jnp.sum(per_leaf(numerics.widen(leaf)))
        total = total.astype(term.dtype) + term
    return total


def _abs(x: chex.Array) -> chex.Array:
    """``|x|`` written as ``x * sign(x)`` so that its gradient at 0 is 0 (``jnp.abs``'s is 1);
    the modulus for a complex ``x``."""
    return jnp.abs(x) if jnp.iscomplexobj(x) else x * jnp.sign(x)


def l1_penalty(
    params: chex.ArrayTree, rate: chex.Numeric, *, mask: Mask | None = None
) -> chex.Array:
    """The L1 (lasso) penalty ``rate * sum |w|`` over the (masked) leaves.

    .. math:: R(w) = \\lambda \\sum_i |w_i|, \\qquad \\partial R / \\partial w = \\lambda\\,
        \\operatorname{sign}(w)

    Its gradient is the update that `add_l1_subgradient` adds, with ``sign(0) = 0`` (the
    minimum-norm subgradient; ``jax.grad`` of ``jnp.abs`` would give 1 at 0).

    Args:
        params: the parameter pytree.
        rate: ``lambda`` >= 0.
        mask: a pytree of bools (a prefix of ``params`` is enough) or a callable
            ``params -> that pytree``, e.g. `weights_only`; False leaves are not penalized.

    Returns:
        A float32 scalar (float64 for float64 params) to add to the loss.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.l1_penalty({"w": jnp.array([1.0, -2.0])}, 0.1)
        Array(0.3, dtype=float32)
    """
    validation.check_non_negative("rate", rate)
    total = _total(params, mask, _abs)
    return tree_lib.scalar_like(rate, total) * total


def l2_penalty(
    params: chex.ArrayTree, rate: chex.Numeric, *, mask: Mask | None = None
) -> chex.Array:
    """The L2 (ridge) penalty ``0.5 * rate * sum w^2`` over the (masked) leaves.

    .. math:: R(w) = \\frac{\\lambda}{2} \\sum_i w_i^2, \\qquad \\nabla R = \\lambda w

    Its gradient is exactly the update of ``add_decayed_weights(rate)``; with plain SGD the
    two are the same algorithm, with an adaptive optimizer they differ (Adam + L2 is not
    AdamW: the penalty's gradient gets divided by ``sqrt(v)``).

    Args:
        params: the parameter pytree.
        rate: ``lambda`` >= 0.
        mask: a pytree of bools (or a prefix, or a callable ``params -> bools``).

    Returns:
        A float32 scalar (float64 for float64 params) to add to the loss.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.l2_penalty({"w": jnp.array([1.0, -2.0])}, 0.1)
        Array(0.25, dtype=float32)

    References:
        Krogh & Hertz, 1991, "A simple weight decay can improve generalization".
    """
    validation.check_non_negative("rate", rate)
    total = _total(params, mask, numerics.abs_sq)
    return tree_lib.scalar_like(0.5 * rate, total) * total


def elastic_net_penalty(
    params: chex.ArrayTree,
    rate: chex.Numeric,
    l1_ratio: chex.Numeric,
    *,
    mask: Mask | None = None,
) -> chex.Array:
    """The elastic-net penalty, a mix of L1 and L2 (scikit-learn's parametrisation).

    .. math:: R(w) = \\lambda \\sum_i \\left(\\rho |w_i| + \\frac{1 - \\rho}{2} w_i^2\\right)

    ``l1_ratio = 1`` is `l1_penalty`, ``l1_ratio = 0`` is `l2_penalty`.

    Args:
        params: the parameter pytree.
        rate: ``lambda`` >= 0.
        l1_ratio: ``rho`` in [0, 1].
        mask: a pytree of bools (or a prefix, or a callable ``params -> bools``).

    Returns:
        A float32 scalar (float64 for float64 params) to add to the loss.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.elastic_net_penalty({"w": jnp.array([1.0, -2.0])}, 0.1, l1_ratio=0.5)
        Array(0.275, dtype=float32)

    References:
        Zou & Hastie, 2005, "Regularization and variable selection via the elastic net".
    """
    validation.check_non_negative("rate", rate)
    validation.check_in_range("l1_ratio", l1_ratio, 0.0, 1.0, high_closed=True)
    l1 = _total(params, mask, _abs)
    l2 = _total(params, mask, numerics.abs_sq)
    rho = tree_lib.scalar_like(l1_ratio, l1)
    return tree_lib.scalar_like(rate, l1) * (rho * l1 + (1 - rho) * 0.5 * l2)


def _add_scaled(
    rate: ScalarOrSchedule,
    direction: Callable[[chex.Array], chex.Array],
    state_type: Any,
    name: str,
) -> GradientTransformation:
    """``u <- u + rate_t * direction(w)`` leaf by leaf; the state counts steps for a schedule
    (``state_type``) and is `EmptyState` for a constant rate, as in optax."""
    scheduled = callable(rate)

    def init_fn(params):
        del params
        return state_type(count=jnp.zeros([], jnp.int32)) if scheduled else EmptyState()

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        if params is None:
            raise ValueError(f"{name} needs params: call update(updates, state, params).")
        if scheduled:
            new_state = state_type(count=tree_lib.safe_increment(state.count))
        else:
            new_state = EmptyState()
        if updates is None:  # an empty tree (optax accepts it too)
            return updates, new_state
        if isinstance(rate, int | float) and rate == 0:
            return updates, new_state  # a constant zero rate: skip reading the params
        r = rate(state.count) if scheduled else rate
        updates = jax.tree.map(
            lambda u, p: u + tree_lib.scalar_like(r, u) * direction(p.astype(u.dtype)),
            updates,
            params,
        )
        return updates, new_state

    return GradientTransformation(init_fn, update_fn)


class AddDecayedWeightsState(NamedTuple):
    count: chex.Array  # int32 step (only when weight_decay is a schedule; else EmptyState)


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Mask | None = None
) -> GradientTransformation:
    """Decoupled weight decay: ``u <- u + lambda * w`` (AdamW, Loshchilov & Hutter 2019).

    Placed before ``scale_by_learning_rate`` the step becomes ``w <- w - lr (u + lambda w)``,
    decoupled from the adaptive scaling (unlike an L2 penalty added to the loss).

    Args:
        weight_decay: ``lambda`` >= 0, or a schedule ``step -> lambda``.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves,
            e.g. `weights_only` to skip biases and normalization parameters.

    Returns:
        A `GradientTransformation`; it needs ``params`` in ``update``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adam(), dlopt.add_decayed_weights(1e-2),
        ...                  dlopt.scale_by_learning_rate(1e-3))
    """
    if not callable(weight_decay):
        validation.check_non_negative("weight_decay", weight_decay)
    tx = _add_scaled(weight_decay, lambda w: w, AddDecayedWeightsState, "add_decayed_weights")
    return masked(tx, mask) if mask is not None else tx


class AddL1SubgradientState(NamedTuple):
    count: chex.Array  # int32 step, used when rate is a schedule


def add_l1_subgradient(rate: ScalarOrSchedule, mask: Mask | None = None) -> GradientTransformation:
    """Adds the L1 penalty's subgradient to the updates: ``u <- u + lambda * sign(w)``.

    .. math:: u \\leftarrow u + \\lambda \\operatorname{sign}(w), \\quad \\operatorname{sign}(0) = 0

    The gradient of `l1_penalty`, applied as a transform: before ``scale_by_learning_rate``
    it is decoupled from adaptive scaling, like `add_decayed_weights` is for L2. Weights
    oscillate around 0 rather than landing on it exactly (this is a subgradient step, not a
    proximal one).

    Args:
        rate: ``lambda`` >= 0, or a schedule ``step -> lambda``.
        mask: pytree of bools (or ``params -> pytree``) choosing the penalized leaves.

    Returns:
        A `GradientTransformation`; it needs ``params`` in ``update``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.add_l1_subgradient(1e-4, mask=dlopt.weights_only),
        ...                  dlopt.sgd(0.1))
    """
    if not callable(rate):
        validation.check_non_negative("rate", rate)
    tx = _add_scaled(rate, jnp.sign, AddL1SubgradientState, "add_l1_subgradient")
    return masked(tx, mask) if mask is not None else tx
