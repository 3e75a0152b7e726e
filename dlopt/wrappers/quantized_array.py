"""`QuantizedArray`: an array stored as block-wise 8-bit codes, and its block encoder/decoder.

The flattened array is cut into blocks of ``block_size`` elements (the last one zero-padded);
each block keeps one float32 scale (its value of largest magnitude) and one flag (signed or
unsigned code); each element one uint8 index into the code (`dlopt.wrappers.codes8`).

Non-finite values: a block's scale is taken over its finite elements only, and a NaN or
infinite element is stored as 0, so one bad element never spoils the other elements of its
block (the scale of a block holding a NaN used to be NaN, and every element decoded as NaN).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import numerics
from dlopt.wrappers import codes8

_INDEX_MIX = 0x9E3779B1  # the multiplier of the element index in `numerics.random_bits`


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """An array stored as 8-bit block-wise codes: element ``b * block_size + k`` of the
    flattened array (zero-padded to whole blocks) is ``code[codes[b, k]] * scale[b]``.

    ``scale[b]`` is the block's finite value of largest magnitude, with its sign, so that it
    is stored exactly (code value 1) whatever its sign: the signed dynamic code reaches +1 but
    only -0.993, and a negative maximum coded as -0.993 would shrink by 0.7% at every step.
    ``signed[b]`` says whether the block holds a negative value (signed code) or not (the
    unsigned code, one more bit of resolution, e.g. for a second moment). ``shape``, ``dtype``
    (the array's) and ``code`` are static (part of the tree structure, not leaves).
    """

    codes: jax.Array  # uint8 [num_blocks, block_size]
    scale: jax.Array  # float32 [num_blocks]: the block's value of largest magnitude
    signed: jax.Array  # bool [num_blocks]: the block holds a negative value (signed code)
    shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    dtype: Any = dataclasses.field(metadata={"static": True})
    code: str = dataclasses.field(default="dynamic", metadata={"static": True})

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def to_blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` flattened, as float32, zero-padded to ``[num_blocks, block_size]``."""
    flat = x.reshape(-1).astype(jnp.float32)
    pad = -flat.shape[0] % block_size
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)])
    return flat.reshape(-1, block_size)


def offset_seed(seed: jax.Array | None, offset: jax.Array | int) -> jax.Array | None:
    """The seed that makes `numerics.random_bits` of a slice starting at element ``offset``
    equal to the bits of the whole array there (the bits hash ``index * K + seed``)."""
    if seed is None:
        return None
    return seed + jnp.asarray(offset).astype(jnp.uint32) * jnp.uint32(_INDEX_MIX)


def normalize(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``x / scale`` (``scale`` broadcast; 0 taken as 1) as two multiplies by factors of
    the scale (no division per element); above 2**64 ``x`` is scaled down first, so that
    ``1 / scale`` is never subnormal (XLA flushes subnormals to zero on CPU)."""
    f32 = jnp.float32
    pre = jnp.where(jnp.abs(scale) > f32(2.0**64), f32(2.0**-64), f32(1))
    safe = jnp.where(scale != 0, scale * pre, jnp.ones_like(scale))
    return x * pre * (1 / safe)


def encode_blocks(
    blocks: jax.Array, code: str, seed: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(codes, scale, signed)`` of float32 ``blocks`` ``[n, block_size]`` (see the module
    doc for non-finite values). ``seed`` None rounds to nearest; otherwise stochastically,
    the noise hashed from (element index within ``blocks``, seed)."""
    f32 = jnp.float32
    finite = jnp.abs(blocks) <= f32(np.finfo(np.float32).max)
    clean = jnp.where(finite, blocks, f32(0))
    high, low = jax.lax.reduce(  # one variadic reduction (XLA fuses the producer into it)
        (clean, clean),
        (f32(-jnp.inf), f32(jnp.inf)),
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])),
        (1,),
    )
    signed = low < 0
    scale = jnp.where(-low > high, low, high)  # the value of largest magnitude: codes it as 1
    y = normalize(clean, scale[:, None])
    if seed is None:
        uniform = 0.5
    else:
        bits = numerics.random_bits(blocks.shape, seed)
        uniform = (bits >> jnp.uint32(8)).astype(f32) * f32(2.0**-24)
    index = codes8.encode(y, signed[:, None], code, uniform)
    return index.astype(jnp.uint8), scale, signed


def decode_blocks(codes: jax.Array, scale: jax.Array, signed: jax.Array, code: str) -> jax.Array:
    """float32 ``[n, block_size]``: ``code[codes] * scale`` per block."""
    table = jnp.asarray(codes8.values(code))
    base = jnp.where(signed, 0, codes8.CODE_SIZE).astype(jnp.int32)[:, None]
    index = base + codes.astype(jnp.int32)
    return table.at[index].get(mode="promise_in_bounds") * scale[:, None]


def quantize(
    x: chex.Array,
    block_size: int = 256,
    *,
    code: str = "dynamic",
    seed: jax.Array | None = None,
) -> QuantizedArray:
    """``x`` as a `QuantizedArray`: per block, ``x / scale`` rounded to the nearest code,
    ``scale`` the block's finite element of largest magnitude (so it is coded exactly as 1).

    With ``seed`` (from `dlopt.core.numerics.state_seed`) each element rounds instead to one
    of its two neighbouring codes, up with probability equal to its distance from the lower
    one (unbiased), the noise hashed from the element index (`dlopt.core.numerics.random_bits`).
    A block of zeros has scale 0 and decodes to zeros; a non-finite element is stored as 0.
    """
    x = jnp.asarray(x)
    codes, scale, signed = encode_blocks(to_blocks(x, block_size), code, seed)
    return QuantizedArray(codes, scale, signed, tuple(x.shape), x.dtype, code)


def dequantize(q: QuantizedArray) -> jax.Array:
    """The array ``q`` stores, in its shape and dtype: ``code[codes] * scale`` per block."""
    flat = decode_blocks(q.codes, q.scale, q.signed, q.code).reshape(-1)
    return flat[: q.size].reshape(q.shape).astype(q.dtype)
