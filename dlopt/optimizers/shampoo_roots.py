"""Shampoo's statistics, preconditioner refresh and preconditioning on stacked block groups.

Each group (`shampoo_blocks`) holds ``[n, *block]`` gradient blocks. Per preconditioned
axis ``j`` its statistic is ``L_j <- w1 L_j + w2 G_(j) G_(j)^T`` (the Gram matrix of the
block unfolded along ``j``, one batched einsum per group), its preconditioner
``P_j = (L_j + eps I)^(-1/p)``, and the preconditioned block is ``G x_j P_j`` over the axes.
The refresh gathers every statistic of one size and exponent across groups into one stack
and runs one vmapped `dlopt.linalg.matrix_root.inverse_pth_root` per (size, exponent); under
``batch_axis_name`` each replica computes a slice of each stack and the slices are
all-gathered (the reference's split of the root work over a pmap).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlopt.linalg.matrix_root import inverse_pth_root
from dlopt.optimizers.shampoo_blocks import Plan


def init_statistics(layout: Plan, matrix_epsilon: float) -> tuple[tuple, tuple, tuple]:
    """(statistics ``eps I``, preconditioners ``I``, root errors 0), masked to valid sizes."""
    stats, preconds, errors = [], [], []
    for group in layout.groups:
        s, p, e = [], [], []
        for axis, valid in zip(group.axes, group.valid, strict=True):
            d = group.block[axis]
            eye = np.eye(d, dtype=np.float32)[None] * (np.arange(d) < valid[:, None])[:, None]
            s.append(jnp.asarray(matrix_epsilon * eye, jnp.float32))
            p.append(jnp.asarray(eye))
            e.append(jnp.zeros(len(valid), jnp.float32))
        stats.append(tuple(s))
        preconds.append(tuple(p))
        errors.append(tuple(e))
    return tuple(stats), tuple(preconds), tuple(errors)


def _gram(x: jax.Array, axis: int, precision: Any) -> jax.Array:
    """``[n, d, d]``: each block's Gram matrix along ``axis`` (the other axes contracted)."""
    x = jnp.moveaxis(x, axis + 1, 1)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    return jnp.einsum("nik,njk->nij", x, x, precision=precision)


def update_statistics(stats, blocks, layout: Plan, w1: float, w2: float, precision) -> tuple:
    """``w1 L + w2 G G^T`` for every statistic of every group."""
    return tuple(
        tuple(
            w1 * s + w2 * _gram(x, axis, precision)
            for s, axis in zip(group_stats, group.axes, strict=True)
        )
        for group_stats, x, group in zip(stats, blocks, layout.groups, strict=True)
    )


def precondition(blocks, preconditioners, layout: Plan) -> list[jax.Array]:
    """Each block contracted with its preconditioner along each axis, in axis order (an axis
    without one is moved to the end), as the reference's ``preconditioned_grad``."""
    out = []
    for x, preconds, group in zip(blocks, preconditioners, layout.groups, strict=True):
        by_axis = dict(zip(group.axes, preconds, strict=True))
        for axis in range(len(group.block)):
            if axis in by_axis:
                x = jnp.einsum("na...,nab->n...b", x, by_axis[axis])
            else:
                x = jnp.moveaxis(x, 1, -1)
        out.append(x)
    return out


def _sharded_roots(fn, x: jax.Array, valid: jax.Array, axis_name: str):
    """``fn(x, valid)`` with the stack split over the replicas of ``axis_name``."""
    replicas = lax.axis_size(axis_name)
    n, d = x.shape[0], x.shape[-1]
    pad = -n % replicas
    x = jnp.concatenate([x, jnp.broadcast_to(jnp.eye(d, dtype=x.dtype), (pad, d, d))])
    valid = jnp.concatenate([valid, jnp.full((pad,), d, valid.dtype)])
    share = (n + pad) // replicas
    start = lax.axis_index(axis_name) * share
    roots, errors = fn(
        lax.dynamic_slice_in_dim(x, start, share), lax.dynamic_slice_in_dim(valid, start, share)
    )
    roots = lax.all_gather(roots, axis_name, tiled=True)[:n]
    return roots, lax.all_gather(errors, axis_name, tiled=True)[:n]


def refresh(
    stats,
    old_preconds,
    layout: Plan,
    *,
    failure_threshold: float,
    axis_name: str | None,
    **root_kwargs: Any,
) -> tuple[tuple, tuple]:
    """New (preconditioners, root errors); a root whose error is NaN or >= the threshold keeps
    the old preconditioner (the error is still reported)."""
    stacks: dict[tuple[int, int], list] = {}
    for g, group in enumerate(layout.groups):
        for i, axis in enumerate(group.axes):
            key = (group.block[axis], group.exponent)
            stacks.setdefault(key, []).append((g, i))
    new = [[None] * len(group.axes) for group in layout.groups]
    errs = [[None] * len(group.axes) for group in layout.groups]
    for (_, exponent), members in stacks.items():
        x = jnp.concatenate([stats[g][i] for g, i in members])
        valid = np.concatenate([layout.groups[g].valid[i] for g, i in members])
        valid = lax.optimization_barrier(jnp.asarray(valid))  # no constant-folding of masks
        root = functools.partial(inverse_pth_root, p=exponent, **root_kwargs)
        fn = jax.vmap(lambda m, v, root=root: root(m, valid=v))
        if axis_name is None:
            roots, errors = fn(x, valid)
        else:
            roots, errors = _sharded_roots(fn, x, valid, axis_name)
        start = 0
        for g, i in members:
            n = stats[g][i].shape[0]
            root_g, error_g = roots[start : start + n], errors[start : start + n]
            failed = jnp.logical_or(jnp.isnan(error_g), error_g >= failure_threshold)
            new[g][i] = jnp.where(failed[:, None, None], old_preconds[g][i], root_g)
            errs[g][i] = error_g
            start += n
    return tuple(map(tuple, new)), tuple(map(tuple, errs))
