"""Shampoo's blocking: every leaf cut into blocks, blocks of one shape stacked into a group.

A leaf of shape ``s`` is first reshaped to ``merge_small_dims(s)`` (when
``best_effort_shape_interpretation``), then each axis longer than ``block_size`` is cut into
``ceil(d / block_size)`` blocks of ``block_size`` (the last one zero-padded: its valid size is
the remainder). All blocks of all leaves that share a block shape form one *group*: a stacked
``[n, *block_shape]`` array, so the statistics, the preconditioning and the inverse roots of a
group are one batched computation instead of one traced copy per block (the compile time of
the step grows with the number of distinct block shapes, not with the number of blocks).

`plan` holds the static (shape-only) bookkeeping; `to_groups` and `from_groups` move a list
of leaves into the stacked groups and back with one pad/reshape/transpose per leaf (a leaf
sharded on an explicit mesh is gathered first and its result given the sharding back).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core.tree import unshard


def merge_small_dims(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    """Consecutive axes merged while their product stays <= ``max_dim`` (the reference's rule):
    ``(1, 2, 512, 1, 2048, 1, 3, 4) -> (1024, 2048, 12)`` for ``max_dim=1024``."""
    if shape and all(d == 1 for d in shape):
        return (1,)
    merged, product = [], 1
    for d in shape:
        if product * d <= max_dim:
            product *= d
        else:
            if product > 1:
                merged.append(product)
            product = d
    if product > 1:
        merged.append(product)
    return tuple(merged)


class LeafPlan(NamedTuple):
    """How one leaf is blocked: ``shape`` (merged), per-axis block counts and block sizes."""

    shape: tuple[int, ...]
    counts: tuple[int, ...]
    block: tuple[int, ...]
    group: int  # index of its group, -1 when the leaf is not preconditioned
    offset: int  # first row of its blocks in the group's stack


class GroupPlan(NamedTuple):
    """One group: the block shape, its preconditioned axes, the root's exponent and, per
    preconditioned axis, the valid size of each stacked block (numpy, static)."""

    block: tuple[int, ...]
    axes: tuple[int, ...]
    exponent: int
    valid: tuple[np.ndarray, ...]


class Plan(NamedTuple):
    leaves: tuple[LeafPlan, ...]
    groups: tuple[GroupPlan, ...]


def _block_counts(shape: tuple[int, ...], block_size: int) -> tuple[tuple, tuple]:
    counts = tuple(math.ceil(d / block_size) if 0 < block_size < d else 1 for d in shape)
    block = tuple(block_size if n > 1 else d for d, n in zip(shape, counts, strict=True))
    return counts, block


def _valid_sizes(shape, counts, block) -> np.ndarray:
    """``[n_blocks, rank]``: each block's valid size along each axis (row-major block order)."""
    per_axis = [
        [b] * (n - 1) + [d - (n - 1) * b] for d, n, b in zip(shape, counts, block, strict=True)
    ]
    return np.array(list(itertools.product(*per_axis)), np.int32).reshape(-1, len(shape))


def plan(
    shapes: list[tuple[int, ...]],
    *,
    block_size: int,
    merge_dims: int | None,
    skip: list[bool],
    input_only: bool,
    exponent_override: int,
) -> Plan:
    """The static plan for leaves of ``shapes``; ``skip[i]``: leaf ``i`` gets no statistics.

    ``input_only`` leaves the last axis of rank >= 2 blocks without a preconditioner (the
    reference's ``PreconditionerType.INPUT``); the exponent is ``2 * #preconditioned axes``
    unless ``exponent_override`` is nonzero.
    """
    leaves, keys, valid_rows, counts_in = [], {}, [], []
    for shape, skipped in zip(shapes, skip, strict=True):
        merged = merge_small_dims(shape, merge_dims) if merge_dims else tuple(shape)
        counts, block = _block_counts(merged, block_size)
        if skipped or not merged:
            leaves.append(LeafPlan(merged, counts, block, -1, 0))
            continue
        group = keys.setdefault(block, len(keys))
        if group == len(valid_rows):
            valid_rows.append([])
            counts_in.append(0)
        leaves.append(LeafPlan(merged, counts, block, group, counts_in[group]))
        valid_rows[group].append(_valid_sizes(merged, counts, block))
        counts_in[group] += math.prod(counts)
    groups = []
    for block, index in keys.items():
        rank = len(block)
        axes = tuple(range(rank - 1)) if input_only and rank > 1 else tuple(range(rank))
        valid = np.concatenate(valid_rows[index])
        exponent = exponent_override or 2 * len(axes)
        groups.append(GroupPlan(block, axes, exponent, tuple(valid[:, a] for a in axes)))
    return Plan(tuple(leaves), tuple(groups))


def _to_blocks(x: jax.Array, leaf: LeafPlan) -> jax.Array:
    """``x`` (any shape of the leaf's size) as ``[n_blocks, *block]``, zero-padded."""
    x = x.reshape(leaf.shape)
    padded = [n * b for n, b in zip(leaf.counts, leaf.block, strict=True)]
    x = jnp.pad(x, [(0, p - d) for p, d in zip(padded, leaf.shape, strict=True)])
    rank = len(leaf.shape)
    x = x.reshape([v for nb in zip(leaf.counts, leaf.block, strict=True) for v in nb])
    x = x.transpose([*range(0, 2 * rank, 2), *range(1, 2 * rank, 2)])
    return x.reshape(-1, *leaf.block)


def _from_blocks(x: jax.Array, leaf: LeafPlan, shape: tuple[int, ...]) -> jax.Array:
    rank = len(leaf.shape)
    x = x.reshape(*leaf.counts, *leaf.block)
    x = x.transpose([v for i in range(rank) for v in (i, rank + i)])
    x = x.reshape([n * b for n, b in zip(leaf.counts, leaf.block, strict=True)])
    return x[tuple(slice(0, d) for d in leaf.shape)].reshape(shape)


def to_groups(xs: list[jax.Array], layout: Plan) -> list[jax.Array]:
    """The preconditioned leaves of ``xs`` as one stacked ``[n, *block]`` array per group."""
    parts: list[list[jax.Array]] = [[] for _ in layout.groups]
    for x, leaf in zip(xs, layout.leaves, strict=True):
        if leaf.group >= 0:
            parts[leaf.group].append(_to_blocks(unshard(x)[0], leaf))
    return [p[0] if len(p) == 1 else jnp.concatenate(p) for p in parts]


def from_groups(groups: list[jax.Array], layout: Plan, xs: list[jax.Array]) -> list[jax.Array]:
    """The inverse of `to_groups`: each preconditioned leaf read back from its group (leaves
    without a group are taken from ``xs``)."""
    out = []
    for x, leaf in zip(xs, layout.leaves, strict=True):
        if leaf.group < 0:
            out.append(x)
            continue
        n = math.prod(leaf.counts)
        stacked = groups[leaf.group][leaf.offset : leaf.offset + n]
        out.append(unshard(x)[1](_from_blocks(stacked, leaf, x.shape)))
    return out
