"""The flat layout: a params tree held as a few contiguous 1-D buffers, and the map back.

A `Layout` is the static map between a pytree and its buffers: for each leaf its buffer
``(label, key)``, offset, shape and dtype. `Buffers` is the buffers as a pytree
``{label: {key: 1-D array}}`` that carries its `Layout` as static data, so it jits, donates,
differentiates and checkpoints like any tree, and an elementwise rule ``jax.tree.map``-ed
over it runs once per buffer (one fused pass) instead of once per leaf.

Because a `Buffers` knows every leaf's path, shape and dtype, what looks at the tree keeps
its meaning over it: a mask or a `dlopt.partition` label function is evaluated on the
params tree (`Layout.abstract_params`, `jax.ShapeDtypeStruct` leaves with the real paths)
and mapped onto the buffers (`Buffers.translate`), exact when every buffer holds leaves with
one value (the layout planner, `dlopt.wrappers.fused.plan_layout`, regroups them so); a
transform that reads shapes runs leaf by leaf through the `dlopt.core.per_leaf` marker.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_LABEL = "params"
PACK_BELOW = 1 << 16  # elements; a larger leaf costs more to copy than to update on its own

GroupBy = chex.ArrayTree | Callable[[chex.ArrayTree], chex.ArrayTree] | None


class Slot(NamedTuple):
    """Where one leaf lives: buffer ``(label, key)`` at ``[offset, offset + size)``.

    ``key`` is the dtype's name for packed leaves (``"dtype~n"`` for the n-th part of a
    group split by mask values) and ``"dtype:index"`` for a leaf of ``pack_below`` elements
    or more, which keeps a buffer of its own (no copy to pack it).
    """

    label: Hashable
    key: str
    shape: tuple[int, ...]
    offset: int
    size: int
    dtype: str = "float32"


class Layout(NamedTuple):
    """The static map between a pytree and its flat buffers (hashable, so jit can key on it)."""

    treedef: Any
    slots: tuple[Slot, ...]  # one per leaf, in tree order
    groups: tuple[tuple[Hashable, str, int], ...]  # (label, key, buffer size), sorted

    @property
    def num_leaves(self) -> int:
        return len(self.slots)

    def abstract_params(self) -> chex.ArrayTree:
        """The params tree with `jax.ShapeDtypeStruct` leaves (paths, shapes and dtypes)."""
        return self.treedef.unflatten(
            [jax.ShapeDtypeStruct(s.shape, jnp.dtype(s.dtype)) for s in self.slots]
        )


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
    parts: list[Hashable] | None = None,
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
        parts: one hashable per leaf (the planner's mask values); leaves with different
            parts never share a buffer.

    Returns:
        The `Layout`.
    """
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
        raise ValueError(f"pad_to must be an int >= 1, got pad_to={pad_to!r}.")
    leaves, treedef = jax.tree.flatten(tree)
    labels = _labels(tree, group_by, len(leaves))
    parts = [None] * len(leaves) if parts is None else parts
    part_index: dict[Hashable, int] = {}
    sizes: dict[tuple[Hashable, str], int] = {}
    slots = []
    for index, (leaf, label, part) in enumerate(zip(leaves, labels, parts, strict=True)):
        shape = tuple(int(d) for d in jnp.shape(leaf))
        dtype = jnp.dtype(jnp.result_type(leaf)).name
        size = int(np.prod(shape, dtype=np.int64))
        n = part_index.setdefault(part, len(part_index))
        key = dtype if n == 0 else f"{dtype}~{n}"
        if pack_below is not None and size >= pack_below:
            key = f"{dtype}:{index:06d}"
        offset = sizes.get((label, key), 0)
        sizes[(label, key)] = offset + size
        slots.append(Slot(label, key, shape, offset, size, dtype))
    groups = tuple(
        (label, key, -(-size // pad_to) * pad_to) for (label, key), size in sorted(sizes.items())
    )
    return Layout(treedef, tuple(slots), groups)


def is_own(key: str) -> bool:
    """Whether a buffer key names a leaf with a buffer of its own (``"dtype:index"``)."""
    return ":" in key


def _is_empty(x: Any) -> bool:
    """A `dlopt.MaskedNode` (or any node without leaves) standing for a masked-out buffer."""
    return not isinstance(x, jax.Array | np.ndarray) and not jax.tree.leaves(x)


def pack(
    tree: chex.ArrayTree, layout: Layout, *, keep_own_shapes: bool = False
) -> dict[Hashable, dict[str, Any]]:
    """The leaves of ``tree`` concatenated into ``{label: {key: 1-D buffer}}``.

    A group whose leaves in ``tree`` have different dtypes (e.g. float32 gradients for some
    bfloat16 parameters) is packed in the widest of them. A group whose leaves are all
    masked out (`dlopt.MaskedNode`) becomes that node. With ``keep_own_shapes`` a leaf with a
    buffer of its own keeps its shape: `dlopt.fused` on a pytree then updates a donated large
    leaf in place (a raveled one would put a bitcast before the update and cost a copy).
    """
    leaves = layout.treedef.flatten_up_to(tree)
    members: dict[tuple[Hashable, str], list[Any]] = {}
    for leaf, slot in zip(leaves, layout.slots, strict=True):
        members.setdefault((slot.label, slot.key), []).append(leaf)
    buffers: dict[Hashable, dict[str, Any]] = {}
    for label, key, size in layout.groups:
        parts = members[(label, key)]
        empty = [_is_empty(p) for p in parts]
        if all(empty):
            buffers.setdefault(label, {})[key] = parts[0]
            continue
        if any(empty):
            raise ValueError(
                f"buffer {label}/{key} holds leaves that a mask selects and leaves it leaves "
                "out; plan the layout with TrainState.create or dlopt.fused (or flat=False)."
            )
        keep = keep_own_shapes and is_own(key)
        parts = [jnp.asarray(p) if keep else jnp.ravel(p) for p in parts]
        if len({p.dtype for p in parts}) > 1:
            wide = max((p.dtype for p in parts), key=lambda d: jnp.finfo(d).bits)
            parts = [p.astype(wide) for p in parts]
        used = sum(p.size for p in parts)
        if size > used:  # padding (``pad_to``)
            parts = [*parts, jnp.zeros(size - used, parts[0].dtype)]
        buffers.setdefault(label, {})[key] = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
    return buffers


def unpack(
    buffers: dict[Hashable, dict[str, Any]], layout: Layout, dtypes: list[Any] | None = None
) -> chex.ArrayTree:
    """The inverse of `pack`: slices each buffer back into leaves (cast to ``dtypes``); the
    leaves of a masked-out buffer are that buffer's `dlopt.MaskedNode`. Leading axes of the
    buffers (a replicated state's device axis) lead every leaf."""
    # One split per buffer, not one slice per leaf: the gradient of a split is one
    # concatenate, while each slice's is a pad to the whole buffer (O(leaves x size) adds).
    pieces: dict[tuple[Hashable, str], list[Any]] = {}
    for label, key, _ in layout.groups:
        buf = buffers[label][key]
        slots = [s for s in layout.slots if (s.label, s.key) == (label, key)]
        rank = len(slots[0].shape)
        if _is_empty(buf):  # masked out: every leaf is the buffer's MaskedNode
            pieces[(label, key)] = [buf] * len(slots)
        elif is_own(key) and tuple(buf.shape[jnp.ndim(buf) - rank :]) == slots[0].shape:
            pieces[(label, key)] = [buf]  # kept in its own shape (`pack` with keep_own_shapes)
        else:
            lead = tuple(buf.shape[:-1])
            cuts = [s.offset for s in slots[1:]] + [slots[-1].offset + slots[-1].size]
            parts = jnp.split(buf, cuts, axis=-1)[: len(slots)]  # the last part is padding
            pieces[(label, key)] = [
                jnp.reshape(part, lead + s.shape) for part, s in zip(parts, slots, strict=True)
            ]
    order = {group: iter(leaves) for group, leaves in pieces.items()}
    leaves = [next(order[(slot.label, slot.key)]) for slot in layout.slots]
    if dtypes is not None:
        leaves = [
            x if d is None or _is_empty(x) else x.astype(d)
            for x, d in zip(leaves, dtypes, strict=True)
        ]
    return layout.treedef.unflatten(leaves)


# -- the mask translation and the planner's probe ----------------------------------------------

_PROBE: list[Any] = []  # the innermost active `Probe` (see `probing`)


class Probe:
    """What a planning run saw: per-leaf mask/label values and whether a per-leaf part ran."""

    def __init__(self) -> None:
        self.values: list[tuple[Hashable, ...]] = []
        self.per_leaf = False


class probing:
    """``with probing() as probe:`` records, for the planner, every per-leaf value vector a
    mask translation computes; inside, a buffer with mixed values is not an error."""

    def __enter__(self) -> Probe:
        _PROBE.append(Probe())
        return _PROBE[-1]

    def __exit__(self, *exc: Any) -> None:
        _PROBE.pop()


def active_probe() -> Probe | None:
    return _PROBE[-1] if _PROBE else None


def _hashable(value: Any) -> Hashable:
    if isinstance(value, jax.core.Tracer):
        raise ValueError(
            "a mask or label in the flat layout must not depend on parameter values (got a "
            "traced value); compute it from paths and shapes, or use flat=False."
        )
    return value.item() if hasattr(value, "item") and np.ndim(value) == 0 else value


def _callable_mask(mask: Any) -> bool:
    leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return bool(leaves) and all(leaves)


class Buffers:
    """A pytree held as flat buffers ``{label: {key: 1-D array}}`` plus its static `Layout`.

    Its leaves are the buffers, so it jits, donates, checkpoints and differentiates like any
    tree: ``jax.grad(lambda b: loss(b.unflatten()))(buffers)`` returns `Buffers` gradients,
    and every elementwise transform maps over the buffers unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.core.flat import flatten
        >>> flat = flatten({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)})
        >>> flat["params"]["float32"].shape
        (6,)
        >>> flat.unflatten()["w"].shape
        (2, 2)
    """

    __slots__ = ("buffers", "layout")

    def __init__(self, buffers: dict[Hashable, dict[str, Any]], layout: Layout):
        self.buffers = buffers
        self.layout = layout

    def __getitem__(self, label: Hashable) -> dict[str, Any]:
        return self.buffers[label]

    def unflatten(self, dtypes: list[Any] | None = None) -> chex.ArrayTree:
        """The pytree these buffers hold (one slice and reshape per leaf)."""
        return unpack(self.buffers, self.layout, dtypes)

    def like(self, tree: chex.ArrayTree) -> Buffers:
        """``tree`` (shaped like the params) packed into this layout, in these buffers'
        dtypes (masked-out leaves stay masked out)."""
        packed = pack(tree, self.layout)
        cast = jax.tree.map(lambda new, old: new.astype(jnp.result_type(old)), packed, self.buffers)
        return Buffers(cast, self.layout)

    def translate(self, mask: Any) -> Buffers:
        """A mask, labels or a callable of them, written for the params tree, as one value
        per buffer (a `Buffers` of values): the callable sees `Layout.abstract_params`.

        A mask written for the buffers themselves (a prefix of ``{label: ...}``, for labels
        from ``group_by``) is used as it is. Raises ValueError when a buffer mixes leaves
        with different values (outside the planner's probe).
        """
        if isinstance(mask, Buffers):
            return mask
        layout = self.layout
        params = layout.abstract_params()
        value = mask(params) if _callable_mask(mask) else mask
        if isinstance(value, Buffers):
            return value
        try:
            full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), value, params)
            per_leaf = [_hashable(v) for v in layout.treedef.flatten_up_to(full)]
        except (ValueError, TypeError):
            try:  # a mask over the buffers' labels (group_by)
                jax.tree.map(lambda m, sub: m, value, self.buffers)
            except (ValueError, TypeError) as err:
                raise ValueError(
                    "a mask or labels must be shaped like the params (or a prefix of them), "
                    f"got {value!r}."
                ) from err
            return Buffers(
                jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), value, self.buffers),
                layout,
            )
        probe = active_probe()
        if probe is not None:
            probe.values.append(tuple(per_leaf))
        by_buffer: dict[tuple[Hashable, str], list[Hashable]] = {}
        for slot, v in zip(layout.slots, per_leaf, strict=True):
            by_buffer.setdefault((slot.label, slot.key), []).append(v)
        out: dict[Hashable, dict[str, Any]] = {}
        for (label, key), values in by_buffer.items():
            if probe is None and any(v != values[0] for v in values):
                raise ValueError(
                    f"buffer {label}/{key} holds leaves with different mask values {values}; "
                    "build the layout with TrainState.create or dlopt.fused, which plan "
                    "one buffer per mask value (or use flat=False)."
                )
            out.setdefault(label, {})[key] = values[0]
        return Buffers(out, layout)

    def __repr__(self) -> str:
        sizes = {f"{label}/{key}": size for label, key, size in self.layout.groups}
        return f"Buffers({self.layout.num_leaves} leaves in {sizes})"


jax.tree_util.register_pytree_with_keys(
    Buffers,
    lambda b: (((jax.tree_util.GetAttrKey("buffers"), b.buffers),), b.layout),
    lambda layout, children: Buffers(children[0], layout),
    lambda b: ((b.buffers,), b.layout),
)


def flatten(
    tree: chex.ArrayTree,
    *,
    group_by: GroupBy = None,
    pack_below: int | None = PACK_BELOW,
    pad_to: int = 1,
) -> Buffers:
    """Packs ``tree`` into `Buffers` (one contiguous buffer per label and dtype).

    The layout is not planned for any transform: use `dlopt.wrappers.fused.plan_layout` for
    one whose masks must map exactly.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.core.flat import flatten
        >>> flatten({"a": jnp.ones(3), "b": jnp.ones(2, jnp.bfloat16)}).layout.groups
        (('params', 'bfloat16', 2), ('params', 'float32', 3))
    """
    layout = layout_of(tree, group_by, pack_below, pad_to)
    return Buffers(pack(tree, layout), layout)
