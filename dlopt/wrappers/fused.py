"""Flat-buffer execution of a whole chain: one contiguous buffer per dtype (the speed path).

An update rule written leaf by leaf costs one kernel (or more) per leaf; a model with a
thousand small leaves (per-channel scales and biases) spends its optimizer step on launch and
bookkeeping overhead, not on arithmetic. `fused` packs the leaves into one 1-D buffer per
group (a group is a dtype, or a label from ``group_by`` and a dtype), keeps the chain's state
over those buffers, and runs the chain once per buffer: one fused elementwise pass, and
global-norm clipping as one reduction.

Two ways to use it:

* **tree in, tree out**: ``dlopt.fused(tx)`` is a drop-in `GradientTransformation`; the
  gradients are packed and the updates unpacked at the edges of every step.
* **params held flat**: `flatten` the params once into a `FlatParams` (a pytree); gradients of
  a loss written on ``flat.unflatten()`` come back flat, and ``fused(tx).update`` runs on the
  buffers with nothing re-packed per step (the fastest path).

What is exact: every elementwise rule (sgd, momentum, adagrad, rmsprop, adadelta, the Adam
family, adamax, lion, weight decay, ``clip``) and whole-tree reductions (global norm, up to
float summation order), with schedules, ``None`` leaves and mixed dtypes. What changes
meaning: anything that looks at the tree inside ``tx`` — a ``mask``/`partition` written for the
params tree, `clip_by_block_rms` and `adaptive_grad_clip` (per leaf) — sees the flat buffers
instead. Keep per-leaf transforms outside (``chain(clip_by_block_rms(1.0), fused(adam(1e-3)))``)
and express masks as labels: ``group_by`` gives each leaf a label, leaves with different labels
get separate buffers, and the inner ``tx`` sees the tree ``{label: {dtype: buffer}}``, so a
mask over labels is a prefix mask, e.g. ``mask={"decay": True, "no_decay": False}``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)

DEFAULT_LABEL = "params"
PACK_BELOW = 1 << 16  # elements; a larger leaf costs more to copy than to update on its own

GroupBy = chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree] | None


class Slot(NamedTuple):
    """Where one leaf lives: buffer ``(label, key)`` at ``[offset, offset + size)``.

    ``key`` is the dtype's name for packed leaves and ``"dtype:index"`` for a leaf of
    ``pack_below`` elements or more, which keeps a buffer of its own (no copy to pack it).
    """

    label: Hashable
    key: str
    shape: tuple[int, ...]
    offset: int
    size: int


class Layout(NamedTuple):
    """The static map between a pytree and its flat buffers (hashable, so jit can key on it)."""

    treedef: Any
    slots: tuple[Slot, ...]  # one per leaf, in tree order
    groups: tuple[tuple[Hashable, str, int], ...]  # (label, key, buffer size), sorted

    @property
    def num_leaves(self) -> int:
        return len(self.slots)


def _labels(tree: chex.ArrayTree, group_by: GroupBy, num_leaves: int) -> list[Hashable]:
    if group_by is None:
        return [DEFAULT_LABEL] * num_leaves
    labels = group_by(tree) if callable(group_by) else group_by
    try:
        return list(jax.tree.structure(tree).flatten_up_to(labels))
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"group_by must give one label per leaf of the params ({num_leaves} leaves), "
            f"got {labels!r}."
        ) from err


def layout_of(
    tree: chex.ArrayTree,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
    pad_to: int = 1,
) -> Layout:
    """The `Layout` of ``tree``: leaves grouped by (label, dtype), packed in tree order.

    Args:
        tree: a pytree of arrays (``None`` leaves are skipped and restored).
        group_by: None (one label), a pytree of hashable labels shaped like ``tree``, or a
            callable ``tree -> labels``. Labels must be mutually sortable (all str, say).
        pack_below: leaves of at least this many elements keep their own buffer (packing
            them would only add a copy); None packs every leaf.
        pad_to: every buffer's size is rounded up to a multiple of this (zero padding after
            the last leaf), so that it splits into equal shards over that many devices.

    Returns:
        The `Layout`.
    """
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
        raise ValueError(f"pad_to must be an int >= 1, got pad_to={pad_to!r}.")
    leaves, treedef = jax.tree.flatten(tree)
    labels = _labels(tree, group_by, len(leaves))
    sizes: dict[tuple[Hashable, str], int] = {}
    slots = []
    for index, (leaf, label) in enumerate(zip(leaves, labels, strict=True)):
        shape = tuple(int(d) for d in jnp.shape(leaf))
        key = jnp.dtype(jnp.result_type(leaf)).name
        size = int(np.prod(shape, dtype=np.int64))
        if pack_below is not None and size >= pack_below:
            key = f"{key}:{index:06d}"
        offset = sizes.get((label, key), 0)
        sizes[(label, key)] = offset + size
        slots.append(Slot(label, key, shape, offset, size))
    groups = tuple(
        (label, key, -(-size // pad_to) * pad_to) for (label, key), size in sorted(sizes.items())
    )
    return Layout(treedef, tuple(slots), groups)


def pack(tree: chex.ArrayTree, layout: Layout) -> dict[Hashable, dict[str, jax.Array]]:
    """The leaves of ``tree`` concatenated into ``{label: {dtype: 1-D buffer}}``.

    A group whose leaves in ``tree`` have different dtypes (e.g. float32 gradients for some
    bfloat16 parameters) is packed in the widest of them.
    """
    return _pack(tree, layout, keep_own_shapes=False)


def _is_own(key: str) -> bool:
    """Whether a buffer key names a leaf with a buffer of its own (``"dtype:index"``)."""
    return ":" in key


def _pack(
    tree: chex.ArrayTree, layout: Layout, *, keep_own_shapes: bool
) -> dict[Hashable, dict[str, jax.Array]]:
    """`pack`; with ``keep_own_shapes`` a leaf with a buffer of its own keeps its shape.

    Pytree-mode `fused` runs the inner chain on such leaves as they are: a raveled parameter
    read by weight decay (or a raveled state buffer) puts a bitcast between the donated input
    and the elementwise update, XLA then cannot update that buffer in place and adds a full
    copy of the leaf per step (HLO ``copy``, temp memory the size of the large leaves).
    """
    leaves = layout.treedef.flatten_up_to(tree)
    members: dict[tuple[Hashable, str], list[jax.Array]] = {}
    for leaf, slot in zip(leaves, layout.slots, strict=True):
        keep = keep_own_shapes and _is_own(slot.key)
        members.setdefault((slot.label, slot.key), []).append(
            jnp.asarray(leaf) if keep else jnp.ravel(leaf)
        )
    buffers: dict[Hashable, dict[str, jax.Array]] = {}
    for label, dtype, size in layout.groups:
        parts = members[(label, dtype)]
        if len({p.dtype for p in parts}) > 1:
            wide = max((p.dtype for p in parts), key=lambda d: jnp.finfo(d).bits)
            parts = [p.astype(wide) for p in parts]
        used = sum(p.size for p in parts)
        if size > used:  # padding (``pad_to``)
            parts = [*parts, jnp.zeros(size - used, parts[0].dtype)]
        packed = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        buffers.setdefault(label, {})[dtype] = packed
    return buffers


def _own_buffer_shapes(state: Any, layout: Layout, *, shaped: bool) -> Any:
    """``state`` with each own-buffer leaf's state (found at ``[..., label, "dtype:index"]``)
    reshaped to the leaf's shape (``shaped``) or to 1-D; a bitcast, nothing when it already is.

    So a state made in one mode (pytree or `FlatParams`) serves the other.
    """
    own = {(s.label, s.key): s for s in layout.slots if _is_own(s.key)}
    if not own:
        return state

    def reshape(path, x):
        if len(path) < 2 or not all(isinstance(k, jax.tree_util.DictKey) for k in path[-2:]):
            return x
        slot = own.get((path[-2].key, path[-1].key))
        if slot is None or jnp.size(x) != slot.size:
            return x
        return jnp.reshape(x, slot.shape if shaped else (slot.size,))

    return jax.tree_util.tree_map_with_path(reshape, state)


def unpack(
    buffers: dict[Hashable, dict[str, jax.Array]],
    layout: Layout,
    dtypes: list[Any] | None = None,
) -> chex.ArrayTree:
    """The inverse of `pack`: slices each buffer back into leaves (cast to ``dtypes``)."""
    pieces = {}
    for label, dtype, _ in layout.groups:
        cuts = [s.offset for s in layout.slots if (s.label, s.key) == (label, dtype)][1:]
        buf = buffers[label][dtype]
        pieces[(label, dtype)] = iter(jnp.split(buf, cuts) if cuts else [buf])
    leaves = []
    for slot, dtype in zip(layout.slots, dtypes or [None] * layout.num_leaves, strict=True):
        piece = next(pieces[(slot.label, slot.key)])
        if piece.size != slot.size:  # the last leaf of a padded buffer
            piece = piece[: slot.size]
        leaf = piece.reshape(slot.shape)
        leaves.append(leaf if dtype is None else leaf.astype(dtype))
    return layout.treedef.unflatten(leaves)


class FlatParams:
    """A pytree held as flat buffers ``{label: {dtype: 1-D array}}`` plus its static `Layout`.

    It is itself a pytree (the buffers are its leaves), so it jits, donates, checkpoints and
    differentiates like any tree: ``jax.grad(lambda fp: loss(fp.unflatten()))(flat)`` returns
    flat gradients, and `dlopt.apply_updates` adds flat updates to it buffer by buffer.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.fused import flatten
        >>> flat = flatten({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
        >>> flat.buffers["params"]["float32"].shape
        (6,)
        >>> flat.unflatten()["w"].shape
        (2, 2)
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: dict[Hashable, dict[str, jax.Array]], layout: Layout):
        self.buffers = buffers
        self.layout = layout

    def unflatten(self) -> chex.ArrayTree:
        """The pytree these buffers hold (one slice and reshape per leaf)."""
        return unpack(self.buffers, self.layout)

    def __repr__(self) -> str:
        sizes = {f"{label}/{dtype}": size for label, dtype, size in self.layout.groups}
        return f"FlatParams({self.layout.num_leaves} leaves in {sizes})"


def _flat_flatten_with_keys(flat: FlatParams):
    return ((jax.tree_util.GetAttrKey("buffers"), flat.buffers),), flat.layout


def _flat_unflatten(layout: Layout, children) -> FlatParams:
    return FlatParams(children[0], layout)


jax.tree_util.register_pytree_with_keys(
    FlatParams,
    _flat_flatten_with_keys,
    _flat_unflatten,
    lambda flat: ((flat.buffers,), flat.layout),
)


def flatten(
    tree: chex.ArrayTree,
    *,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
    pad_to: int = 1,
) -> FlatParams:
    """Packs ``tree`` into a `FlatParams` (one contiguous buffer per label and dtype).

    Args:
        tree: the parameter pytree.
        group_by: labels per leaf (tree or callable), as in `fused`.
        pack_below: leaves this large keep their own buffer, as in `fused`.
        pad_to: round every buffer up to a multiple of this many elements (zeros), e.g. the
            device count, so buffers shard evenly (ZeRO-1 over a mesh).

    Returns:
        A `FlatParams`; ``.unflatten()`` gives ``tree`` back.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.fused import flatten
        >>> flatten({"a": jnp.ones(3), "b": jnp.ones(2, jnp.bfloat16)}).layout.groups
        (('params', 'bfloat16', 2), ('params', 'float32', 3))
    """
    layout = layout_of(tree, group_by, pack_below, pad_to)
    return FlatParams(pack(tree, layout), layout)


class FusedState(NamedTuple):
    """The wrapped transform's state over the buffers ``{label: {key: buffer}}``.

    A leaf with a buffer of its own (key ``"dtype:index"``) has state of the leaf's shape when
    `fused` was initialised on a pytree and 1-D when on a `FlatParams`; either works in both
    modes (it is reshaped, a bitcast, to what the mode runs on).
    """

    inner: Any


def fused(
    tx: GradientTransformation,
    *,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
) -> GradientTransformationExtraArgs:
    """Runs ``tx`` over one contiguous buffer per dtype instead of one array per leaf.

    .. math::
        b = \\operatorname{concat}(\\operatorname{vec}(g_1), \\ldots, \\operatorname{vec}(g_n)),
        \\quad (u_b, s) = tx.update(b, s, \\operatorname{concat}(w_1, \\ldots, w_n)),
        \\quad u_i = u_b[o_i : o_i + |g_i|]

    per group of leaves of one label and dtype. For elementwise rules this is the same
    arithmetic as ``tx`` itself, done in one pass; the state (e.g. Adam's ``mu`` and ``nu``)
    is one buffer per group. ``update`` accepts a pytree (packed and unpacked every step) or a
    `FlatParams` (from `flatten`; used as is, the fast path). See the module docstring for
    which transforms keep their meaning inside ``fused``.

    Args:
        tx: any transform (usually an optimizer chain) of elementwise rules.
        group_by: None (one buffer per dtype), or per-leaf labels (a pytree shaped like the
            params, or a callable ``params -> labels``); the inner ``tx`` sees
            ``{label: {dtype: buffer}}``, so its masks can be prefix masks over the labels.
        pack_below: leaves of at least this many elements (default 65536) are not copied
            into the shared buffer but keep one of their own (key ``"dtype:index"``): for
            them packing costs more memory traffic than the per-leaf overhead it saves.
            With a pytree in, such a leaf is updated in its own shape (its state too), so
            the donated parameter and state are updated in place.
            None packs everything. `flatten` must use the same value.

    Returns:
        A `GradientTransformationExtraArgs` with state `FusedState`; extra keyword arguments
        of ``update`` (``value=``) reach ``tx``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.fused(dlopt.adam(1e-3))
        >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> state.inner[0].mu["params"]["float32"].shape
        (6,)
        >>> updates, state = tx.update(params, state, params)
        >>> updates["w"].shape
        (2, 2)

    References:
        The "flat parameter" layout of PyTorch's ``foreach``/``fused`` optimizers and FSDP.
    """
    inner = with_extra_args_support(tx)

    def init_fn(params):
        if isinstance(params, FlatParams):
            return FusedState(inner.init(params.buffers))
        layout = layout_of(params, group_by, pack_below)
        return FusedState(inner.init(_pack(params, layout, keep_own_shapes=True)))

    def update_fn(updates, state, params=None, **extra_args):
        if isinstance(updates, FlatParams):  # everything 1-D, nothing re-packed
            layout = updates.layout
            flat_params = params.buffers if isinstance(params, FlatParams) else None
            if flat_params is None and params is not None:
                flat_params = pack(params, layout)
            inner_state = _own_buffer_shapes(state.inner, layout, shaped=False)
            new, inner_state = inner.update(updates.buffers, inner_state, flat_params, **extra_args)
            return FlatParams(new, layout), FusedState(inner_state)
        if isinstance(params, FlatParams):  # tree gradients against flat params: 1-D
            layout, shaped, flat_params = params.layout, False, params.buffers
        else:  # tree in, tree out: own-buffer leaves keep their shapes (no copy, see _pack)
            layout = layout_of(updates if params is None else params, group_by, pack_below)
            shaped = True
            flat_params = None if params is None else _pack(params, layout, keep_own_shapes=True)
        new, inner_state = inner.update(
            _pack(updates, layout, keep_own_shapes=shaped),
            _own_buffer_shapes(state.inner, layout, shaped=shaped),
            flat_params,
            **extra_args,
        )
        dtypes = [jnp.result_type(u) for u in layout.treedef.flatten_up_to(updates)]
        return unpack(new, layout, dtypes), FusedState(inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)
