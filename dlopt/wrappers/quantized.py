"""Block-wise 8-bit or 4-bit optimizer state around any transform (Dettmers et al., 2022;
Li et al., 2023).

`quantized` stores every floating state leaf of ``tx`` with at least ``min_size`` elements as
`QuantizedArray` (8 bits: one uint8 code per element plus one float32 scale and a sign flag
per block of ``block_size`` elements, 1 + 5 / block_size bytes per element instead of 4) or
`dlopt.wrappers.quantized4.Quantized4Array` (4 bits, two codes a byte). Inside ``update`` the
codes are decoded, ``tx`` runs on the float32 state and its new state is encoded again, in
the one jitted step, a chunk at a time when ``tx`` is elementwise (`dlopt.wrappers.chunked`),
so no float32 copy of the state is materialized.

The 8-bit codes are the *dynamic* (non-linear) data type of Dettmers et al.
(`dlopt.wrappers.codes8`): an exponent that falls from 10^0 to 10^-6 with the fraction bits
that remain, so small values relative to the block's absolute maximum keep their relative
precision (a linear code would round them to 0).
"""

from __future__ import annotations

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
from dlopt.wrappers import chunked, codes4, elementwise
from dlopt.wrappers import quantized4 as q4
from dlopt.wrappers.codes8 import CODES
from dlopt.wrappers.quantized_array import (
    QuantizedArray,
    dequantize,
    encode_blocks,
    is_quantized,
    quantize,
    to_blocks,
)

SECOND_MOMENTS = ("nu", "nu_max", "v", "exp_avg_sq", "sum_of_squares")
CHUNK = 1 << 15  # elements decoded, updated and encoded at a time (a few float32 arrays fit in L2)


# --- the wrapper


class QuantizedState(NamedTuple):
    """The state of `quantized`: ``tx``'s state with its large float leaves quantized."""

    count: chex.Array  # int32 step (saturating): seeds the stochastic rounding of codes
    inner_state: Any  # tx's state; leaves of >= min_size floats are `QuantizedArray`


@per_leaf
def quantized(
    tx: GradientTransformation,
    bits: int = 8,
    block_size: int | None = None,
    min_size: int = 4096,
    *,
    code: str = "dynamic",
    state_rounding: str = "stochastic",
    second_moments: tuple[str, ...] = SECOND_MOMENTS,
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

    **Memory at peak.** When ``tx`` is elementwise (`dlopt.wrappers.elementwise` finds it from
    the trace), each param leaf with quantized state runs chunk by chunk (`CHUNK` elements, a
    whole number of blocks): decode the chunk's codes, run ``tx`` on the slices, encode the new
    state into the chunk's codes and write the update over the gradient's slice, in one loop
    that updates its buffers in place (`dlopt.wrappers.chunked`). The step holds the params,
    the gradients, the codes and a few chunks, never a float32 copy of the state; ``init``
    writes zero state as codes of zero and encodes any other state chunk by chunk. Other
    transforms (a global-norm clip in the chain, shape-reading rules) take a whole-leaf path,
    exact as well, that holds the decoded state during the step.

    **Non-finite values.** A block's scale is taken over its finite elements, and a NaN or
    infinite element is stored as 0 (in 4 bits: a first moment 0, a second moment the top of
    its scale), so one NaN gradient element gives one NaN parameter, as in float32 Adam, and
    the other elements of its block keep their state.

    **4 bits** (``bits=4``, Li et al. 2023): a signed state leaf in the signed
    dynamic-exponent code with blocks of ``block_size`` (128 by default); a leaf named in
    ``second_moments`` (a field name on its path in the state, e.g. Adam's ``nu``) is taken
    as non-negative and stored in the linear code without a zero point (a small ``v`` never
    decodes to 0) with rank-1 normalization, ``scale(i, j) = min(max of row i, max of column
    j)`` (blocks of 128 for a leaf with one axis longer than 1); two codes a byte
    (`dlopt.wrappers.quantized4`, `dlopt.wrappers.codes4`). A second moment's maxima are
    computed in one more pass of ``tx`` over the chunks before it is encoded.

    Args:
        tx: any transform (dlopt's or optax's), e.g. ``dlopt.adam(1e-3)``. Do not wrap
            copies of the parameters (lookahead's slow weights, schedule-free's ``z``,
            EMA weights): 8 bits are for statistics, not weights.
        bits: 8 (one uint8 per element) or 4 (two codes a byte, see above).
        block_size: elements per scale (>= 1; even for 4 bits); None: 256 for 8 bits, 128 for
            4. In 8 bits the scale costs 5 / block_size bytes per element (a float32, a bool).
        min_size: leaves with fewer elements stay unquantized (>= 0).
        code: ``"dynamic"`` (Dettmers et al.) or ``"linear"`` (equally spaced values, for
            comparison: small second moments round to zero and the update ``m / sqrt(v)``
            blows up; it diverges on both benchmark problems).
        state_rounding: ``"stochastic"`` (default) or ``"nearest"`` rounding of the codes.
        second_moments: with ``bits=4``, the state field names of non-negative second
            moments (default ``SECOND_MOMENTS``: ``nu``, ``nu_max``, ``v``, ``exp_avg_sq``,
            ``sum_of_squares``); any other quantized leaf gets the signed code.

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
        Quantization", ICLR; bitsandbytes (``functional.create_dynamic_map``); Li, Chen and
        Zhu, 2023, "Memory Efficient Optimizers with 4-bit States", NeurIPS.
    """
    validation.check_transformation("tx", tx)
    validation.check_int("bits", bits, 1)
    if bits not in (4, 8):
        raise ValueError(f"bits must be 8 or 4 (the codes implemented), got bits={bits}.")
    if block_size is None:
        block_size = 256 if bits == 8 else codes4.BLOCK_SIZE
    validation.check_int("block_size", block_size, 1)
    if bits == 4 and block_size % 2:
        raise ValueError(f"block_size must be even with bits=4 (2 codes a byte), got {block_size}.")
    validation.check_int("min_size", min_size, 0)
    validation.check_choice("code", code, CODES)
    numerics.check_rounding(state_rounding)
    if isinstance(second_moments, str) or not all(isinstance(n, str) for n in second_moments):
        raise TypeError(
            f"second_moments must be a tuple of field names, got second_moments={second_moments!r}."
        )
    second_moments = tuple(second_moments)
    inner = with_extra_args_support(tx)

    def quantizable(x):
        return _floating(x) and x.size >= min_size

    def kinds(abstract_state):
        """Per state leaf: None (kept as is), "q8", or a 4-bit kind."""
        found = []
        for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
            if not quantizable(x):
                found.append(None)
            elif bits == 8:
                found.append("q8")
            else:
                names = {getattr(k, "name", None) for k in path}
                found.append(q4.kind_of(tuple(x.shape), bool(names & set(second_moments))))
        return found

    def blank(x, kind):
        """``x``'s stored form when it is zero (flat if not quantized)."""
        if kind is None:
            return jnp.zeros((x.size,), x.dtype)
        if kind != "q8":
            return q4.blank4(tuple(x.shape), x.dtype, kind, block_size)
        blocks = -(-x.size // block_size)
        return QuantizedArray(
            jnp.zeros((blocks, block_size), jnp.uint8),
            jnp.zeros((blocks,), jnp.float32),
            jnp.zeros((blocks,), jnp.bool_),
            tuple(x.shape),
            x.dtype,
            code,
        )

    def encode_whole(x, kind, seed):
        if kind is None:
            return x
        if kind == "q8":
            return quantize(x, block_size, code=code, seed=seed)
        return q4.quantize4(x, kind, block_size, seed)

    def seeds(count, num):
        if state_rounding == "nearest":
            return [None] * num
        return [numerics.state_seed(count, i, 3) for i in range(num)]

    def owners_for(params, abstract):
        """The state leaves' param leaves if ``tx`` runs chunk by chunk here, else None."""
        owners = elementwise.leaf_owners(inner.init, params)
        sizes = [x.size for x in jax.tree.leaves(params)]
        if owners is None or len(owners) != len(abstract):
            return None
        if any(o >= 0 and x.size != sizes[o] for o, x in zip(owners, abstract, strict=True)):
            return None
        return owners

    def init_impl(params):
        shapes = jax.eval_shape(inner.init, params)
        abstract, treedef = jax.tree.flatten(shapes)
        kind = kinds(shapes)
        count = jnp.zeros([], jnp.int32)
        sd = seeds(count, len(abstract))
        owners = owners_for(params, abstract)
        if owners is None:  # not elementwise: encode the whole state (inside this jit)
            # the barrier keeps XLA from constant-folding the encoding of a zero state
            leaves = jax.tree.leaves(jax.lax.optimization_barrier(inner.init(params)))
            stored = [encode_whole(x, kind[i], sd[i]) for i, x in enumerate(leaves)]
            return QuantizedState(count, treedef.unflatten(stored))
        lean = {owners[i] for i in range(len(abstract)) if kind[i] is not None}
        p_leaves, p_def = jax.tree.flatten(params)
        rest = [chunked.empty_like(x) if j in lean else x for j, x in enumerate(p_leaves)]
        stored = jax.tree.leaves(inner.init(p_def.unflatten(rest)))
        zero = elementwise.zero_leaves(inner.init, params)
        for i, x in enumerate(abstract):  # a zero leaf's codes: all 0 (no float32 state)
            if owners[i] in lean and i in zero:
                stored[i] = blank(x, kind[i]) if kind[i] else jnp.zeros(x.shape, x.dtype)
        for j in sorted(lean):
            mine = {
                i: blank(x, kind[i])
                for i, x in enumerate(abstract)
                if owners[i] == j and i not in zero
            }
            if mine:
                rule = lambda leaves: jax.tree.leaves(inner.init(p_def.unflatten(leaves)))  # noqa: E731
                new = chunked.init_leaf(j, rule, p_leaves, mine, CHUNK, sd)
                for i, x in new.items():
                    stored[i] = x if _is_stored(x) else x.reshape(abstract[i].shape)
        return QuantizedState(count, treedef.unflatten(stored))

    def update_impl(updates, state, params, extra_args):
        count = tree_lib.safe_increment(state.count)
        stored, treedef = jax.tree.flatten(state.inner_state, is_leaf=_is_stored)
        sd = seeds(count, len(stored))
        u_leaves, u_def = jax.tree.flatten(updates)
        p_leaves = None if params is None else u_def.flatten_up_to(params)
        abstract = [_abstract(x) for x in stored]
        owners = owners_for(updates, abstract)

        def rule(u, s, p):
            out, new = inner.update(
                u_def.unflatten(u),
                treedef.unflatten(s),
                None if p is None else u_def.unflatten(p),
                **extra_args,
            )
            return u_def.flatten_up_to(out), treedef.flatten_up_to(new)

        if owners is not None and not elementwise.update_is_elementwise(
            lambda u, s, p: inner.update(u, s, p, **extra_args),
            updates,
            treedef.unflatten(abstract),
            params,
            owners,
        ):
            owners = None
        if owners is None:  # not elementwise: decode everything, update, encode
            out, new = rule(u_leaves, [_decode(x) for x in stored], p_leaves)
            kept = [
                _encode_like(new[i], x, sd[i]) if _is_stored(x) else new[i]
                for i, x in enumerate(stored)
            ]
            return u_def.unflatten(out), QuantizedState(count, treedef.unflatten(kept))
        lean = {owners[i] for i, x in enumerate(stored) if _is_stored(x)}
        empty = chunked.empty_like

        def drop(leaves):
            if leaves is None:
                return None
            return [empty(x) if j in lean else x for j, x in enumerate(leaves)]

        rest_state = [empty(x) if owners[i] in lean else x for i, x in enumerate(stored)]
        out, kept = rule(drop(u_leaves), rest_state, drop(p_leaves))
        for j in sorted(lean):
            flat, new = chunked.run_leaf(j, owners, rule, u_leaves, stored, p_leaves, CHUNK, sd)
            out[j] = flat.reshape(jnp.shape(u_leaves[j]))
            for i, x in new.items():
                kept[i] = x if _is_stored(x) else x.reshape(jnp.shape(stored[i]))
        return u_def.unflatten(out), QuantizedState(count, treedef.unflatten(kept))

    def _encode_like(new, old, seed):
        new = jnp.asarray(new).reshape(old.shape)
        if isinstance(old, q4.Quantized4Array):
            return q4.quantize4(new, old.kind, block_size, seed)
        codes, scale, signed = encode_blocks(to_blocks(new, block_size), old.code, seed)
        return QuantizedArray(codes, scale, signed, old.shape, old.dtype, old.code)

    init_jit = jax.jit(init_impl)
    update_jit = jax.jit(update_impl)

    def init_fn(params):
        return init_jit(params)

    def update_fn(updates, state, params=None, **extra_args):
        plain = (jax.Array, np.ndarray, float, int)
        if all(isinstance(x, plain) for x in jax.tree.leaves(extra_args)):
            return update_jit(updates, state, params, extra_args)
        return update_impl(updates, state, params, extra_args)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _is_stored(x: Any) -> bool:
    return is_quantized(x) or isinstance(x, q4.Quantized4Array)


def _decode(x: Any) -> Any:
    if isinstance(x, q4.Quantized4Array):
        return q4.dequantize4(x)
    return dequantize(x) if is_quantized(x) else x


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype)


def _floating(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and x.ndim > 0
