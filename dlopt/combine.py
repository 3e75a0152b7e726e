"""Composing transforms: `chain`, `named_chain`, `masked` and `partition` (parameter groups)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import chex
import jax

from dlopt import tree as tree_lib
from dlopt.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)


def _check_params(updates: chex.ArrayTree, params: chex.ArrayTree | None) -> None:
    if params is not None:
        tree_lib.check_matching_trees(params, updates, "params", "updates")


def chain(*transforms: GradientTransformation) -> GradientTransformationExtraArgs:
    """Applies ``transforms`` in order: ``u <- t_n(... t_2(t_1(g)))``; state is a tuple.

    Extra keyword arguments of ``update`` (e.g. ``value=`` for `reduce_on_plateau`) reach
    the transforms whose ``update`` accepts keyword arguments. When ``params`` are given,
    their tree must match the updates' tree (a ``ValueError`` names the differing path).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adam(1e-3))
    """
    wrapped = [with_extra_args_support(t) for t in transforms]

    def init_fn(params):
        return tuple(t.init(params) for t in wrapped)

    def update_fn(updates, state, params=None, **extra_args):
        if len(state) != len(wrapped):
            raise ValueError(
                f"chain of {len(wrapped)} transforms got a state of {len(state)} entries; "
                "build the state with this chain's init(params)."
            )
        _check_params(updates, params)
        new_state = []
        for t, s in zip(wrapped, state, strict=True):
            updates, s = t.update(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def named_chain(*named: tuple[str, GradientTransformation]) -> GradientTransformationExtraArgs:
    """Like `chain`, with the state a dict keyed by the given names (easy to inspect).

    Example:
        >>> import dlopt
        >>> tx = dlopt.named_chain(("clip", dlopt.clip(1.0)), ("opt", dlopt.sgd(0.1)))
    """
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain names must be unique, got {names}.")
    wrapped = {name: with_extra_args_support(t) for name, t in named}

    def init_fn(params):
        return {name: t.init(params) for name, t in wrapped.items()}

    def update_fn(updates, state, params=None, **extra_args):
        _check_params(updates, params)
        new_state = {}
        for name, t in wrapped.items():
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


class MaskedNode(NamedTuple):
    """Stands in for a leaf that a mask leaves out: an empty pytree node."""


class MaskedState(NamedTuple):
    inner_state: Any


Mask = chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree]


def resolve_mask(mask: Mask, tree: chex.ArrayTree) -> chex.ArrayTree:
    """``mask(tree)`` for a callable mask, else ``mask`` itself.

    A mask is callable when all its leaves are (a plain function is its own only leaf); a
    pytree of bools that is also callable (an equinox module) is used as a tree, as in optax.
    """
    leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return mask(tree) if leaves and all(leaves) else mask


def _hide(tree: chex.ArrayTree, mask: chex.ArrayTree) -> chex.ArrayTree:
    """Replaces the subtrees where ``mask`` is False by `MaskedNode`."""
    return jax.tree.map(lambda m, x: x if m else MaskedNode(), mask, tree)


def masked(inner: GradientTransformation, mask: Mask) -> GradientTransformationExtraArgs:
    """Applies ``inner`` only where ``mask`` is True; other updates pass through unchanged.

    ``mask`` is a pytree of bools with the params' structure (or a prefix of it), or a
    callable ``params -> that pytree``. ``inner`` keeps state only for the selected leaves.

    Example:
        >>> import dlopt
        >>> only_weights = lambda p: {"w": True, "b": False}
        >>> tx = dlopt.masked(dlopt.add_decayed_weights(1e-4), only_weights)
    """
    inner = with_extra_args_support(inner)

    def init_fn(params):
        return MaskedState(inner.init(_hide(params, resolve_mask(mask, params))))

    def update_fn(updates, state, params=None, **extra_args):
        mask_tree = resolve_mask(mask, updates if params is None else params)
        hidden_params = None if params is None else _hide(params, mask_tree)
        new_updates, inner_state = inner.update(
            _hide(updates, mask_tree), state.inner_state, hidden_params, **extra_args
        )
        merged = jax.tree.map(
            lambda m, new, old: new if m else old, mask_tree, new_updates, updates
        )
        return merged, MaskedState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


class PartitionState(NamedTuple):
    inner_states: dict[Hashable, MaskedState]


def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree],
) -> GradientTransformationExtraArgs:
    """Different transforms for different parameter groups (torch's param groups).

    ``param_labels`` gives each leaf (or subtree) a key of ``transforms``, or is a callable
    ``params -> labels``. Each group's transform sees and keeps state for its leaves only.

    Example:
        >>> import dlopt
        >>> tx = dlopt.partition(
        ...     {"body": dlopt.adam(1e-3), "head": dlopt.sgd(1e-2)},
        ...     lambda p: {k: "head" if k == "out" else "body" for k in p},
        ... )
    """

    def masks(tree):
        labels = resolve_mask(param_labels, tree)
        present = set(jax.tree.leaves(labels))
        missing = present - set(transforms)
        if missing:
            raise ValueError(
                f"param_labels uses labels {sorted(map(str, missing))} that transforms lacks; "
                f"transforms has {sorted(map(str, transforms))}."
            )
        return {
            label: jax.tree.map(lambda lab, label=label: lab == label, labels)
            for label in transforms
        }

    groups = {label: with_extra_args_support(t) for label, t in transforms.items()}

    def init_fn(params):
        mask_by_label = masks(params)
        return PartitionState(
            {label: masked(t, mask_by_label[label]).init(params) for label, t in groups.items()}
        )

    def update_fn(updates, state, params=None, **extra_args):
        mask_by_label = masks(updates if params is None else params)
        new_states = {}
        for label, t in groups.items():
            updates, new_states[label] = masked(t, mask_by_label[label]).update(
                updates, state.inner_states[label], params, **extra_args
            )
        return updates, PartitionState(new_states)

    return GradientTransformationExtraArgs(init_fn, update_fn)
