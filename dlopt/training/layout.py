"""A `TrainState` moved between the tree layout and the flat layout (`TrainState.create`'s
``flat=True``), exactly: the same numbers, stored differently.

The optimizer state maps by structure. ``tx.init`` of the params tree and ``fused(tx).init``
of the flat buffers build the same state with every params-shaped subtree (Adam's ``mu``,
``nu``) in one layout replaced by a ``{label: {dtype: buffer}}`` subtree in the other; scalars
(``count``) and empty states are shared. `to_tree` and `to_flat` walk both structures side by
side, slicing or packing each pair. A transform whose state has no such pairing (a ``mask``
written for one layout, say) is refused with a `ValueError` showing both structures.

Checkpoints hold the params as the tree and, where it maps, the optimizer state in the tree
layout (`saved_form`), so a flat run and a tree run read each other's checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dlopt.training.state import TrainState
from dlopt.wrappers.fused import (
    PACK_BELOW,
    FlatParams,
    FusedState,
    GroupBy,
    flatten,
    fused,
    pack,
    unpack,
)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _matcher(template: Any):
    """``is_leaf`` for subtrees with ``template``'s structure and leaf shapes."""
    treedef = jax.tree.structure(template)
    shapes = [_shape(x) for x in jax.tree.leaves(template)]
    size = len(shapes)

    def matches(x: Any) -> bool:
        if x is None:
            return False
        leaves, td = jax.tree.flatten(x)
        return len(leaves) == size and td == treedef and [_shape(v) for v in leaves] == shapes

    return matches


_NO_MAP = (
    "this optimizer's state does not map between the tree and the flat layout{detail}; a "
    "transform that looks at the tree (a mask or partition written for the params tree, or "
    "one written for group_by labels) has no counterpart in the other layout. Keep one "
    "layout for the run, or give masks as group_by labels and stay flat."
)


def _paired(tree_side: Any, flat_side: Any, params: Any, flat: FlatParams):
    """The two states cut at their params-shaped / buffer-shaped subtrees, item by item."""
    is_params, is_buffers = _matcher(params), _matcher(flat.buffers)
    tree_items, tree_def = jax.tree.flatten(tree_side, is_leaf=is_params)
    flat_items, flat_def = jax.tree.flatten(flat_side, is_leaf=is_buffers)
    pairs = list(zip(tree_items, flat_items, strict=False))
    ok = len(tree_items) == len(flat_items) and all(
        is_params(t) == is_buffers(f) and (is_params(t) or _shape(t) == _shape(f)) for t, f in pairs
    )
    if not ok:
        detail = f" (tree layout: {tree_def}; flat layout: {flat_def})"
        raise ValueError(_NO_MAP.format(detail=detail))
    return pairs, tree_def, flat_def, is_params


def opt_state_to_tree(opt_state: FusedState, tx: Any, flat: FlatParams) -> Any:
    """``fused(tx)``'s state over ``flat``'s buffers as ``tx``'s state over the params tree."""
    params = flat.unflatten()
    try:
        template = jax.eval_shape(tx.init, params)
    except (ValueError, TypeError) as error:  # tx cannot even start on the tree
        raise ValueError(_NO_MAP.format(detail=f" ({error})".split("\n")[0])) from error
    pairs, tree_def, _, is_params = _paired(template, opt_state.inner, params, flat)
    items = [
        unpack(f, flat.layout, [x.dtype for x in jax.tree.leaves(t)]) if is_params(t) else f
        for t, f in pairs
    ]
    return tree_def.unflatten(items)


def opt_state_to_flat(opt_state: Any, tx: Any, params: Any, flat: FlatParams) -> FusedState:
    """``tx``'s state over the params tree as ``fused(tx)``'s state over ``flat``'s buffers."""
    template = jax.eval_shape(fused(tx).init, flat).inner
    pairs, _, flat_def, is_params = _paired(opt_state, template, params, flat)
    items = [
        jax.tree.map(lambda b, s: b.astype(s.dtype), pack(t, flat.layout), f) if is_params(t) else t
        for t, f in pairs
    ]
    return FusedState(flat_def.unflatten(items))


def _map_flat(tree: Any, fn) -> Any:
    return jax.tree.map(
        lambda x: fn(x) if isinstance(x, FlatParams) else x,
        tree,
        is_leaf=lambda x: isinstance(x, FlatParams),
    )


def to_tree(state: TrainState) -> TrainState:
    """``state`` in the tree layout (itself when it is already a tree-layout state)."""
    if not state.is_flat:
        return state
    flat = state.stored_params
    opt_state = opt_state_to_tree(state.opt_state, state.tx, flat)
    averages = _map_flat(state.averages, FlatParams.unflatten)
    return state.replace(stored_params=flat.unflatten(), opt_state=opt_state, averages=averages)


def to_flat(
    state: TrainState,
    *,
    like: TrainState | None = None,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
    pad_to: int | None = None,
) -> TrainState:
    """``state`` in the flat layout: ``like``'s (a flat state) when given, else a new one
    built from ``group_by``, ``pack_below`` and ``pad_to`` as in `TrainState.create`."""
    if state.is_flat:
        return state
    params = state.params
    if like is not None:
        layout = like.stored_params.layout
        flat = FlatParams(pack(params, layout), layout)
    else:
        pad_to = jax.device_count() if pad_to is None else pad_to
        flat = flatten(params, group_by=group_by, pack_below=pack_below, pad_to=pad_to)
        layout = flat.layout
    opt_state = opt_state_to_flat(state.opt_state, state.tx, params, flat)
    averages = state.averages
    if averages is not None and hasattr(averages, "params"):
        averages = averages.replace(params=FlatParams(pack(averages.params, layout), layout))
    return state.replace(stored_params=flat, opt_state=opt_state, averages=averages)


def _replicated(state: TrainState) -> bool:
    """Whether a flat state carries a leading device axis (``pmap``'s `replicate`)."""
    buffer = jax.tree.leaves(state.stored_params)[0]
    return np.ndim(buffer) == 2


def _data_fields(state: TrainState) -> list[str]:
    return [f.name for f in dataclasses.fields(state) if f.metadata.get("pytree_node", True)]


def _saved_one(state: TrainState) -> dict[str, Any]:
    fields = {name: getattr(state, name) for name in _data_fields(state)}
    if state.is_flat:
        flat = fields.pop("stored_params")
        fields["stored_params"] = flat.unflatten()
        try:
            fields["opt_state"] = opt_state_to_tree(state.opt_state, state.tx, flat)
        except ValueError:  # no tree counterpart (group_by masks): saved over the buffers
            pass
        fields["averages"] = _map_flat(state.averages, FlatParams.unflatten)
    return {("params" if k == "stored_params" else k): v for k, v in fields.items()}


def saved_form(state: Any) -> Any:
    """What a checkpoint stores for a `TrainState`: a dict of its data fields, the params
    tree under ``"params"`` and, for a flat state, the optimizer state in the tree layout
    (kept over the buffers when it has no tree counterpart, e.g. masks given as ``group_by``
    labels); anything else as it is. A checkpoint restored without a target reads as this
    dict, and a flat and a tree run read each other's checkpoints."""
    if not isinstance(state, TrainState):
        return state
    if state.is_flat and _replicated(state):
        return jax.vmap(_saved_one)(state)
    return _saved_one(state)


def _restored_one(restored: Mapping[str, Any], target: TrainState) -> TrainState:
    fields = {name: restored[name] for name in _data_fields(target) if name != "stored_params"}
    params = restored["params"]
    if not target.is_flat:
        return target.replace(stored_params=params, **fields)
    layout = target.stored_params.layout
    flat = FlatParams(pack(params, layout), layout)
    opt_state = fields["opt_state"]
    if jax.tree.structure(opt_state) != jax.tree.structure(target.opt_state):
        fields["opt_state"] = opt_state_to_flat(opt_state, target.tx, params, flat)
    fields["averages"] = jax.tree.map(
        lambda saved, t: (
            FlatParams(pack(saved, t.layout), t.layout) if isinstance(t, FlatParams) else saved
        ),
        fields["averages"],
        target.averages,
        is_leaf=lambda x: isinstance(x, FlatParams),
    )
    return target.replace(stored_params=flat, **fields)


def from_saved(restored: Any, target: Any) -> Any:
    """The inverse of `saved_form`: ``restored`` (read with ``saved_form(target)`` as the
    template) as a state like ``target``, in its layout and on its shardings."""
    if not isinstance(target, TrainState):
        return restored
    if target.is_flat and _replicated(target):
        state = jax.vmap(_restored_one)(restored, target)
    else:
        state = _restored_one(restored, target)
    if not target.is_flat:
        return state
    return jax.tree.map(
        lambda x, t: jax.device_put(x, t.sharding) if isinstance(t, jax.Array) else x,
        state,
        target,
    )
