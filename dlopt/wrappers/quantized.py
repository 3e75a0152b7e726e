"""Block-wise 8-bit optimizer state around any transform (Dettmers et al., 2022).

`quantized` stores every floating state leaf of ``tx`` with at least ``min_size`` elements as
`QuantizedArray`: one uint8 code per element plus one float32 scale (and a sign flag) per
block of ``block_size`` elements, 1 + 5 / block_size bytes per element instead of 4. Inside
``update`` the codes are decoded, ``tx`` runs on the float32 state and its new state is
encoded again, in the one jitted step. Decoding, the rule and encoding are elementwise (the
block ranges are the only reduction) and written without divisions or chained gathers, so
XLA fuses them into the update's loops and no float32 copy of the state is materialized.

The codes are the *dynamic* (non-linear) 8-bit data type of Dettmers et al.: an exponent
that falls from 10^0 to 10^-6 with the fraction bits that remain, so small values relative to
the block's absolute maximum keep their relative precision (a linear code would round them to
0). Each block is normalized by its absolute maximum and rounded to the nearest code.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)
from dlopt.core.per_leaf import per_leaf

CODES = ("dynamic", "linear")
CODE_SIZE = 256  # 8 bits


# --- the codes (sorted tables of 256 values in [-1, 1] or [0, 1])


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


def _position(a: jax.Array, signed: jax.Array, code: str) -> jax.Array:
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


def _encode(y: jax.Array, signed: jax.Array, code: str, uniform: jax.Array | float) -> jax.Array:
    """Codes (int32 in [0, 255]) of normalized values ``y`` in [-1, 1]; ``signed`` (broadcast)
    picks the signed code; ``uniform`` is 1/2 (nearest) or U[0, 1) (stochastic)."""
    half = CODE_SIZE // 2 - 1  # 127: the signed code's zero
    u = jnp.asarray(uniform, jnp.float32)
    rank = jnp.floor(_position(jnp.abs(y), signed, code) + u).astype(jnp.int32)
    negative = y < 0
    if code == "linear":  # signed: 255 values and a second zero at 128
        signed_index = jnp.where(negative, half - rank, half + rank + (rank > 0).astype(jnp.int32))
    else:  # signed: 127 negative values, zero at 127, 128 positive ones (up to 1)
        rank_signed = jnp.minimum(rank, jnp.where(negative, half, half + 1))
        signed_index = jnp.where(negative, half - rank_signed, half + rank_signed)
    return jnp.where(signed, signed_index, jnp.minimum(rank, CODE_SIZE - 1))


# --- one array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """An array stored as 8-bit block-wise codes: element ``b * block_size + k`` of the
    flattened array (zero-padded to whole blocks) is ``code[codes[b, k]] * scale[b]``.

    ``scale[b]`` is the block's value of largest magnitude, with its sign, so that it is
    stored exactly (code value 1) whatever its sign: the signed dynamic code reaches +1 but
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


@functools.cache
def _values(code: str) -> np.ndarray:
    """The signed code's 256 values, then the unsigned code's (the decoding table)."""
    make = dynamic_code if code == "dynamic" else linear_code
    return np.concatenate([make(True), make(False)])


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedArray)


def _lookup(table: jax.Array, index: jax.Array) -> jax.Array:
    """``table[index]`` elementwise (a gather from a 512-entry constant; fuses into loops)."""
    return table.at[index].get(mode="promise_in_bounds")


def _blocks(x: jax.Array, block_size: int) -> jax.Array:
    """``x`` flattened and zero-padded to ``[num_blocks, block_size]``."""
    flat = x.reshape(-1)
    pad = -flat.shape[0] % block_size
    if pad:
        flat = jnp.concatenate([flat, jnp.zeros((pad,), flat.dtype)])
    return flat.reshape(-1, block_size)


def quantize(
    x: chex.Array,
    block_size: int = 256,
    *,
    code: str = "dynamic",
    seed: jax.Array | None = None,
) -> QuantizedArray:
    """``x`` as a `QuantizedArray`: per block, ``x / scale`` rounded to the nearest code,
    ``scale`` the block's element of largest magnitude (so it is coded exactly as 1).

    With ``seed`` (from `dlopt.core.numerics.state_seed`) each element rounds instead to one of its
    two neighbouring codes, up with probability equal to its distance from the lower one
    (unbiased), the noise hashed from the element index (`dlopt.core.numerics.random_bits`).
    A block of zeros has scale 0 and decodes to zeros. Non-finite inputs are not supported:
    a block holding one decodes to garbage (never an error).
    """
    x = jnp.asarray(x)
    blocks = _blocks(x.astype(jnp.float32), block_size)
    return _quantize_blocks(blocks, *_block_range(blocks), x, code, seed)


def _block_range(blocks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per block ``(max, min)``, one variadic reduction (XLA fuses the producer into it)."""
    init = (jnp.float32(-jnp.inf), jnp.float32(jnp.inf))
    return jax.lax.reduce(
        (blocks, blocks),
        init,
        lambda a, b: (jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1])),
        (1,),
    )


def _quantize_blocks(blocks, high, low, like, code, seed) -> QuantizedArray:
    """Encodes ``blocks`` given their per-block range (from `_block_range`)."""
    f32 = jnp.float32
    signed = low < 0
    scale = jnp.where(-low > high, low, high)  # the value of largest magnitude: codes it as 1
    # y = blocks / scale as two multiplies by per-block factors (no division per element);
    # above 2**64 the block is scaled down first, so that 1 / scale is never subnormal (XLA
    # flushes subnormals to zero on CPU)
    pre = jnp.where(jnp.abs(scale) > f32(2.0**64), f32(2.0**-64), f32(1))
    safe = jnp.where(scale != 0, scale * pre, jnp.ones_like(scale))
    y = blocks * pre[:, None] * (1 / safe)[:, None]
    if seed is None:
        uniform = 0.5
    else:
        bits = numerics.random_bits(blocks.shape, seed)
        uniform = (bits >> jnp.uint32(8)).astype(f32) * f32(2.0**-24)
    index = _encode(y, signed[:, None], code, uniform)
    return QuantizedArray(
        index.astype(jnp.uint8), scale, signed, tuple(like.shape), like.dtype, code
    )


def dequantize(q: QuantizedArray) -> jax.Array:
    """The array ``q`` stores, in its shape and dtype: ``code[codes] * scale`` per block."""
    values = _values(q.code)
    base = jnp.where(q.signed, 0, CODE_SIZE).astype(jnp.int32)[:, None]
    blocks = _lookup(jnp.asarray(values), base + q.codes.astype(jnp.int32))
    flat = (blocks * q.scale[:, None]).reshape(-1)
    return flat[: q.size].reshape(q.shape).astype(q.dtype)


# --- the wrapper


class QuantizedState(NamedTuple):
    """The state of `quantized`: ``tx``'s state with its large float leaves quantized."""

    count: chex.Array  # int32 step (saturating): seeds the stochastic rounding of codes
    inner_state: Any  # tx's state; leaves of >= min_size floats are `QuantizedArray`


@per_leaf
def quantized(
    tx: GradientTransformation,
    bits: int = 8,
    block_size: int = 256,
    min_size: int = 4096,
    *,
    code: str = "dynamic",
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """``tx`` with its state stored in 8 bits: block-wise dynamic quantization.

    Every floating state leaf of ``tx`` with at least ``min_size`` elements (never a scalar)
    is kept as a `QuantizedArray`; smaller leaves (biases, counts) stay as they are. Each
    step, with :math:`S` the state and :math:`Q` its stored form:

    .. math::
        (u_t, S_t) = \\mathrm{tx.update}(g_t, \\mathrm{dequantize}(Q_{t-1})), \\quad
        Q_t = \\mathrm{quantize}(S_t)

    where per block :math:`B` of ``block_size`` elements :math:`s_B` is the element of
    largest magnitude, :math:`q_i = \\mathrm{round}(s_i / s_B)` to a value of the code and
    :math:`\\mathrm{dequantize}(q)_i = \\mathrm{code}[q_i] \\, s_B`. The update comes from
    ``tx``'s float32 new state, as in bitsandbytes' 8-bit optimizers; only what is carried to
    the next step is rounded.

    **Which code.** A block holding a negative value uses the signed dynamic code, any other
    the unsigned one (one more bit of resolution, as the paper uses for Adam's second
    moment). The choice is made per block at every step from the values being stored, so it
    needs no knowledge of ``tx``'s field names and cannot be wrong: a rule fixed once (at
    init all moments are zero) or by name (``nu``, ``sum_of_squares``, ``e_g``, ... for
    every transform ever written) could put negative values into the unsigned code.

    **Rounding.** ``"stochastic"`` (the default) rounds each element to one of its two
    neighbouring codes with probabilities that make the stored value unbiased, the noise
    hashed from the element index, leaf and step (`dlopt.core.numerics.random_bits`: reproducible,
    nothing materialized). Round-to-nearest stalls a slowly moving moment: Adam's ``nu``
    changes by 0.1% per step, less than half a code step (0.35% ... 3.5% of a value), so
    an element that should decay relative to its block maximum keeps its code; on the
    least-squares benchmark nearest rounding ends 19% above float32, stochastic 1.5% below.

    **Memory at peak.** To keep XLA from materializing a float32 copy of the state, the step
    runs ``tx`` three times from the stored inputs (`jax.lax.optimization_barrier` keeps the
    copies apart): once for the block maxima of the new state (reductions only), once to
    encode it straight into its codes, once for the updates. Each pass is one elementwise
    loop; the arithmetic of ``tx`` is tripled, so wrap elementwise rules (the Adam family,
    momentum, RMSProp, ...) rather than transforms with matrix products (Muon, Shampoo).

    Args:
        tx: any transform (dlopt's or optax's), e.g. ``dlopt.adam(1e-3)``. Do not wrap
            copies of the parameters (lookahead's slow weights, schedule-free's ``z``,
            EMA weights): 8 bits are for statistics, not weights.
        bits: bits per code; only 8 (one uint8 per element) is implemented.
        block_size: elements per scale (>= 1); the scale costs 5 / block_size bytes per
            element (a float32 and a bool).
        min_size: leaves with fewer elements stay unquantized (>= 0).
        code: ``"dynamic"`` (Dettmers et al.) or ``"linear"`` (equally spaced values, for
            comparison: small second moments round to zero and the update ``m / sqrt(v)``
            blows up; it diverges on both benchmark problems).
        state_rounding: ``"stochastic"`` (default) or ``"nearest"`` rounding of the codes.

    Returns:
        A `GradientTransformationExtraArgs` with state `QuantizedState`; extra arguments
        such as ``value=`` are passed to ``tx``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.quantized(dlopt.adam(1e-3))
        >>> state = jax.jit(tx.init)({"w": jnp.zeros((512, 512))})
        >>> state.inner_state[0].mu["w"].codes.dtype
        dtype('uint8')

    References:
        Dettmers, Lewis, Shleifer and Zettlemoyer, 2022, "8-bit Optimizers via Block-wise
        Quantization", ICLR; bitsandbytes (``functional.create_dynamic_map``).
    """
    validation.check_transformation("tx", tx)
    validation.check_int("bits", bits, 1)
    if bits != 8:
        raise ValueError(f"bits must be 8 (only 8-bit codes are implemented), got bits={bits}.")
    validation.check_int("block_size", block_size, 1)
    validation.check_int("min_size", min_size, 0)
    validation.check_choice("code", code, CODES)
    numerics.check_rounding(state_rounding)
    inner = with_extra_args_support(tx)

    def quantizable(x):
        return _floating(x) and x.size >= min_size

    def seed(count, leaf):
        return None if state_rounding == "nearest" else numerics.state_seed(count, leaf, 3)

    def init_fn(params):
        # The barrier keeps XLA from constant-folding the encoding of a zero-initialised
        # state (its host-side evaluator takes minutes and the memory of the whole tree).
        leaves, treedef = jax.tree.flatten(jax.lax.optimization_barrier(inner.init(params)))
        count = jnp.zeros([], jnp.int32)
        stored = [
            quantize(x, block_size, code=code, seed=seed(count, i)) if quantizable(x) else x
            for i, x in enumerate(leaves)
        ]
        return QuantizedState(count, treedef.unflatten(stored))

    def update_fn(updates, state, params=None, **extra_args):
        count = tree_lib.safe_increment(state.count)
        stored, treedef = jax.tree.flatten(state.inner_state, is_leaf=_is_quantized)

        def run(updates, stored, params):
            decoded = [dequantize(x) if _is_quantized(x) else x for x in stored]
            out, new_state = inner.update(updates, treedef.unflatten(decoded), params, **extra_args)
            return out, treedef.flatten_up_to(new_state)

        def as_blocks(new, old):
            return _blocks(jnp.asarray(new).astype(jnp.float32).reshape(old.shape), block_size)

        which = [i for i, x in enumerate(stored) if _is_quantized(x)]
        # Pass 1: the block ranges of the new state (reductions; nothing else is kept).
        _, new = run(updates, stored, params)
        ranges = {i: _block_range(as_blocks(new[i], stored[i])) for i in which}
        # Pass 2: the new state again, straight into its codes; the barrier makes XLA
        # recompute it from the inputs instead of keeping a float32 copy from pass 1.
        again = jax.lax.optimization_barrier((updates, stored, params, ranges))
        _, new = run(*again[:3])
        ranges = again[3]
        # Pass 3: the updates, from the stored state once more (fused into their consumer).
        out, _ = run(*jax.lax.optimization_barrier((updates, stored, params)))
        kept = list(new)
        for i in which:
            old = stored[i]
            blocks = as_blocks(new[i], old)
            kept[i] = _quantize_blocks(blocks, *ranges[i], old, code, seed(count, i))
        return out, QuantizedState(count, treedef.unflatten(kept))

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _floating(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0
