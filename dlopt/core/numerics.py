"""Per-leaf numerics every update rule shares: dtypes, bias correction, moments, storage.

One home for the rules that would otherwise be copied into each optimizer file:

* arithmetic runs in `compute_dtype` (float32, or float64/complex for such leaves), whatever
  the dtype the state is stored in;
* `ema`, `abs_sq` (``|g|^2 = g * conj(g)`` for complex parameters) and `unbias`;
* `store`: writing a freshly computed moment into its storage dtype, with **stochastic
  rounding** when that dtype is narrower, from a counter-based hash of the element index,
  the leaf, the moment and the step (`state_seed`). No random array is materialized, so the
  rounding fuses into the update loop; runs are reproducible and resume exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from dlopt.core import validation
from dlopt.core.tree import dtype_of, safe_increment, scalar_like

ROUNDINGS = ("stochastic", "nearest")


# --- dtypes


def canonical_dtype(dtype: Any | None) -> Any | None:
    """``dtype`` as the dtype JAX will really use (float64 -> float32 without x64), or None."""
    return None if dtype is None else jax.dtypes.canonicalize_dtype(dtype)


def wider_float(a: Any, b: Any) -> Any:
    """The float dtype with more bits (``b`` on a tie); no implicit promotion involved."""
    return a if jnp.finfo(a).bits > jnp.finfo(b).bits else b


def compute_dtype(*dtypes: Any) -> Any:
    """The dtype update arithmetic runs in: float32, float64 if any input is float64, and
    complex64/complex128 if any input is complex (never narrower than 32 bits)."""
    dtypes = [jnp.dtype(d) for d in dtypes]
    wide = any(d.itemsize >= 8 and not jnp.issubdtype(d, jnp.complexfloating) for d in dtypes)
    wide = wide or any(d == jnp.complex128 for d in dtypes)
    if any(jnp.issubdtype(d, jnp.complexfloating) for d in dtypes):
        return jnp.dtype(jnp.complex128 if wide else jnp.complex64)
    return jnp.dtype(jnp.float64 if wide else jnp.float32)


def scalar_dtype(params: chex.ArrayTree) -> Any:
    """The real dtype of an optimizer's scalar state (step sizes, weight sums, distance
    estimates): float32, float64 when a parameter is float64 or complex128. Never the
    parameters' narrowest dtype: a bfloat16 running sum stops growing after a few hundred
    steps. Canonical: float32 for float64 (numpy) leaves while x64 is off."""
    dtypes = [dtype_of(p) for p in jax.tree.leaves(params)]
    return canonical_dtype(jnp.finfo(compute_dtype(jnp.float32, *dtypes)).dtype)


def moment_dtype(
    name: str, optax_dtype: Any | None, mu_dtype: Any | None, optax_default: Any | None = None
) -> Any | None:
    """The storage dtype of a first-moment buffer that optax names ``name`` (e.g. sgd's
    ``accumulator_dtype``, adafactor's ``dtype_momentum``) and dlopt ``mu_dtype``.

    ``mu_dtype`` wins over an ``optax_dtype`` left at its default ``optax_default``; two
    different explicit dtypes raise, naming both arguments; a non-dtype or a non-floating
    dtype raises naming its own (`dlopt.core.validation.check_storage_dtype`).
    """
    resolved = {
        arg: validation.check_storage_dtype(arg, value)
        for arg, value in ((name, optax_dtype), ("mu_dtype", mu_dtype))
    }
    optax_value, mu = resolved[name], resolved["mu_dtype"]
    if mu is None:
        return optax_value
    default = canonical_dtype(optax_default)
    if optax_value is not None and optax_value != default and optax_value != mu:
        raise ValueError(
            f"{name} and mu_dtype name the same buffer; pass one of them, got "
            f"{name}={optax_dtype!r} and mu_dtype={mu_dtype!r}."
        )
    return mu


def check_betas(b1: chex.Numeric, b2: chex.Numeric) -> None:
    """``b1`` and ``b2`` in [0, 1), naming the bad one."""
    validation.check_in_range("b1", b1, 0.0, 1.0)
    validation.check_in_range("b2", b2, 0.0, 1.0)


def check_rounding(state_rounding: str) -> None:
    if state_rounding not in ROUNDINGS:
        raise ValueError(
            f"state_rounding must be one of {ROUNDINGS}, got state_rounding={state_rounding!r}."
        )


def widen(x: chex.Array) -> chex.Array:
    """``x`` in its `compute_dtype`: float32 (float64 or complex where ``x`` is), the dtype
    every update rule, norm and inner product accumulates in."""
    x = jnp.asarray(x)
    return x.astype(compute_dtype(x.dtype))


# --- norms and inner products over trees (accumulated at full precision)


def squared_norm(tree: chex.ArrayTree, dtype: Any | None = None) -> chex.Array:
    """``sum over leaves of sum(|x|^2)`` (``|z|^2 = z conj(z)`` for complex leaves), each
    leaf `widen`-ed; summed in ``dtype``, by default float32 (float64 if a leaf is)."""
    total = jnp.zeros((), dtype or jnp.float32)
    for x in jax.tree.leaves(tree):
        term = jnp.sum(abs_sq(widen(x)))
        wide = total.dtype if dtype is not None else wider_float(total.dtype, term.dtype)
        total = total.astype(wide) + term.astype(wide)
    return total


def global_norm(updates: chex.ArrayTree) -> chex.Array:
    """``sqrt(sum over leaves of sum(|x|^2))``, accumulated and returned in float32 (float64
    if a leaf is). optax's deprecated ``optax.global_norm`` returns the leaves' dtype (a
    bfloat16 norm for bfloat16 updates); `dlopt.tree.norm` does too."""
    return jnp.sqrt(squared_norm(updates))


def vdot_leaf(a: chex.Array, b: chex.Array) -> jax.Array:
    """``sum(conj(a) * b)`` for one pair of same-shape arrays, in their promoted dtype: one
    contraction at the highest precision, no ``ravel`` (which would gather a sharded leaf);
    under explicit sharding the scalar comes back replicated."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    a = jnp.conj(a) if jnp.iscomplexobj(a) else a
    mesh = jax.typeof(a).sharding.mesh
    out = NamedSharding(mesh, PartitionSpec()) if mesh.are_all_axes_explicit else None
    return jnp.tensordot(a, b, a.ndim, precision=jax.lax.Precision.HIGHEST, out_sharding=out)


def real_vdot(x: chex.ArrayTree, y: chex.ArrayTree, dtype: Any | None = None) -> jax.Array:
    """``Re <x, y> = Re sum conj(x) y`` over all leaves (one `vdot_leaf` per leaf, each pair
    widened to its `compute_dtype`), summed in ``dtype`` (default float32, float64 if a leaf
    is)."""
    pairs = list(zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True))
    if dtype is None:
        wide = [
            jnp.finfo(compute_dtype(jnp.result_type(a), jnp.result_type(b))).dtype for a, b in pairs
        ]
        dtype = jnp.float64 if jnp.dtype(jnp.float64) in wide else jnp.float32
    total = jnp.zeros((), dtype)
    for a, b in pairs:
        a, b = jnp.asarray(a), jnp.asarray(b)
        f = compute_dtype(a.dtype, b.dtype)
        total = total + jnp.real(vdot_leaf(a.astype(f), b.astype(f))).astype(dtype)
    return total


def safe_norm(
    x: chex.Array,
    min_norm: chex.Numeric,
    ord: int | float | str | None = None,
    axis: None | tuple[int, ...] | int = None,
    keepdims: bool = False,
) -> jax.Array:
    """``max(||x||, min_norm)`` with a gradient of 0 (not NaN) where ``||x|| <= min_norm``.

    ``jnp.maximum(jnp.linalg.norm(x), min_norm)`` differentiates both branches, and the
    norm's gradient ``x / ||x||`` is NaN at 0; here ``x`` is replaced by ones wherever the
    norm is below ``min_norm`` before the norm is taken, so that branch is finite.
    ``ord``, ``axis`` and ``keepdims`` are those of ``jnp.linalg.norm``.

    >>> import jax, jax.numpy as jnp
    >>> from dlopt.core.numerics import safe_norm
    >>> jax.grad(lambda x: safe_norm(x, 1e-6))(jnp.zeros(2))
    Array([0., 0.], dtype=float32)
    """
    norm = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=True)
    x = jnp.where(norm <= min_norm, jnp.ones_like(x), x)
    norm = jnp.squeeze(norm, axis=axis) if not keepdims else norm
    masked_norm = jnp.linalg.norm(x, ord=ord, axis=axis, keepdims=keepdims)
    return jnp.where(norm <= min_norm, min_norm, masked_norm)


def safe_root_mean_squares(x: chex.Array, min_rms: chex.Numeric) -> jax.Array:
    """``max(sqrt(mean(|x|^2)), min_rms)`` with a finite (zero) gradient below ``min_rms``,
    by the same masking as `safe_norm`."""
    rms = jnp.sqrt(jnp.mean(abs_sq(x)))
    x = jnp.where(rms <= min_rms, jnp.ones_like(x), x)
    return jnp.where(rms <= min_rms, min_rms, jnp.sqrt(jnp.mean(abs_sq(x))))


# --- moments


def ema(moment: chex.Array, x: chex.Array, decay: chex.Numeric) -> chex.Array:
    """Exponential moving average ``m <- decay * m + (1 - decay) * x``, in ``m``'s dtype.

    ``1 - decay`` is formed before the cast (in double precision for a Python float), as
    optax and torch do: ``1 - float32(0.999)`` is off by 1.3e-5 relative.
    """
    return scalar_like(decay, moment) * moment + scalar_like(1 - decay, moment) * x.astype(
        moment.dtype
    )


def abs_sq(x: chex.Array) -> chex.Array:
    """``|x|^2`` elementwise, real: ``x * conj(x)`` for complex ``x``, ``x * x`` otherwise."""
    if jnp.iscomplexobj(x):
        return jnp.real(x * jnp.conj(x))
    return jnp.square(x)


def bias_correction(decay: chex.Numeric, count: chex.Array) -> chex.Array:
    """``1 - decay ** count`` in float32, the divisor that unbiases a zero-started moment."""
    decay = jnp.asarray(decay).astype(jnp.float32)
    return 1 - decay ** jnp.asarray(count).astype(jnp.float32)


def unbias(x: chex.Array, decay: chex.Numeric, count: chex.Array) -> chex.Array:
    """``x / (1 - decay**count)``: the correction is computed in float32, then cast."""
    return x / bias_correction(decay, count).astype(x.dtype)


def unbias_momentum(
    m: chex.Array, g: chex.Array, decay: chex.Numeric, count: chex.Array, *, nesterov: bool
) -> chex.Array:
    """The bias-corrected first moment ``m / (1 - decay**t)`` (``t = count``), or with
    ``nesterov`` Nadam's look-ahead (Dozat, 2016) as optax writes it:
    ``decay * m / (1 - decay**(t+1)) + (1 - decay) * g / (1 - decay**t)``."""
    if not nesterov:
        return unbias(m, decay, count)
    ahead = scalar_like(decay, m) * unbias(m, decay, safe_increment(count))
    return ahead + scalar_like(1 - decay, m) * unbias(g, decay, count)


# --- storage with stochastic rounding


def _u32(value: int) -> jax.Array:
    return jnp.asarray(np.uint32(value & 0xFFFFFFFF))


def _mix(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finalizer: a bijection of uint32 with full avalanche."""
    h = h ^ (h >> _u32(16))
    h = h * _u32(0x85EBCA6B)
    h = h ^ (h >> _u32(13))
    h = h * _u32(0xC2B2AE35)
    return h ^ (h >> _u32(16))


def state_seed(count: chex.Array, leaf: int, salt: int = 0) -> jax.Array:
    """A uint32 seed for the stochastic rounding of one state buffer at one step.

    ``count`` is the (traced) step, ``leaf`` the buffer's position in its tree and ``salt``
    tells the moments of one rule apart (e.g. 1 for ``mu``, 2 for ``nu``).
    """
    step = jnp.asarray(count).astype(jnp.uint32)
    key = _u32(leaf * 0x9E3779B1 + salt * 0x7F4A7C15 + 0x632BE5AB)
    return _mix(_mix(step ^ key) + key)


def random_bits(shape: tuple[int, ...], seed: jax.Array) -> jax.Array:
    """One uint32 per element: a hash of (row-major element index, ``seed``).

    Nothing random is materialized: the bits are a pure function of the index, so they fuse
    into the loop that consumes them (the noise of stochastic rounding costs no memory).
    ``seed`` comes from `state_seed`.
    """
    size = int(np.prod(shape, dtype=np.int64))
    index = jax.lax.iota(jnp.uint32, max(size, 1)).reshape(shape)
    return _mix(index * _u32(0x9E3779B1) + seed)


def _bf16_stochastic(x: jax.Array, bits: jax.Array) -> jax.Array:
    """float32 -> bfloat16 rounding up with probability equal to the dropped fraction."""
    raw = jax.lax.bitcast_convert_type(x, jnp.uint32)
    rounded = (raw + (bits >> _u32(16))) & _u32(0xFFFF0000)
    y = jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(jnp.bfloat16)
    return jnp.where(jnp.isfinite(x), y, x.astype(jnp.bfloat16))


def _generic_stochastic(x: jax.Array, dtype: Any, bits: jax.Array) -> jax.Array:
    """Any narrower float: pick the upper neighbour with probability ``(x - lo) / (hi - lo)``."""
    nearest = x.astype(dtype)
    above = nearest.astype(x.dtype) > x
    # towards -max/+max rather than -inf/+inf: float8_e4m3fn and the *fnuz dtypes have no
    # infinity (inf casts to NaN there, and nextafter towards NaN is NaN)
    big = jnp.finfo(dtype).max
    other = jnp.nextafter(nearest, jnp.where(above, -big, big).astype(dtype))
    lo = jnp.where(above, other, nearest)
    hi = jnp.where(above, nearest, other)
    lo_w, hi_w = lo.astype(x.dtype), hi.astype(x.dtype)
    gap = hi_w - lo_w
    p_up = jnp.where(gap > 0, (x - lo_w) / jnp.where(gap > 0, gap, jnp.ones_like(gap)), 0)
    uniform = (bits >> _u32(8)).astype(x.dtype) * scalar_like(2.0**-24, x)
    y = jnp.where(uniform < p_up, hi, lo)
    return jnp.where(jnp.isfinite(x) & jnp.isfinite(hi_w), y, nearest)


def is_narrower(dtype: Any, than: Any) -> bool:
    """Whether float ``dtype`` has fewer bits than float ``than`` (storing loses precision)."""
    dtype, than = jnp.dtype(dtype), jnp.dtype(than)
    if not (jnp.issubdtype(dtype, jnp.floating) and jnp.issubdtype(than, jnp.floating)):
        return False
    return jnp.finfo(dtype).bits < jnp.finfo(than).bits or (
        jnp.finfo(dtype).nmant < jnp.finfo(than).nmant
    )


def store(
    x: chex.Array, dtype: Any, seed: jax.Array | None = None, rounding: str = "stochastic"
) -> chex.Array:
    """``x`` (computed at full precision) written into its storage ``dtype``.

    Into a narrower float with ``rounding="stochastic"`` each element rounds up with
    probability equal to its distance from the lower neighbour, so the stored value is
    unbiased: ``E[store(x)] = x``. Round-to-nearest would let ``0.999 * v`` round back to
    ``v`` in bfloat16, and a slowly decaying moment would stop decaying (Zamirai et al.,
    2020, "Revisiting BFloat16 Training"). ``seed`` comes from `state_seed`; without it (or
    with ``rounding="nearest"``, or a dtype that is not narrower) this is a plain cast.
    """
    x = jnp.asarray(x)
    dtype = jnp.dtype(dtype)
    if rounding == "nearest" or seed is None or not is_narrower(dtype, x.dtype):
        return x.astype(dtype)
    bits = random_bits(x.shape, seed)
    if dtype == jnp.bfloat16 and x.dtype == jnp.float32:
        stored = _bf16_stochastic(x, bits)
    else:
        stored = _generic_stochastic(x, dtype, bits)
    # The stored moment is both a step's output and the input of its update (rules compute
    # the update from the stored value). Without the barrier XLA fuses the cheap select at
    # the end into both consumers, cannot duplicate the hash, and materializes its pieces:
    # ~10 bytes of temporaries per parameter for bf16 Adam, peak above float32's. With it,
    # the moment is computed in one loop straight into its (donated) output buffer and the
    # update loop reads it from there, as for a plain cast: no full-size temporaries.
    return jax.lax.optimization_barrier(stored)


class StateWriter(NamedTuple):
    """Stores one step's new state buffers: ``put(x, old, leaf, salt)`` writes ``x`` (full
    precision) in ``old``'s dtype with `store`, seeded by (step, leaf, salt)."""

    count: jax.Array  # the step the seeds derive from
    rounding: str = "stochastic"

    def put(self, x: chex.Array, old: chex.Array, leaf: int, salt: int) -> chex.Array:
        seed = None if self.rounding == "nearest" else state_seed(self.count, leaf, salt)
        return store(x, jnp.result_type(old), seed, self.rounding)


def leaf_indices(tree: chex.ArrayTree) -> chex.ArrayTree:
    """``tree`` with each leaf replaced by its position in flattening order (an int)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(list(range(len(leaves))))


def out_dtypes(
    updates: chex.ArrayTree, params: chex.ArrayTree | None, like: chex.ArrayTree | None = None
) -> chex.ArrayTree:
    """The dtype each update comes back in, as a tree of dtypes shaped like ``updates``: the
    parameter's; without params, that of ``like`` (a state tree kept in the parameters'
    dtypes), else the gradient's."""
    reference = params if params is not None else like if like is not None else updates
    leaves, treedef = jax.tree.flatten(updates)
    return treedef.unflatten([dtype_of(r) for r in treedef.flatten_up_to(reference)])
