"""Edits on ONE padded id sequence: the building blocks of ``dlopt.data.text``.

A sequence is ``ids`` (integer, shape ``(T,)``) with its true ``length``; positions
``>= length`` hold ``pad_id``. Every function here is jit-able with a traced ``length`` and
``jax.vmap``-able; ``T`` and the count rule's hyperparameters are static. Randomness comes
in as U(0, 1) draws: every augmenter takes the same ``draws(key, T)`` (one threefry call,
the costly part of compiling, shared by all) and derives each choice from one of its rows.

- ``count_table``: nlpaug's rule for how many positions an augmenter changes, tabulated for
  every size ``0..T`` on the host, so a traced length indexes an exact integer.
- ``choose``: a uniform random subset of candidates (per group: one group per word for the
  character-level augmenters), and the random order in which to visit it.
- ``apply_edits``: inserts before and deletes at marked positions (two scatters).
- ``neighbours``, ``swap_in_order``: nlpaug's sequential adjacent swaps.
- ``words``: the words (runs of non-separator ids) of a character sequence.
- ``draw_from_table``: a uniform draw from each id's row of a candidate table.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core.validation import check_in_range, check_int


def draws(key: Any, size: int) -> jax.Array:
    """``(4, size)`` independent U(0, 1) draws, the randomness of one augmented sequence."""
    return jax.random.uniform(key, (4, size))


def aug_count(size: int, aug_p: float, aug_min: int, aug_max: int | None) -> int:
    """nlpaug's count rule: ``clamp(ceil(aug_p * size), aug_min, aug_max)``, 0 for size 0.

    ``aug_p * size`` is a float64 product as in nlpaug (``ceil(0.1 * 30) = 4``), so the
    counts match nlpaug's ``Augmenter.generate_aug_cnt`` exactly; ``aug_max=None`` is no cap.
    """
    if size == 0:
        return 0
    count = max(int(math.ceil(aug_p * size)), aug_min)
    return count if aug_max is None else min(count, aug_max)


def count_table(
    size: int,
    aug_p: Any,
    aug_min: Any,
    aug_max: Any,
    names: tuple[str, str, str] = ("aug_p", "aug_min", "aug_max"),
) -> jax.Array:
    """``aug_count(n, ...)`` for ``n = 0..size`` as an int32 array, after checking the rule.

    The hyperparameters must be concrete Python numbers (they size a host-side table);
    ``names`` are the argument names the errors show.
    """
    p_name, min_name, max_name = names
    check_in_range(p_name, aug_p, 0.0, 1.0, high_closed=True)
    if isinstance(aug_p, jax.core.Tracer):
        raise TypeError(f"{p_name} must be a concrete number, got a traced value; make it static.")
    check_int(min_name, aug_min)
    if aug_max is not None:
        check_int(max_name, aug_max)
        if aug_max < aug_min:
            raise ValueError(
                f"{min_name} must be <= {max_name}, got {min_name}={aug_min}, "
                f"{max_name}={aug_max}; raise {max_name} or pass {max_name}=None for no cap."
            )
    p = float(aug_p)
    return jnp.asarray([aug_count(n, p, aug_min, aug_max) for n in range(size + 1)], jnp.int32)


def check_sequence(ids: Any, length: Any) -> tuple[jax.Array, jax.Array]:
    """``ids`` as a 1-d integer array and ``length`` as an int32 scalar in ``[0, T]``."""
    ids = jnp.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(
            f"ids must be one sequence of shape (T,), got shape {ids.shape}; jax.vmap the "
            "function (with one key per example) for a batch."
        )
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise TypeError(f"ids must be integer token ids, got dtype {ids.dtype}; cast to int32.")
    length = jnp.asarray(length)
    if length.ndim != 0 or not jnp.issubdtype(length.dtype, jnp.integer):
        raise TypeError(f"length must be an integer scalar, got {length.dtype}{length.shape}.")
    if not isinstance(length, jax.core.Tracer) and not 0 <= int(length) <= ids.shape[0]:
        raise ValueError(f"length must be in [0, {ids.shape[0]}] (the padded size), got {length}.")
    return ids, length.astype(jnp.int32)


def choose(
    u: jax.Array,
    candidate: jax.Array,
    count: jax.Array,
    group: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Picks ``min(count[g], #candidates in g)`` candidates of each group ``g``, uniformly.

    Within its group, the candidates with the ``count`` smallest draws ``u`` are picked:
    a uniform subset without replacement (nlpaug's ``random.sample``).

    Args:
      u: ``(T,)`` independent U(0, 1) draws.
      candidate: bool ``(T,)``, the positions that may be picked.
      count: how many to pick: a scalar (one group) or ``(T,)`` indexed by group.
      group: int ``(T,)`` group of each position in ``[0, T)``; None puts all in group 0.

    Returns:
      ``(chosen, order, picked)``: the bool mask ``(T,)``; the positions sorted by group and
      then by draw (a random visiting order); and ``picked[i] = chosen[order[i]]``.
    """
    size = candidate.shape[0]
    group = jnp.zeros(size, jnp.int32) if group is None else group.astype(jnp.int32)
    per_group = jnp.broadcast_to(jnp.asarray(count, jnp.int32), (size,))
    g = jnp.where(candidate, group, size)
    order = jnp.lexsort((u, g))
    g_sorted = g[order]
    pos = jnp.arange(size)
    begins = jnp.concatenate([jnp.ones(1, bool), g_sorted[1:] != g_sorted[:-1]])
    rank = pos - jax.lax.cummax(jnp.where(begins, pos, 0))
    picked = (g_sorted < size) & (rank < per_group[jnp.minimum(g_sorted, size - 1)])
    chosen = jnp.zeros(size, bool).at[order].set(picked)
    return chosen, order, picked


def apply_edits(
    ids: jax.Array,
    length: jax.Array,
    delete: jax.Array,
    insert: jax.Array,
    new: jax.Array,
    pad_id: int,
) -> tuple[jax.Array, jax.Array]:
    """Deletes ``ids[i]`` where ``delete[i]`` and inserts ``new[i]`` before it where ``insert[i]``.

    Output position of each kept id: the number of ids kept or inserted before it. What
    lands past ``T`` is dropped (the new length is capped at ``T``); the tail is ``pad_id``.
    """
    size = ids.shape[0]
    live = jnp.arange(size) < length
    insert = insert & live
    keep = ~delete & live
    ins, kept = insert.astype(jnp.int32), keep.astype(jnp.int32)
    start = jnp.cumsum(ins + kept) - (ins + kept)
    out = jnp.full((size,), pad_id, ids.dtype)
    out = out.at[jnp.where(insert, start, size)].set(new.astype(ids.dtype), mode="drop")
    out = out.at[jnp.where(keep, start + ins, size)].set(ids, mode="drop")
    return out, jnp.minimum(jnp.sum(ins + kept), size).astype(jnp.int32)


def swap_in_order(
    u: jax.Array,
    ids: jax.Array,
    order: jax.Array,
    active: jax.Array,
    prev: jax.Array,
    nxt: jax.Array,
) -> jax.Array:
    """Visits ``p = order[i]`` where ``active[i]``, in turn, swapping ``ids[p]`` with a neighbour.

    The neighbour is ``nxt[p]`` when ``p`` has no left neighbour (``prev[p] = -1``),
    ``prev[p]`` when it has no right one, else one of the two with probability 1/2 (nlpaug's
    ``_get_swap_position``). Swaps run one after another, so an id can move more than once.
    """
    first = jnp.argsort(~active, stable=True)
    visit, n = order[first], jnp.sum(active)
    coin = u < 0.5

    def body(i, ids):
        p = visit[i]
        left, right = prev[p], nxt[p]
        q = jnp.where(left < 0, right, jnp.where(right < 0, left, jnp.where(coin[i], right, left)))
        q = jnp.where(q < 0, p, q)
        return ids.at[p].set(ids[q]).at[q].set(ids[p])

    return jax.lax.fori_loop(0, n, body, ids)


def neighbours(line: jax.Array, on: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Left and right neighbour of each position among positions with the same ``line`` id.

    Positions with ``on`` false are skipped over (they are neither neighbours nor moved);
    -1 where there is none. Used with ``line`` = word index (characters) or 0 (words).
    """
    size = on.shape[0]
    slots = jnp.argsort(~on, stable=True)  # positions that are on, in order, first
    rank = jnp.cumsum(on) - 1
    n = jnp.sum(on)
    left_pos = slots[jnp.clip(rank - 1, 0, size - 1)]
    right_pos = slots[jnp.clip(rank + 1, 0, size - 1)]
    has_left = on & (rank > 0) & (line[left_pos] == line)
    has_right = on & (rank + 1 < n) & (line[right_pos] == line)
    return jnp.where(has_left, left_pos, -1), jnp.where(has_right, right_pos, -1)


def words(ids: jax.Array, length: jax.Array, separators: jax.Array):
    """The words of a character sequence: maximal runs of ids not in ``separators`` (1-d).

    Returns:
      ``(word, word_len, in_word)``: the word index of each position (``T`` outside words),
      the length of word ``w`` at ``word_len[w]`` (0 past the last word), and the mask.
    """
    size = ids.shape[0]
    live = jnp.arange(size) < length
    in_word = live & ~jnp.isin(ids, separators)
    begins = in_word & ~jnp.concatenate([jnp.zeros(1, bool), in_word[:-1]])
    word = jnp.where(in_word, jnp.cumsum(begins) - 1, size)
    word_len = jnp.zeros(size, jnp.int32).at[word].add(1, mode="drop")
    return word, word_len, in_word


def draw_from_table(u: jax.Array, table: jax.Array, ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One uniform draw (by ``u``, ``(T,)`` U(0, 1)) from each id's row of ``table`` (< 0: padding).

    Returns ``(new, has)``: the drawn ids and whether the row had any candidate (ids off
    the table have none).
    """
    rows = table.at[jnp.where(ids >= 0, ids, table.shape[0])].get(mode="fill", fill_value=-1)
    valid = rows >= 0
    n = jnp.sum(valid, axis=1)
    rows = jnp.take_along_axis(rows, jnp.argsort(~valid, axis=1, stable=True), axis=1)
    pick = uniform_int(u, n)
    return jnp.take_along_axis(rows, pick[:, None], axis=1)[:, 0], n > 0


def uniform_int(u: jax.Array, n: Any) -> jax.Array:
    """``floor(u * n)`` as int32 in ``[0, max(n, 1))``: a uniform integer from U(0, 1) draws."""
    n = jnp.maximum(jnp.asarray(n, jnp.int32), 1)
    return jnp.minimum((u * n.astype(u.dtype)).astype(jnp.int32), n - 1)


def as_int_array(
    name: str, values: Any, ndim: int, dtype: Any, *, empty_ok: bool = False
) -> jax.Array:
    """``values`` as an integer array of rank ``ndim`` (non-empty unless ``empty_ok``; None is
    empty), cast to ``dtype``."""
    if values is None and empty_ok:
        return jnp.zeros((0,) * ndim, dtype)
    arr = values if isinstance(values, jax.Array) else np.asarray(values)
    if arr.ndim != ndim and not (empty_ok and arr.size == 0):
        shape = "(n,)" if ndim == 1 else "(vocab, k)"
        raise ValueError(f"{name} must be an array of shape {shape}, got shape {arr.shape}.")
    if arr.size == 0:
        if empty_ok:
            return jnp.zeros((0,) * ndim, dtype)
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integer ids, got dtype {arr.dtype}.")
    return jnp.asarray(arr, dtype)
