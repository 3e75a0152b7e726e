"""Running an elementwise transform over quantized state a chunk of blocks at a time.

For a param leaf whose state is quantized, `run_leaf` loops over chunks of ``chunk``
elements (a whole number of blocks): it slices the gradient and the param, decodes the
chunk's blocks of each state leaf, runs the rule on those slices (every other leaf replaced
by an empty array), encodes the new state into the chunk's blocks and writes the update over
the gradient's slice, all inside one `jax.lax.fori_loop` whose carry is updated in place.
The step therefore holds the params, the gradients, the stored state and a few chunks of
float32 temporaries, and no moment-sized float32 array. The tail (the last, partial chunk)
is one more call of the same body with static bounds.

Chunks start at multiples of the block size, and stochastic rounding hashes the element
index in the whole leaf (`dlopt.wrappers.quantized_array.offset_seed`), so the codes are
those of encoding the whole leaf at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from dlopt.wrappers import quantized4 as q4
from dlopt.wrappers.quantized_array import (
    QuantizedArray,
    decode_blocks,
    encode_blocks,
    is_quantized,
    offset_seed,
)


def _slice(flat: jax.Array, start: Any, length: int) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(flat, start, length)


def take(stored: Any, start: Any, length: int) -> Any:
    """The stored pieces of elements ``[start, start + length)`` of a stored leaf (a
    `QuantizedArray`'s blocks, or a slice of a flat raw array); ``start`` is a multiple of
    the block size."""
    if isinstance(stored, q4.Quantized4Array):
        return q4.take4(stored, start, length)
    if not is_quantized(stored):
        return _slice(stored, start, length)
    size = stored.codes.shape[1]
    first, count = start // size, -(-length // size)
    return (
        jax.lax.dynamic_slice_in_dim(stored.codes, first, count),
        _slice(stored.scale, first, count),
        _slice(stored.signed, first, count),
    )


def decode(stored: Any, pieces: Any, length: int) -> jax.Array:
    """The ``length`` values that `take`'s ``pieces`` of ``stored`` hold, in its dtype."""
    if isinstance(stored, q4.Quantized4Array):
        return q4.decode4(stored, pieces, length)
    if not is_quantized(stored):
        return pieces
    flat = decode_blocks(*pieces, stored.code).reshape(-1)
    return flat[:length].astype(stored.dtype)


def encode(
    stored: Any, new: jax.Array, start: Any, seed: jax.Array | None, stats: Any = None
) -> Any:
    """The stored pieces (as `take` returns them) of the new values ``new`` of elements
    ``[start, start + len(new))`` of ``stored``; ``stats``: a rank-1 leaf's new maxima."""
    if isinstance(stored, q4.Quantized4Array):
        return q4.encode4(stored, new, start, seed, stats)
    if not is_quantized(stored):
        return new.astype(stored.dtype)
    size = stored.codes.shape[1]
    flat = new.reshape(-1).astype(jnp.float32)
    pad = -flat.shape[0] % size
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)])
    return encode_blocks(flat.reshape(-1, size), stored.code, offset_seed(seed, start))


def put(stored: Any, pieces: Any, start: Any, stats: Any = None) -> Any:
    """``stored`` with `take`'s pieces at ``start`` replaced (in place under ``jit``)."""
    if isinstance(stored, q4.Quantized4Array):
        return q4.put4(stored, pieces, start, stats)
    if not is_quantized(stored):
        return jax.lax.dynamic_update_slice_in_dim(stored, pieces, start, 0)
    first = start // stored.codes.shape[1]
    codes, scale, signed = (
        jax.lax.dynamic_update_slice_in_dim(old, new, first, 0)
        for old, new in zip((stored.codes, stored.scale, stored.signed), pieces, strict=True)
    )
    return QuantizedArray(codes, scale, signed, stored.shape, stored.dtype, stored.code)


def apart(start: Any, fn: Callable[[Any], Any], operands: Any) -> Any:
    """``fn(operands)`` kept out of the fusions around it: a `jax.lax.cond` whose two
    branches are ``fn``, so XLA materializes its (chunk-sized) results instead of fusing
    their computation into the in-place writes of the loop's carry, which would make it copy
    the whole carried buffers (an optimization barrier is dropped on CPU)."""
    if isinstance(start, int):
        return fn(operands)
    return jax.lax.cond(start >= 0, fn, fn, operands)


def over_chunks(size: int, chunk: int, body: Callable[[Any, int, Any], Any], carry: Any) -> Any:
    """``carry = body(start, length, carry)`` for the chunks ``[start, start + length)`` of
    ``range(size)``: a `jax.lax.fori_loop` over the whole chunks, then the tail."""
    full = size // chunk
    if full == 1:
        carry = body(0, chunk, carry)
    elif full > 1:
        carry = jax.lax.fori_loop(0, full, lambda c, carry: body(c * chunk, chunk, carry), carry)
    if size % chunk:
        carry = body(full * chunk, size % chunk, carry)
    return carry


def empty_like(x: Any) -> jax.Array:
    """An empty 1-D array of ``x``'s dtype: the stand-in for a leaf outside the chunk."""
    return jnp.zeros((0,), x.dtype)


def flat_stored(x: Any) -> Any:
    """A stored leaf ready for `read`/`write`: quantized as is, raw arrays flattened."""
    if is_quantized(x) or isinstance(x, q4.Quantized4Array):
        return x
    return jnp.reshape(x, (-1,))


def width(stored: Any) -> int:
    """Elements per row of a stored leaf (chunks start at whole rows)."""
    if isinstance(stored, q4.Quantized4Array):
        return stored.width
    return stored.codes.shape[1] if is_quantized(stored) else 1


def _rank1(stored: Any) -> bool:
    return isinstance(stored, q4.Quantized4Array) and stored.kind == "rank1"


def _first_maxima(stored: Any) -> tuple:
    return tuple(jnp.zeros_like(x) for x in stored.stats)


def run_leaf(
    j: int,
    owners: tuple[int, ...],
    rule: Callable[[list, list, list | None], tuple[list, list]],
    grads: list,
    stored: list,
    params: list | None,
    target: int,
    seeds: list,
) -> tuple[jax.Array, dict[int, Any]]:
    """The update of param leaf ``j`` (flat) and its new stored state leaves ``{i: leaf}``.

    ``rule(grads, state, params)`` runs the wrapped transform on flat leaf lists and returns
    flat leaf lists; ``owners[i]`` is the param leaf of state leaf ``i`` (-1: a scalar, passed
    as stored); ``seeds[i]`` the rounding seed of state leaf ``i`` (None: nearest); chunks
    hold about ``target`` elements. A rank-1 (4-bit second moment) leaf needs the maxima of
    its whole new state first: one more pass runs the rule for them (reductions only).
    """
    mine = [i for i, owner in enumerate(owners) if owner == j]
    chunk = q4.chunk_for([width(stored[i]) for i in mine], target)
    flat_g = jnp.reshape(grads[j], (-1,))
    flat_p = None if params is None else jnp.reshape(params[j], (-1,))

    def stand_in(leaves, index, value):
        return [value if k == index else empty_like(x) for k, x in enumerate(leaves)]

    def state_in(chunks):
        return [
            chunks[i] if i in chunks else (x if owners[i] < 0 else jnp.zeros((0,), x.dtype))
            for i, x in enumerate(stored)
        ]

    def new_chunk(state, g, p, pieces, length):
        chunks = {i: decode(state[i], pieces[i], length) for i in mine}
        p = None if params is None else stand_in(params, j, p)
        return rule(stand_in(grads, j, g), state_in(chunks), p)

    def inputs(out, state, start, length):
        g = _slice(out if out.dtype == flat_g.dtype else flat_g, start, length)
        p = None if params is None else _slice(flat_p, start, length)
        return g, p, {i: take(state[i], start, length) for i in mine}

    ranked = [i for i in mine if _rank1(stored[i])]
    maxima = {}
    if ranked:
        state = {i: flat_stored(stored[i]) for i in mine}

        def first(start, length, acc):
            _, new_state = new_chunk(state, *inputs(flat_g, state, start, length), length)
            return {i: q4.rank1_stats(state[i], acc[i], new_state[i], start) for i in ranked}

        maxima = over_chunks(
            flat_g.shape[0], chunk, first, {i: _first_maxima(stored[i]) for i in ranked}
        )

    def body(start, length, carry):
        out, state = carry

        def compute(operands):
            new_out, new_state = new_chunk(state, *operands, length)
            new = {i: encode(state[i], new_state[i], start, seeds[i], maxima.get(i)) for i in mine}
            return new_out[j].astype(out.dtype), new

        new_out, new = apart(start, compute, inputs(out, state, start, length))
        out = jax.lax.dynamic_update_slice_in_dim(out, new_out, start, 0)
        return out, {i: put(state[i], new[i], start, maxima.get(i)) for i in mine}

    out_dtype = jax.eval_shape(
        lambda: rule(
            stand_in(grads, j, flat_g[:1]),
            state_in({i: jnp.zeros((1,), stored[i].dtype) for i in mine}),
            None if params is None else stand_in(params, j, flat_p[:1]),
        )[0][j]
    ).dtype
    out = flat_g if out_dtype == flat_g.dtype else jnp.zeros(flat_g.shape, out_dtype)
    carry = (out, {i: flat_stored(stored[i]) for i in mine})
    out, state = over_chunks(flat_g.shape[0], chunk, body, carry)
    return out, state


def init_leaf(
    j: int,
    rule: Callable[[list], list],
    params: list,
    blank: dict[int, Any],
    target: int,
    seeds: list,
) -> dict[int, Any]:
    """The stored initial state leaves ``{i: leaf}`` of param leaf ``j``: ``rule(params)``
    (the wrapped ``init`` on flat leaf lists) run chunk by chunk and encoded into ``blank``
    (zero-filled stored leaves, flat); a rank-1 leaf's maxima come from a first pass."""
    flat_p = jnp.reshape(params[j], (-1,))
    chunk = q4.chunk_for([width(x) for x in blank.values()], target)

    def new_chunk(p):
        return rule([p if k == j else empty_like(x) for k, x in enumerate(params)])

    maxima = {}
    ranked = [i for i, x in blank.items() if _rank1(x)]
    if ranked:

        def first(start, length, acc):
            new = new_chunk(_slice(flat_p, start, length))
            return {i: q4.rank1_stats(blank[i], acc[i], new[i], start) for i in ranked}

        maxima = over_chunks(
            flat_p.shape[0], chunk, first, {i: _first_maxima(blank[i]) for i in ranked}
        )

    def body(start, length, state):
        def compute(p):
            new = new_chunk(p)
            return {i: encode(state[i], new[i], start, seeds[i], maxima.get(i)) for i in state}

        new = apart(start, compute, _slice(flat_p, start, length))
        return {i: put(state[i], new[i], start, maxima.get(i)) for i in state}

    return over_chunks(flat_p.shape[0], chunk, body, blank)
