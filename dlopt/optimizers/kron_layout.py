"""PSGD Kron's layout: how each parameter becomes blocks, and which blocks stack together.

Per leaf, from its shape only (static, at trace time): a scanned leaf's leading axis is a
stack of layers; the rest is optionally merged (`merge_dims`, psgd-jax's heuristic) and
optionally split into blocks of ``block_size`` along the triangular axes longer than it,
every axis but those of size 1 zero-padded to ``block_size`` (diagonal ones to a multiple
of it), so a leaf becomes ``n_items`` blocks of one shape and most matrices share the
(block_size, block_size) one (psgd-jax's padding). Blocks of the same shape and factor
types (from any leaves) form one group, handled by one vmapped computation: a tree with
hundreds of leaves compiles a few dozen computations, one per distinct block.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def factor_types(
    shape: tuple[int, ...], max_size: int, min_ndim: int, memory_save_mode: str | None
) -> tuple[bool, ...]:
    """Per axis, whether its factor is diagonal: size 1, longer than ``max_size``, a leaf with
    fewer than ``min_ndim`` axes, or chosen by ``memory_save_mode`` ('one_diag': the largest
    axis, psgd-jax 0.2.9's pick among equals; 'all_diag': every axis)."""
    diag = [d == 1 or d > max_size or len(shape) < min_ndim for d in shape]
    if memory_save_mode == "all_diag":
        diag = [True] * len(shape)
    elif memory_save_mode == "one_diag" and shape:
        diag[int(np.argsort(shape)[::-1][0])] = True  # psgd-jax 0.2.9's choice among ties
    return tuple(diag)


def _merge_loss(d: float, target: int) -> float:
    """psgd-jax's cost of a merged axis of size ``d`` for a target size."""
    if d < target:
        small = math.log2(target / d)
        return small + (100 * math.log2(target / 8 / d) if d < target / 8 else 0.0)
    large = 10 * math.log2(d / target)
    return large + (1000 * math.log2(d / (8 * target)) if d > 8 * target else 0.0)


def _groupings(n: int):
    """Every split of axes 0..n-1 into runs of consecutive axes."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in _groupings(n - first):
            yield [list(range(first))] + [[a + first for a in g] for g in rest]


def merge_dims(
    shape: tuple[int, ...], target: int, diag: tuple[bool, ...]
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Runs of consecutive axes merged to sizes near ``target`` (the grouping of least
    `_merge_loss`); a merged axis is diagonal only if all its axes were."""
    if all(d == 1 for d in shape):
        return (1,), (True,)
    best, best_loss = None, math.inf
    for grouping in _groupings(len(shape)):
        loss = sum(_merge_loss(float(np.prod([shape[a] for a in g])), target) for g in grouping)
        if loss < best_loss:
            best, best_loss = grouping, loss
    merged = tuple(int(np.prod([shape[a] for a in g])) for g in best)
    return merged, tuple(all(diag[a] for a in g) for g in best)


class LeafPlan(NamedTuple):
    """How one leaf is laid out as blocks (all static)."""

    shape: tuple[int, ...]  # the leaf's shape
    layers: int  # a scanned leaf's leading size, else 1
    merged: tuple[int, ...]  # one layer's shape after merging (scalars: (1,))
    splits: tuple[int, ...]  # blocks per merged axis
    block: tuple[int, ...]  # the block shape
    diag: tuple[bool, ...]  # per block axis, a diagonal factor
    lead: tuple[int, ...]  # leading axes of the stored factors: (layers,)? + (blocks,)?

    @property
    def n_items(self) -> int:
        return self.layers * math.prod(self.splits)

    @property
    def whole(self) -> bool:
        """One unpadded block per layer: blocking is a reshape."""
        return not self.padded and all(n == 1 for n in self.splits)

    @property
    def padded(self) -> bool:
        return any(n * b != m for n, b, m in zip(self.splits, self.block, self.merged, strict=True))

    def factor_shapes(self) -> list[tuple[int, ...]]:
        return [(b,) if d else (b, b) for b, d in zip(self.block, self.diag, strict=True)]

    def valid(self) -> np.ndarray:
        """(n_items, ndim) int32: each block's unpadded length per axis."""
        per_axis = []
        for n, b, m in zip(self.splits, self.block, self.merged, strict=True):
            per_axis.append(np.minimum(b, m - b * np.arange(n)))
        grid = np.stack(np.meshgrid(*per_axis, indexing="ij"), -1).reshape(-1, len(self.block))
        return np.tile(grid, (self.layers, 1)).astype(np.int32)


def plan_leaf(shape, *, scanned, max_size, min_ndim, memory_save_mode, merge, target, block_size,
              partition) -> LeafPlan:  # fmt: skip
    shape = tuple(int(d) for d in shape)
    layers, inner = (shape[0], shape[1:]) if scanned and shape else (1, shape)
    inner = inner or (1,)
    diag = factor_types(inner, max_size, min_ndim, memory_save_mode)
    merged = merge_dims(inner, target, diag) if merge else (inner, diag)
    merged, diag = merged
    splits, block = (1,) * len(merged), merged
    if partition:  # long triangular axes split, every axis but size-1 ones padded to blocks
        splits = tuple(1 if d or m <= block_size else -(-m // block_size)
                       for m, d in zip(merged, diag, strict=True))  # fmt: skip
        block = tuple(
            1 if m == 1 else block_size if n > 1 or not d else -(-m // block_size) * block_size
            for m, n, d in zip(merged, splits, diag, strict=True)
        )
    lead = ((layers,) if scanned and shape else ()) + ((math.prod(splits),) if partition else ())
    return LeafPlan(shape, layers, merged, splits, block, diag, lead)


def to_blocks(x: jax.Array, plan: LeafPlan) -> jax.Array:
    """A leaf as ``(n_items, *block)``: layers, then blocks in row-major order."""
    x = x.reshape((plan.layers, *plan.merged))
    if plan.whole:
        return x
    pad = [(0, 0)] + [(0, n * b - m) for n, b, m in zip(plan.splits, plan.block, plan.merged,
                                                          strict=True)]  # fmt: skip
    x = jnp.pad(x, pad)
    k = len(plan.block)
    x = x.reshape(
        (plan.layers, *[v for nb in zip(plan.splits, plan.block, strict=True) for v in nb])
    )
    x = x.transpose((0, *range(1, 2 * k + 1, 2), *range(2, 2 * k + 2, 2)))
    return x.reshape((plan.n_items, *plan.block))


def from_blocks(x: jax.Array, plan: LeafPlan) -> jax.Array:
    """The inverse of `to_blocks`: padding dropped, the leaf's shape back."""
    if plan.whole:
        return x.reshape(plan.shape)
    k = len(plan.block)
    x = x.reshape((plan.layers, *plan.splits, *plan.block))
    x = x.transpose((0, *[v for i in range(k) for v in (1 + i, 1 + k + i)]))
    x = x.reshape((plan.layers, *[n * b for n, b in zip(plan.splits, plan.block, strict=True)]))
    x = x[(slice(None), *[slice(0, m) for m in plan.merged])]
    return x.reshape(plan.shape)


class Groups(NamedTuple):
    """Leaves grouped by (block shape, factor types, dtype): each group's blocks stack on one
    leading axis (leaf by leaf, in order) and are handled by one vmapped computation."""

    plans: list[LeafPlan]
    members: list[list[int]]  # per group, its leaf indices

    @classmethod
    def of(cls, plans: list[LeafPlan], dtypes: list) -> Groups:
        found: dict[tuple, list[int]] = {}
        for i, (plan, dtype) in enumerate(zip(plans, dtypes, strict=True)):
            found.setdefault((plan.block, plan.diag, jnp.dtype(dtype).name), []).append(i)
        return cls(plans, list(found.values()))

    def diag(self, k: int) -> tuple[bool, ...]:
        return self.plans[self.members[k][0]].diag

    def stack(self, per_leaf: list[jax.Array]) -> list[jax.Array]:
        """Per-leaf ``(n_items, ...)`` arrays concatenated per group."""
        return [_concat([per_leaf[i] for i in g]) for g in self.members]

    def blocks(self, per_leaf: list[jax.Array]) -> list[jax.Array]:
        """Per-leaf arrays (shaped like the leaves) as stacked blocks, one array per group."""
        return self.stack([to_blocks(x, p) for x, p in zip(per_leaf, self.plans, strict=True)])

    def leaves(self, per_group: list[jax.Array]) -> list[jax.Array]:
        """The inverse of `blocks`: one array per leaf, in its shape."""
        return [from_blocks(x, p) for x, p in zip(self.unstack(per_group), self.plans, strict=True)]

    def _split(self, members: list[int], x: jax.Array) -> list[jax.Array]:
        if len(members) == 1:
            return [x]
        parts, start = [], 0
        for i in members:
            parts.append(x[start : start + self.plans[i].n_items])
            start += self.plans[i].n_items
        return parts

    def unstack(self, per_group: list[jax.Array]) -> list[jax.Array]:
        """The inverse of `stack`."""
        out: list = [None] * len(self.plans)
        for g, x in zip(self.members, per_group, strict=True):
            for i, part in zip(g, self._split(g, x), strict=True):
                out[i] = part
        return out

    def stack_factors(self, per_leaf: list[tuple]) -> list[tuple]:
        """Per-leaf stored factors (leading axes ``plan.lead``) stacked per group."""
        flat = [
            tuple(q.reshape((p.n_items, *q.shape[len(p.lead) :])) for q in qs)
            for qs, p in zip(per_leaf, self.plans, strict=True)
        ]
        return [tuple(_concat(list(axis)) for axis in zip(*[flat[i] for i in g], strict=True))
                for g in self.members]  # fmt: skip

    def unstack_factors(self, per_group: list[tuple]) -> list[tuple]:
        """The inverse of `stack_factors`."""
        out: list = [None] * len(self.plans)
        for g, qs in zip(self.members, per_group, strict=True):
            pieces = [self._split(g, q) for q in qs]
            for m, i in enumerate(g):
                lead = self.plans[i].lead
                out[i] = tuple(piece[m].reshape(lead + piece[m].shape[1:]) for piece in pieces)
        return out

    def valid(self, k: int) -> np.ndarray | None:
        """Group ``k``'s unpadded lengths ``(n_blocks, ndim)``; None when nothing is padded."""
        plans = [self.plans[i] for i in self.members[k]]
        if not any(p.padded for p in plans):
            return None
        return np.concatenate([p.valid() for p in plans])


def _concat(xs: list[jax.Array]) -> jax.Array:
    return xs[0] if len(xs) == 1 else jnp.concatenate(xs)
