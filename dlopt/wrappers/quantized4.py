"""`Quantized4Array`: an array stored as 4-bit codes, two per byte (Li et al., 2023).

Three kinds, after the paper (the codes are `dlopt.wrappers.codes4`):

* ``"de"``: a signed state (a first moment): blocks of ``block_size`` (128) elements, each
  normalized by its finite value of largest magnitude, the signed dynamic-exponent code;
* ``"rank1"``: a non-negative state (a second moment) with two or more axes longer than 1:
  rank-1 normalization, ``scale(i, j) = min(max of row i, max of column j)``, and the linear
  code without a zero point;
* ``"linear"``: a non-negative state with one such axis: blocks of 128, same linear code.

The codes are kept as rows of ``width`` elements (``width // 2`` bytes, packed): a block for
``"de"``/``"linear"``, a row of the (squeezed) array's last axis for ``"rank1"``, so that a
whole number of rows is a contiguous range of elements and can be decoded, updated and
encoded on its own (`dlopt.wrappers.chunked`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import numerics
from dlopt.wrappers import codes4
from dlopt.wrappers.quantized_array import normalize, offset_seed

KINDS = ("de", "linear", "rank1")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantized4Array:
    """An array stored as packed 4-bit codes (see the module doc for the kinds).

    ``codes``: uint8 ``[rows, ceil(width / 2)]``; ``stats``: the scales, one float32 per
    block (``"de"``, ``"linear"``) or one float32 vector per axis longer than 1, its maxima
    (``"rank1"``). ``shape``, ``dtype`` and ``kind`` are static.
    """

    codes: jax.Array
    stats: tuple[jax.Array, ...]
    shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    dtype: Any = dataclasses.field(metadata={"static": True})
    kind: str = dataclasses.field(default="de", metadata={"static": True})

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def width(self) -> int:
        """Elements per row of ``codes``."""
        if self.kind == "rank1":
            return _dims(self.shape)[-1]
        return 2 * self.codes.shape[1]


def _dims(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def kind_of(shape: tuple[int, ...], second_moment: bool) -> str:
    """The kind of a state leaf of ``shape``: ``"de"`` unless it is a second moment."""
    if not second_moment:
        return "de"
    return "rank1" if len(_dims(shape)) >= 2 else "linear"


def blank4(shape: tuple[int, ...], dtype: Any, kind: str, block_size: int) -> Quantized4Array:
    """The stored form of zeros (codes 0 and scales 0 decode to exactly 0)."""
    size = int(np.prod(shape, dtype=np.int64))
    if kind == "rank1":
        dims = _dims(shape)
        codes = jnp.zeros((size // dims[-1], -(-dims[-1] // 2)), jnp.uint8)
        stats = tuple(jnp.zeros((d,), jnp.float32) for d in dims)
    else:
        width = block_size if kind == "de" else codes4.BLOCK_SIZE
        rows = -(-size // width)
        codes = jnp.zeros((rows, width // 2), jnp.uint8)
        stats = (jnp.zeros((rows,), jnp.float32),)
    return Quantized4Array(codes, stats, tuple(shape), dtype, kind)


def quantize4(x: jax.Array, kind: str, block_size: int, seed: jax.Array | None) -> Quantized4Array:
    """``x`` (the whole array) stored as ``kind``."""
    x = jnp.asarray(x)
    if kind == "de":
        codes, scales = codes4.quantize4_block(x, block_size, seed=seed)
        return Quantized4Array(codes, (scales,), tuple(x.shape), x.dtype, kind)
    codes, stats = codes4.quantize4_rank1(x, seed=seed)
    codes = codes.reshape(-1, codes.shape[-1])
    return Quantized4Array(codes, tuple(stats), tuple(x.shape), x.dtype, kind)


def dequantize4(q: Quantized4Array) -> jax.Array:
    """The array ``q`` stores, in its shape and dtype."""
    if q.kind == "de":
        return codes4.dequantize4_block(q.codes, q.stats[0], q.shape, q.dtype)
    codes = q.codes
    if q.kind == "rank1":
        codes = codes.reshape(*_dims(q.shape)[:-1], codes.shape[-1])
    return codes4.dequantize4_rank1(codes, q.stats, q.shape, q.dtype)


# --- rows at a time (for `dlopt.wrappers.chunked`)


def _row_scale(q: Quantized4Array, first: Any, rows: int, stats: tuple) -> jax.Array:
    """The rank-1 scales of rows ``[first, first + rows)``: ``[rows, width]``."""
    dims = _dims(q.shape)
    index = first + jnp.arange(rows)
    scale = None
    stride = 1
    for k in range(len(dims) - 2, -1, -1):
        part = stats[k][(index // stride) % dims[k]]
        scale = part if scale is None else jnp.minimum(scale, part)
        stride *= dims[k]
    return jnp.minimum(scale[:, None], stats[-1][None, :])


def take4(q: Quantized4Array, start: Any, length: int) -> Any:
    first, rows = start // q.width, -(-length // q.width)
    codes = jax.lax.dynamic_slice_in_dim(q.codes, first, rows)
    if q.kind == "rank1":
        return codes, _row_scale(q, first, rows, q.stats)
    return codes, jax.lax.dynamic_slice_in_dim(q.stats[0], first, rows)


def decode4(q: Quantized4Array, pieces: Any, length: int) -> jax.Array:
    codes, scale = pieces
    values = codes4.unpack4(codes, q.width)
    if q.kind == "de":
        flat = (codes4.de4_decode(values) * scale[:, None]).reshape(-1)
    elif q.kind == "linear":
        flat = (codes4.linear4_decode(values) * scale[:, None]).reshape(-1)
    else:
        flat = (codes4.linear4_decode(values) * scale).reshape(-1)
    return flat[:length].astype(q.dtype)


def _uniform(shape: tuple[int, ...], seed: jax.Array | None) -> jax.Array | None:
    if seed is None:
        return None
    bits = numerics.random_bits(shape, seed)
    return (bits >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0**-24)


def encode4(
    q: Quantized4Array, new: jax.Array, start: Any, seed: jax.Array | None, stats: tuple | None
) -> Any:
    """The pieces of rows ``start // width ...`` holding ``new``; ``stats``: the new rank-1
    maxima of the whole array (from `rank1_stats`)."""
    seed = offset_seed(seed, start)
    if q.kind == "de":
        codes, scales = codes4.quantize4_block(new, q.width, seed=seed)
        return codes, scales
    if q.kind == "linear":
        codes, (scales,) = codes4.quantize4_rank1(new.reshape(-1), seed=seed)
        return codes, scales
    rows = new.shape[0] // q.width
    values = new.astype(jnp.float32).reshape(rows, q.width)
    scale = _row_scale(q, start // q.width, rows, stats)
    y = normalize(values, scale)
    codes = codes4.linear4_encode(y, uniform=_uniform(values.shape, seed))
    return codes4.pack4(codes), None


def put4(q: Quantized4Array, pieces: Any, start: Any, stats: tuple | None) -> Quantized4Array:
    codes, scales = pieces
    first = start // q.width
    codes = jax.lax.dynamic_update_slice_in_dim(q.codes, codes, first, 0)
    if q.kind == "rank1":
        new_stats = q.stats if stats is None else stats
    else:
        new_stats = (jax.lax.dynamic_update_slice_in_dim(q.stats[0], scales, first, 0),)
    return Quantized4Array(codes, tuple(new_stats), q.shape, q.dtype, q.kind)


def rank1_stats(q: Quantized4Array, stats: tuple, new: jax.Array, start: Any) -> tuple:
    """``stats`` (running per-axis maxima) updated with the rows of ``new`` at ``start``."""
    dims = _dims(q.shape)
    rows = new.shape[0] // q.width
    values = new.astype(jnp.float32).reshape(rows, q.width)
    values = jnp.maximum(jnp.where(jnp.isfinite(values), values, 0.0), 0.0)
    out = [None] * len(dims)
    out[-1] = jnp.maximum(stats[-1], jnp.max(values, axis=0))
    row_max = jnp.max(values, axis=1)
    index = start // q.width + jnp.arange(rows)
    stride = 1
    for k in range(len(dims) - 2, -1, -1):
        out[k] = stats[k].at[(index // stride) % dims[k]].max(row_max)
        stride *= dims[k]
    return tuple(out)


def chunk_for(widths: list[int], target: int) -> int:
    """Elements per chunk: a multiple of every width, about ``target`` elements."""
    step = math.lcm(*widths) if widths else 1
    return step * max(1, target // step)
