"""A `TrainState` moved between the tree layout and the flat layout, exactly: the same
numbers, stored differently.

The optimizer state maps by structure. ``tx.init`` of the params tree and ``tx.init`` of the
flat `dlopt.core.flat.Buffers` build the same state with every params-shaped subtree (Adam's
``mu``, a masked transform's selected leaves) in one layout replaced by a `Buffers` in the
other; scalars (``count``), empty states and the state of `dlopt.per_leaf` parts (kept in the
tree's shapes in both layouts) are shared. `to_tree` unflattens every `Buffers`; `to_flat`
walks the flat state's template and packs the tree state's subtrees at its `Buffers`. A state
with no such pairing is refused with a `ValueError` showing both structures.

Checkpoints hold the params as the tree and the optimizer state in the tree layout
(`saved_form`), so a flat run and a tree run read each other's checkpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core.flat import PACK_BELOW, Buffers, GroupBy, Layout, pack
from dlopt.training.state import TrainState
from dlopt.wrappers.fused import plan_layout

_NO_MAP = (
    "this optimizer's state does not map between the tree and the flat layout{detail}. Keep "
    "one layout for the run (TrainState.create's flat=)."
)


def _is_buffers(x: Any) -> bool:
    return isinstance(x, Buffers)


def _shapes(tree: Any) -> list[tuple[int, ...]]:
    return [tuple(np.shape(x)) for x in jax.tree.leaves(tree)]


def opt_state_to_tree(opt_state: Any, tx: Any, flat: Buffers) -> Any:
    """``tx``'s state over ``flat``'s buffers as ``tx``'s state over the params tree."""
    state = _map_flat(opt_state, Buffers.unflatten)
    template = jax.eval_shape(tx.init, flat.layout.abstract_params())
    got, want = jax.tree.structure(state), jax.tree.structure(template)
    if got != want or _shapes(state) != _shapes(template):
        raise ValueError(_NO_MAP.format(detail=f" (tree layout: {want}; from flat: {got})"))
    return jax.tree.map(lambda x, t: jnp.asarray(x).astype(t.dtype), state, template)


def opt_state_to_flat(opt_state: Any, tx: Any, layout: Layout) -> Any:
    """``tx``'s state over the params tree as ``tx``'s state over the buffers of ``layout``."""
    params = layout.abstract_params()
    template = jax.eval_shape(lambda p: tx.init(Buffers(pack(p, layout), layout)), params)
    items, treedef = jax.tree.flatten(template, is_leaf=_is_buffers)
    try:
        parts = treedef.flatten_up_to(opt_state)
    except (ValueError, TypeError) as error:
        detail = f" (flat layout: {treedef}; tree state: {jax.tree.structure(opt_state)})"
        raise ValueError(_NO_MAP.format(detail=detail)) from error

    def convert(part: Any, t: Any) -> Any:
        if not _is_buffers(t):
            return part
        packed = Buffers(pack(part, layout), layout)
        return jax.tree.map(lambda b, s: b.astype(s.dtype), packed, t)

    return treedef.unflatten([convert(p, t) for p, t in zip(parts, items, strict=True)])


def _map_flat(tree: Any, fn) -> Any:
    return jax.tree.map(lambda x: fn(x) if _is_buffers(x) else x, tree, is_leaf=_is_buffers)


def to_tree(state: TrainState) -> TrainState:
    """``state`` in the tree layout (itself when it is already a tree-layout state)."""
    if not state.is_flat:
        return state
    flat = state.stored_params
    opt_state = opt_state_to_tree(state.opt_state, state.tx, flat)
    averages = _map_flat(state.averages, Buffers.unflatten)
    return state.replace(stored_params=flat.unflatten(), opt_state=opt_state, averages=averages)


def to_flat(
    state: TrainState,
    *,
    like: TrainState | None = None,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
    pad_to: int | None = None,
) -> TrainState:
    """``state`` in the flat layout: ``like``'s (a flat state) when given, else one planned
    for ``state.tx`` from ``group_by``, ``pack_below`` and ``pad_to`` as in
    `TrainState.create`."""
    if state.is_flat:
        return state
    params = state.params
    if like is not None:
        layout = like.layout
    else:
        pad_to = jax.device_count() if pad_to is None else pad_to
        plan = plan_layout(
            params, state.tx, group_by=group_by, pack_below=pack_below, pad_to=pad_to
        )
        layout = plan.layout
    flat = Buffers(pack(params, layout), layout)
    opt_state = opt_state_to_flat(state.opt_state, state.tx, layout)
    averages = state.averages
    if averages is not None and hasattr(averages, "params"):
        averages = averages.replace(params=Buffers(pack(averages.params, layout), layout))
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
        except ValueError:  # no tree counterpart: saved over the buffers
            pass
        fields["averages"] = _map_flat(state.averages, Buffers.unflatten)
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
    layout = target.layout
    flat = Buffers(pack(params, layout), layout)
    opt_state = fields["opt_state"]
    if jax.tree.structure(opt_state) != jax.tree.structure(target.opt_state):
        fields["opt_state"] = opt_state_to_flat(opt_state, target.tx, layout)
    fields["averages"] = (
        jax.tree.map(  # the target's structure first: Buffers where saved has a tree
            lambda t, saved: Buffers(pack(saved, t.layout), t.layout) if _is_buffers(t) else saved,
            target.averages,
            fields["averages"],
            is_leaf=_is_buffers,
        )
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
