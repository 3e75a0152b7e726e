"""PSGD Kron's step on grouped blocks: fit the factors, precondition (psgd-jax's order).

Each function takes the stacked blocks of every group (`kron_layout.Groups`) and maps the
per-block math of `dlopt.linalg.kron_factors` over each group's leading axis, so the traced
program holds one copy per distinct block shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import validation
from dlopt.linalg import kron_factors as factors
from dlopt.optimizers.kron_layout import Groups

BALANCE_PROBABILITY = 0.01  # psgd-jax rebalances the factors on ~1% of the updates


def precond_update_prob_schedule(
    max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001, flat_start: int = 500
) -> Callable[[chex.Array], chex.Array]:
    """psgd-jax's annealed preconditioner-update probability: ``max_prob`` for ``flat_start``
    steps, then :math:`\\max(p_{\\max} e^{-\\lambda (t - t_0)}, p_{\\min})` (defaults: 1.0
    until step 500, 0.03 from about step 4000).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> schedule = dlopt.precond_update_prob_schedule()
        >>> [round(float(schedule(jnp.asarray(t))), 3) for t in (1, 500, 1500, 5000)]
        [1.0, 1.0, 0.368, 0.03]
    """
    validation.check_in_range("max_prob", max_prob, 0.0, 1.0, low_closed=False, high_closed=True)
    validation.check_in_range("min_prob", min_prob, 0.0, max_prob, low_closed=False,
                              high_closed=True)  # fmt: skip
    validation.check_non_negative("decay", decay)
    validation.check_int("flat_start", flat_start, 0)

    def schedule(count: chex.Array) -> chex.Array:
        t = jnp.asarray(count).astype(jnp.float32) - jnp.float32(flat_start)
        p = jnp.float32(max_prob) * jnp.exp(-jnp.float32(decay) * t)
        return jnp.minimum(jnp.maximum(p, jnp.float32(min_prob)), jnp.float32(max_prob))

    return schedule


class Mapper(NamedTuple):
    """How a per-block function runs over a group: ``jax.vmap``, or ``lax.map`` in batches."""

    lax_map: bool
    batch_size: int

    def __call__(self, fn, *args):
        if self.lax_map:
            return jax.lax.map(lambda xs: fn(*xs), args, batch_size=self.batch_size)
        return jax.vmap(fn)(*args)


def normals(keys: jax.Array, like: list[jax.Array]) -> list[jax.Array]:
    """``normal(keys[i], like[i].shape)`` per leaf, drawn by one vmapped call per distinct
    (shape, dtype): the same numbers as leaf-by-leaf draws, fewer computations to compile."""
    by_kind: dict[tuple, list[int]] = {}
    for i, x in enumerate(like):
        by_kind.setdefault((x.shape, x.dtype), []).append(i)
    out: list = [None] * len(like)
    for (shape, dtype), members in by_kind.items():
        draws = jax.vmap(lambda k, s=shape, d=dtype: jax.random.normal(k, s, d))(
            keys[jnp.asarray(members)]
        )
        for j, i in enumerate(members):
            out[i] = draws[j]
    return out


def _padding_mask(valid: jax.Array, block: tuple[int, ...]) -> jax.Array:
    """(n_blocks, *block) bools: inside each block's unpadded lengths ``valid``."""
    mask = None
    for axis, size in enumerate(block):
        shape = [1] * (len(block) + 1)
        shape[axis + 1] = size
        inside = jnp.arange(size).reshape(shape) < valid[:, axis].reshape([-1] + [1] * len(block))
        mask = inside if mask is None else mask & inside
    return mask


def _block_probes(key, inputs, groups: Groups, eps):
    """Damped inputs and probes as stacked blocks, one key per block (one vmapped draw per
    group), the padding left at zero; the damping scale is each leaf's mean |h|."""
    counts = [p.n_items for p in groups.plans]
    starts = np.cumsum([0, *counts])
    keys = jax.random.split(key, int(starts[-1]))
    scales = groups.stack([jnp.broadcast_to(eps * jnp.mean(jnp.abs(h)), (n,)).astype(h.dtype)
                           for h, n in zip(inputs, counts, strict=True)])  # fmt: skip
    damped, probes = [], []
    for k, (members, h) in enumerate(zip(groups.members, groups.blocks(inputs), strict=True)):
        index = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in members])
        v = jax.vmap(lambda kk, x=h: jax.random.normal(kk, x.shape[1:], x.dtype))(keys[index])
        valid = groups.valid(k)
        if valid is not None:
            v = jnp.where(_padding_mask(jnp.asarray(valid), h.shape[1:]), v, jnp.zeros_like(v))
        damped.append(h + scales[k].reshape((-1,) + (1,) * (h.ndim - 1)) * v)
        probes.append(v)
    return damped, probes


def balance(qs_groups: list[tuple], groups: Groups, mapper: Mapper) -> list[tuple]:
    """Every block's factors rescaled to a common max-norm (padding left out)."""
    out = []
    for k, qs in enumerate(qs_groups):
        valid = groups.valid(k)
        if valid is None:
            out.append(mapper(lambda q: tuple(factors.balance(q)), qs))
        else:
            out.append(mapper(lambda q, v: tuple(factors.balance(q, v)), qs, jnp.asarray(valid)))
    return out


def _fit_block(q, h, v, *, diag, lr):
    f = h.dtype
    qf = [x.astype(f) for x in q]
    probe = factors.probe_solve(qf, v, diag)
    new = factors.update_factors(qf, h, probe, diag, jnp.asarray(lr, f))
    return tuple(x.astype(y.dtype) for x, y in zip(new, q, strict=True))


def fit(qs_groups: list[tuple], inputs: list[jax.Array], key: jax.Array, groups: Groups,
        mapper: Mapper, lr: float, per_block: bool = False) -> list[tuple]:  # fmt: skip
    """psgd-jax's ``update_preconditioner``: balance on ~1% of the calls, draw one probe
    per leaf (per block with ``per_block``), damp the inputs with it, one fitting step of
    every factor."""
    key, subkey = jax.random.split(key)
    do_balance = jax.random.uniform(subkey) < BALANCE_PROBABILITY
    qs_groups = jax.lax.cond(
        do_balance, lambda q: balance(q, groups, mapper), lambda q: q, qs_groups
    )
    key, subkey = jax.random.split(key)
    eps = jnp.sqrt(jnp.finfo(jnp.float32).eps)
    if per_block:
        damped, probes = _block_probes(subkey, inputs, groups, eps)
    else:
        probes = normals(jax.random.split(subkey, len(inputs)), inputs)
        damped = [h + (eps * jnp.mean(jnp.abs(h))).astype(h.dtype) * v
                  for h, v in zip(inputs, probes, strict=True)]  # fmt: skip
        damped, probes = groups.blocks(damped), groups.blocks(probes)
    stacked = zip(qs_groups, damped, probes, strict=True)
    return [
        mapper(functools.partial(_fit_block, diag=groups.diag(k), lr=lr), qs, h, v)
        for k, (qs, h, v) in enumerate(stacked)
    ]


def precondition(qs_groups: list[tuple], moms: list[jax.Array], groups: Groups,
                 mapper: Mapper) -> list[jax.Array]:  # fmt: skip
    """:math:`P \\hat m` per leaf, from the stacked blocks of each group."""

    def one(q, x, diag):
        return factors.precondition([a.astype(x.dtype) for a in q], x, diag)

    stacked = zip(qs_groups, groups.blocks(moms), strict=True)
    out = [mapper(functools.partial(one, diag=groups.diag(k)), qs, x)
           for k, (qs, x) in enumerate(stacked)]  # fmt: skip
    return groups.leaves(out)
