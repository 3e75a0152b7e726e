"""The 8-bit codes of `dlopt.quantized`: the dynamic data type of Dettmers et al. and a linear one.

Each code is a sorted table of 256 values in [-1, 1] (signed) or [0, 1] (unsigned); a value
normalized by its block's scale is stored as the index of a code value. `encode` finds that
index with compares and multiplies by constants only (no table search, no division), so it
vectorizes and fuses into the loop that produces the values.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

CODES = ("dynamic", "linear")
CODE_SIZE = 256  # 8 bits


def dynamic_code(signed: bool) -> np.ndarray:
    """The 256 values of the dynamic 8-bit data type, sorted (float32).

    Per exponent level ``i = 0 ... 6``, the midpoints of ``2**i`` (signed; ``2**(i+1)``
    unsigned) equal steps of [0.1, 1], scaled by ``10**(i - 6)``; mirrored for the signed
    code; plus 0 and 1. The signed code spans [-0.993, 1] (127 negative values, 0, 128
    positive), the unsigned one [0, 1] with one more fraction bit per level. The smallest
    non-zero magnitude is 5.5e-7 of the block maximum.

    References:
        bitsandbytes ``functional.create_dynamic_map(signed, max_exponent_bits=7,
        total_bits=8)``; Dettmers, 2016, "8-Bit Approximations for Parallelism in Deep
        Learning", ICLR.
    """
    values = [0.0, 1.0]
    for i in range(7):
        steps = 2**i if signed else 2 ** (i + 1)
        edges = np.linspace(0.1, 1.0, steps + 1)
        means = 10.0 ** (i - 6) * (edges[:-1] + edges[1:]) / 2
        values += list(means) + (list(-means) if signed else [])
    assert len(values) == CODE_SIZE
    return np.sort(np.asarray(values, np.float32))


def linear_code(signed: bool) -> np.ndarray:
    """256 equally spaced values: [-1, 1] in 255 steps plus a second 0 (signed, as
    bitsandbytes' ``create_linear_map``), or [0, 1] in 256 (unsigned); sorted, float32."""
    if signed:
        return np.sort(np.append(np.linspace(-1.0, 1.0, CODE_SIZE - 1), 0.0).astype(np.float32))
    return np.linspace(0.0, 1.0, CODE_SIZE).astype(np.float32)


def _bottom(level: int, signed: bool) -> float:
    """The smallest value of exponent level ``level`` (0 ... 6) of the dynamic code."""
    count = 2**level if signed else 2 ** (level + 1)
    return 10.0 ** (level - 6) * (0.1 + 0.45 / count)


def position(a: jax.Array, signed: jax.Array, code: str) -> jax.Array:
    """The continuous code rank of magnitudes ``a`` in [0, 1] (0: the code for zero, then
    the non-zero values in increasing order): piecewise linear between consecutive code
    values and equal to ``k`` at the ``k``-th, so ``floor(position + 1/2)`` is the nearest
    code and ``floor(position + u)``, ``u ~ U[0, 1)``, an unbiased stochastic rounding.

    ``signed`` (broadcast against ``a``) picks the code. Compares, selects and multiplies by
    constants only (no divisions, no table gathers), so it vectorizes and fuses into the
    loop that produces ``a``.
    """
    f32 = jnp.float32

    def per_code(value_signed, value_unsigned):
        return jnp.where(signed, f32(value_signed), f32(value_unsigned))

    if code == "linear":
        return a * per_code(CODE_SIZE // 2 - 1, CODE_SIZE - 1)
    # Decade L = 0 ... 6 holds a in 10**(L-6) * [0.1, 1): z = a / 10**(L-6) in [0.1, 1).
    # Its level has count = k0 * 2**L values (k0 = 1 signed, 2 unsigned) at t = 0 ...
    # count - 1, t = (z - 0.1) * count / 0.9 - 1/2; the first has rank count - k0 + 1.
    pow2, inv_pow10 = f32(1), f32(1e6)
    for decade in range(1, 7):
        inside = a >= f32(10.0 ** (decade - 7))
        pow2 = jnp.where(inside, f32(2.0**decade), pow2)
        inv_pow10 = jnp.where(inside, f32(10.0 ** (6 - decade)), inv_pow10)
    k0 = per_code(1, 2)
    count = k0 * pow2
    t = (a * inv_pow10 - f32(0.1)) * (count * f32(1 / 0.9)) - f32(0.5)
    # Between two levels the rank moves linearly from the last value of one to the first of
    # the next, which lie at t = count - 1 and (in the next decade's t) 0; that is t in
    # [-0.6, 0] below the first value (this decade) and [count - 1, count + 2] above the
    # last (in this decade's t), or [count - 1, count - 0.5] to the top code 1 from L = 6.
    last = count - 1
    above = (t - last) * jnp.where(inv_pow10 == f32(1), f32(2), f32(1 / 3)) + last
    offset = jnp.where(t < 0, t * f32(1 / 0.6), jnp.where(t > last, above, t))
    rank = count - k0 + 1 + offset
    first = per_code(_bottom(0, True), _bottom(0, False))  # from 0 (rank 0) to it (rank 1)
    return jnp.where(a < first, a * per_code(1 / _bottom(0, True), 1 / _bottom(0, False)), rank)


def encode(y: jax.Array, signed: jax.Array, code: str, uniform: jax.Array | float) -> jax.Array:
    """Codes (int32 in [0, 255]) of normalized values ``y`` in [-1, 1]; ``signed`` (broadcast)
    picks the signed code; ``uniform`` is 1/2 (nearest) or U[0, 1) (stochastic)."""
    half = CODE_SIZE // 2 - 1  # 127: the signed code's zero
    u = jnp.asarray(uniform, jnp.float32)
    rank = jnp.floor(position(jnp.abs(y), signed, code) + u).astype(jnp.int32)
    negative = y < 0
    if code == "linear":  # signed: 255 values and a second zero at 128
        signed_index = jnp.where(negative, half - rank, half + rank + (rank > 0).astype(jnp.int32))
    else:  # signed: 127 negative values, zero at 127, 128 positive ones (up to 1)
        rank_signed = jnp.minimum(rank, jnp.where(negative, half, half + 1))
        signed_index = jnp.where(negative, half - rank_signed, half + rank_signed)
    return jnp.where(signed, signed_index, jnp.minimum(rank, CODE_SIZE - 1))


@functools.cache
def values(code: str) -> np.ndarray:
    """The signed code's 256 values, then the unsigned code's (the decoding table)."""
    make = dynamic_code if code == "dynamic" else linear_code
    return np.concatenate([make(True), make(False)])
