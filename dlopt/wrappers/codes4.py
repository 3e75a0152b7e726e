"""4-bit codes for optimizer state (Li et al., 2023): two codes per byte.

Adam's two moments need different 4-bit treatments, as Li et al. show:

- **First moment** (signed, heavy-tailed): block-wise normalization with block 128 and the
  signed *dynamic-exponent* code ("DE": 3 exponent levels of 1, 2 and 4 values at
  10^-2, 10^-1 and 10^0, mirrored for negative values, plus 0 and 1):
  `quantize4_block` / `dequantize4_block`, 0.5 + 4 / 128 = 0.53125 bytes per element.
- **Second moment** (non-negative): *rank-1* normalization, scale(i, j) = min(max of row i,
  max of column j) (for ndim > 2 the minimum over every axis's maxima), and the *linear code
  without a zero point*, {1/16, 2/16, ..., 1}: `quantize4_rank1` / `dequantize4_rank1`, 0.5
  bytes per element plus 4 bytes per row and per column (an ``R x C`` matrix: 0.5 + 4 (R + C)
  / (R C) bytes per element, e.g. 0.5156 for 512 x 512); tensors with at most one axis longer
  than 1 use block-wise normalization (block 128) instead. Why no zero point: Adam divides by
  sqrt(v), and a small v rounded to 0 turns the step m / (sqrt(v) + eps) into m / eps, a jump
  of orders of magnitude; the smallest code here is 1/16 of the scale, so a positive v never
  decodes to 0 and its error only ever shrinks the step.

Every function is elementwise apart from the maxima (one reduction per block or axis):
encoding is a count of threshold comparisons, decoding a tree of 8 selects
(no table gathers, no float64, no loops over elements), so XLA fuses them into the loops of
the update that produces or consumes the state.

Non-finite inputs do not spread: the scales are maxima over the finite elements only, so one
NaN or Inf leaves the rest of its block (row, column) coded as before. The element itself
decodes finitely: a NaN first moment to 0, a NaN second moment to the top of its scale (the
smallest step), and +-Inf to the top code of its sign. An all-zero block (row) has scale 0
and decodes to exactly 0 for both moments, as a float32 state would hold it (Adam's v is 0
only where every past gradient was 0, and then m is 0 too).

References:
    Li, Chen and Zhu, 2023, "Memory Efficient Optimizers with 4-bit States", NeurIPS
    (https://arxiv.org/abs/2309.01507); the DE code is Dettmers, 2016, "8-Bit Approximations
    for Parallelism in Deep Learning", ICLR, with 3 exponent bits of a 4-bit word; torchao's
    ``prototype/low_bit_optim`` 4-bit AdamW uses the same two codes with block-wise
    normalization for both moments.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import numerics

BLOCK_SIZE = 128  # the paper's block for the first moment (and the 1-D second moment)
_F32 = jnp.float32


# --- packing


def pack4(idx: jax.Array) -> jax.Array:
    """Two 4-bit codes per byte along the last axis: ``out[..., k] = idx[..., 2k] | idx[...,
    2k + 1] << 4``; an odd last axis is padded with a 0 code. Only the low 4 bits are kept."""
    idx = jnp.asarray(idx).astype(jnp.uint8) & jnp.uint8(15)
    if idx.ndim == 0:
        idx = idx[None]
    if idx.shape[-1] % 2:
        idx = jnp.concatenate([idx, jnp.zeros((*idx.shape[:-1], 1), jnp.uint8)], axis=-1)
    pairs = idx.reshape(*idx.shape[:-1], -1, 2)
    return pairs[..., 0] | (pairs[..., 1] << jnp.uint8(4))


def unpack4(packed: jax.Array, n: int) -> jax.Array:
    """The inverse of `pack4`: uint8 codes in [0, 15], the last axis cut to ``n``."""
    packed = jnp.asarray(packed)
    if packed.dtype != jnp.uint8:
        raise TypeError(f"packed must be uint8 (from pack4); got {packed.dtype}")
    if not 2 * packed.shape[-1] - 1 <= n <= 2 * packed.shape[-1]:
        raise ValueError(
            f"n must be {2 * packed.shape[-1] - 1} or {2 * packed.shape[-1]}; got {n=}"
        )
    both = jnp.stack([packed & jnp.uint8(15), packed >> jnp.uint8(4)], axis=-1)
    return both.reshape(*packed.shape[:-1], -1)[..., :n]


# --- the code tables (numpy, for reference and tests) and their arithmetic encode/decode


@functools.cache
def _de_magnitudes() -> np.ndarray:
    """The 9 magnitudes of the signed DE code: 0, the 7 level means, 1 (float64)."""
    values = [0.0]
    for level in range(3):  # 2**level values at 10**(level - 2) * means of [0.1, 1] steps
        edges = np.linspace(0.1, 1.0, 2**level + 1)
        values += list(10.0 ** (level - 2) * (edges[:-1] + edges[1:]) / 2)
    return np.asarray([*values, 1.0])


def dynamic_exponent_code4() -> np.ndarray:
    """The 16 values of the signed 4-bit DE code, indexed by code (float32).

    Code ``r`` in 0 ... 7 is the magnitude of rank ``r`` (0, 0.0055, 0.0325, 0.0775, 0.2125,
    0.4375, 0.6625, 0.8875), code ``8 + r`` its negative for r >= 1, and code 8 (the "-0" of
    sign-magnitude) is +1. Sorted, these are the 16 values of bitsandbytes'/torchao's
    ``create_dynamic_map(signed=True, max_exponent_bits=3, total_bits=4)``.
    """
    mags = _de_magnitudes()
    return np.concatenate([mags[:8], [1.0], -mags[1:8]]).astype(np.float32)


def linear_code4(*, zero_point: bool = False) -> np.ndarray:
    """The 16 values of the unsigned linear 4-bit code, indexed by code (float32): ``(c + 1) /
    16`` without a zero point (the paper's second-moment code), ``c / 15`` with one."""
    c = np.arange(16, dtype=np.float64)
    return (c / 15 if zero_point else (c + 1) / 16).astype(np.float32)


def de4_decode(codes: jax.Array) -> jax.Array:
    """The DE value of each code (float32), exactly `dynamic_exponent_code4`'s: a tree of
    selects on the 3 magnitude bits and one on the sign bit (no table gather)."""
    c = jnp.asarray(codes).astype(jnp.int32)
    mags = [_F32(m) for m in _de_magnitudes()[:8]]
    bit = [(c & (1 << k)) != 0 for k in range(3)]
    pairs = [jnp.where(bit[0], mags[i + 1], mags[i]) for i in range(0, 8, 2)]
    quads = [jnp.where(bit[1], pairs[i + 1], pairs[i]) for i in range(0, 4, 2)]
    magnitude = jnp.where(bit[2], quads[1], quads[0])
    return jnp.where(c >= 8, jnp.where((c & 7) == 0, _F32(1), -magnitude), magnitude)


def de4_encode(y: jax.Array, *, uniform: jax.Array | None = None) -> jax.Array:
    """DE codes (uint8 in [0, 15]) of normalized values ``y`` in [-1, 1].

    Nearest value (``uniform=None``): the rank is the count of the 8 midpoints between
    consecutive magnitudes that ``|y|`` exceeds. With ``uniform`` (U[0, 1) per element) the
    magnitude rounds up to the next value with probability equal to its distance from the
    one below (unbiased inside [0, 1]). Negative values stop at -0.8875 (the code has no
    -1); NaN codes 0; +-Inf the largest code of its sign.
    """
    y = jnp.asarray(y, _F32)
    y = jnp.where(jnp.isnan(y), _F32(0), y)
    ay = jnp.abs(y)
    mags = _de_magnitudes()
    if uniform is None:
        mids = (mags[:-1] + mags[1:]) / 2
        rank = sum((ay > _F32(m)).astype(jnp.int32) for m in mids)
    else:
        lo = sum((ay >= _F32(m)).astype(jnp.int32) for m in mags[1:])  # values <= |y|
        below = de4_decode(lo)  # codes 0 ... 8 decode to the magnitudes of those ranks
        above = de4_decode(jnp.minimum(lo + 1, 8))
        gap = jnp.where(lo < 8, above - below, _F32(1))
        frac = jnp.where(lo < 8, (jnp.minimum(ay, _F32(1)) - below) / gap, _F32(0))
        rank = lo + (jnp.asarray(uniform, _F32) < frac).astype(jnp.int32)
    negative = (y < 0) & (rank > 0)
    return jnp.where(negative, 8 + jnp.minimum(rank, 7), rank).astype(jnp.uint8)


def linear4_decode(codes: jax.Array, *, zero_point: bool = False) -> jax.Array:
    """The linear code's value of each code (float32): ``(c + 1) / 16`` or ``c / 15``."""
    c = jnp.asarray(codes).astype(_F32)
    return c * _F32(1 / 15) if zero_point else (c + _F32(1)) * _F32(1 / 16)


def linear4_encode(
    y: jax.Array, *, uniform: jax.Array | None = None, zero_point: bool = False
) -> jax.Array:
    """Linear codes (uint8 in [0, 15]) of normalized values ``y`` in [0, 1]: nearest, or
    stochastic with ``uniform``; below the smallest value (1/16 without a zero point) always
    up to it. NaN and +Inf take the top code, negative values the bottom one."""
    y = jnp.asarray(y, _F32)
    y = jnp.where(jnp.isnan(y), _F32(1), jnp.clip(y, _F32(0), _F32(1)))
    steps = 15 if zero_point else 16
    u = _F32(0.5) if uniform is None else jnp.asarray(uniform, _F32)
    k = jnp.floor(y * _F32(steps) + u).astype(jnp.int32)
    if zero_point:
        return jnp.clip(k, 0, 15).astype(jnp.uint8)
    return (jnp.clip(k, 1, 16) - 1).astype(jnp.uint8)


# --- block-wise and rank-1 normalization


def _uniform(shape: tuple[int, ...], seed: jax.Array | None) -> jax.Array | None:
    """U[0, 1) per element hashed from (index, seed), or None (round to nearest)."""
    if seed is None:
        return None
    bits = numerics.random_bits(shape, jnp.asarray(seed).astype(jnp.uint32))
    return (bits >> jnp.uint32(8)).astype(_F32) * _F32(2.0**-24)


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` flattened, as float32, zero-padded to ``[num_blocks, block_size]``."""
    flat = jnp.asarray(x).astype(_F32).reshape(-1)
    pad = -flat.shape[0] % block_size
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), _F32)])
    return flat.reshape(-1, block_size)


def _check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an even int >= 2; got {block_size=}")
    if block_size % 2:
        raise ValueError(f"block_size must be even (two codes per byte); got {block_size=}")


def _divide(x: jax.Array, scale: jax.Array) -> jax.Array:
    """``x / scale``, a zero scale taken as 1 (its elements are 0 or non-finite). XLA may
    turn the division into a multiply by ``1 / scale``, which flushes to 0 on CPU above
    2**126 (subnormal): a scale above 2**64 is brought down by 2**-64 on both sides first."""
    pre = jnp.where(jnp.abs(scale) > _F32(2.0**64), _F32(2.0**-64), _F32(1))
    safe = jnp.where(scale != 0, scale * pre, _F32(1))
    return (x * pre) * (1 / safe)


def quantize4_block(
    x: jax.Array, block_size: int = BLOCK_SIZE, *, seed: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """``x`` (any shape, flattened, zero-padded to whole blocks) as packed DE codes.

    Per block, ``scale`` is the finite element of largest magnitude *with its sign*, so that
    element is stored exactly (code +1) whichever its sign; ``codes = DE(x / scale)``.
    ``seed`` (e.g. `dlopt.core.numerics.state_seed`) switches to unbiased stochastic
    rounding, the noise hashed from the element index (nothing random is materialized).

    Returns:
        ``(codes, scales)``: uint8 ``[num_blocks, block_size // 2]`` and float32
        ``[num_blocks]``; 0.5 + 4 / block_size bytes per element.
    """
    _check_block_size(block_size)
    blocks = _blocks(x, block_size)
    finite = jnp.where(jnp.isfinite(blocks), blocks, _F32(0))
    high, low = jnp.max(finite, axis=1), jnp.min(finite, axis=1)
    scales = jnp.where(-low > high, low, high)
    y = _divide(blocks, scales[:, None])
    return pack4(de4_encode(y, uniform=_uniform(blocks.shape, seed))), scales


def dequantize4_block(
    codes: jax.Array, scales: jax.Array, shape: tuple[int, ...], dtype: Any = _F32
) -> jax.Array:
    """The array of ``shape`` (and ``dtype``) that `quantize4_block` coded."""
    block_size = 2 * codes.shape[-1]
    values = de4_decode(unpack4(codes, block_size)) * jnp.asarray(scales, _F32)[:, None]
    size = int(np.prod(shape, dtype=np.int64))
    return values.reshape(-1)[:size].reshape(shape).astype(dtype)


def _rank1_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes longer than 1: rank-1 normalization applies when there are at least two."""
    return tuple(d for d in shape if d != 1)


def rank1_scale(stats: tuple[jax.Array, ...]) -> jax.Array:
    """``scale[i0, i1, ...] = min_k stats[k][i_k]``, broadcast to the full (squeezed) shape."""
    ndim = len(stats)
    axes = [s.reshape([-1 if k == i else 1 for k in range(ndim)]) for i, s in enumerate(stats)]
    return functools.reduce(jnp.minimum, axes)


def quantize4_rank1(
    x: jax.Array, *, seed: jax.Array | None = None, zero_point: bool = False
) -> tuple[jax.Array, tuple[jax.Array, ...]]:
    """A non-negative ``x`` as packed linear codes with rank-1 normalization.

    With the axes longer than 1 kept (``x`` squeezed to ``d_0 x ... x d_{n-1}``, n >= 2),
    ``stats[k]`` is the maximum over the finite elements of every slice along axis ``k``
    (length ``d_k``) and ``scale[i] = min_k stats[k][i_k]``, so every element ``x[i] <=
    scale[i]`` and a row or column of small values keeps its own scale even next to a large
    one. ``codes = linear(x / scale)`` packed along the last kept axis. With fewer than two
    such axes, block-wise normalization by the block maximum (block 128), ``stats =
    (scales,)``. ``zero_point=True`` uses the code {0, 1/15, ..., 1} instead (for comparison:
    it rounds small values to 0). ``seed``: stochastic rounding as in `quantize4_block`.

    Returns:
        ``(codes, stats)``: uint8 ``[d_0, ..., ceil(d_{n-1} / 2)]`` and ``n`` float32 vectors
        (or uint8 ``[num_blocks, 64]`` and one float32 ``[num_blocks]``).
    """
    x = jnp.asarray(x)
    dims = _rank1_dims(x.shape)
    if len(dims) < 2:
        blocks = _blocks(x, BLOCK_SIZE)
        scales = jnp.max(jnp.where(jnp.isfinite(blocks), blocks, _F32(0)), axis=1)
        scales = jnp.maximum(scales, _F32(0))
        y = _divide(blocks, scales[:, None])
        uniform = _uniform(blocks.shape, seed)
        return pack4(linear4_encode(y, uniform=uniform, zero_point=zero_point)), (scales,)
    values = x.astype(_F32).reshape(dims)
    finite = jnp.maximum(jnp.where(jnp.isfinite(values), values, _F32(0)), _F32(0))
    ndim = len(dims)
    stats = tuple(
        jnp.max(finite, axis=tuple(a for a in range(ndim) if a != k)) for k in range(ndim)
    )
    y = _divide(values, rank1_scale(stats))
    codes = linear4_encode(y, uniform=_uniform(dims, seed), zero_point=zero_point)
    return pack4(codes), stats


def dequantize4_rank1(
    codes: jax.Array,
    stats: tuple[jax.Array, ...],
    shape: tuple[int, ...],
    dtype: Any = _F32,
    *,
    zero_point: bool = False,
) -> jax.Array:
    """The array of ``shape`` (and ``dtype``) that `quantize4_rank1` coded."""
    shape = tuple(shape)
    dims = _rank1_dims(shape)
    if len(dims) < 2:
        (scales,) = stats
        values = linear4_decode(unpack4(codes, 2 * codes.shape[-1]), zero_point=zero_point)
        values = values * jnp.asarray(scales, _F32)[:, None]
        size = int(np.prod(shape, dtype=np.int64))
        return values.reshape(-1)[:size].reshape(shape).astype(dtype)
    values = linear4_decode(unpack4(codes, dims[-1]), zero_point=zero_point)
    return (values * rank1_scale(stats)).reshape(shape).astype(dtype)
