"""Whether a transform is elementwise, found from its trace, and which state leaf is whose.

`dlopt.quantized` runs an elementwise transform chunk by chunk (decode, update, encode a few
blocks at a time), which is exact only if every element of the new state and the update
depends on the same element of the inputs and on scalars. This module finds that out by
tracing ``tx.init`` and ``tx.update`` on 1-D stand-ins of the params (leaf ``j`` of size
``j + 2``, so every state leaf names its param leaf by its size):

* every operation on non-scalars is elementwise (arithmetic, comparisons, selects, casts,
  broadcasts of scalars; no reductions, reshapes, iotas, gathers, random bits, loops);
* the trace is the same with other sizes (a Python-level ``x.size`` or ``x.shape`` in the
  rule would show up as a different constant);
* every state leaf is a scalar or has exactly the shape of one param leaf.

The per-element noise of stochastic rounding hashes the element index (an iota), so such a
rule (e.g. ``adam(mu_dtype=jnp.bfloat16)``) is not elementwise here and takes the whole-leaf
path, which is just as exact.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

ELEMENTWISE = frozenset(
    """abs acos acosh add and asin asinh atan atan2 atanh bitcast_convert_type cbrt ceil clamp
    conj convert_element_type copy copy_p cos cosh div eq erf erf_inv erfc exp exp2 expm1 floor
    ge gt imag integer_pow is_finite le lgamma digamma log log1p logistic lt max min mul ne neg
    nextafter not or population_count pow real reduce_precision rem round rsqrt select_n
    shift_left shift_right_arithmetic shift_right_logical sign sin sinh sqrt square stop_gradient
    sub tan tanh xor""".split()
)
CALLS = frozenset("pjit jit closed_call core_call custom_jvp_call custom_vjp_call remat".split())


def _scalar(var: Any) -> bool:
    return getattr(var.aval, "shape", None) == ()


def _jaxprs(params: dict) -> list[jex.Jaxpr]:
    found = []
    for value in params.values():
        if isinstance(value, jex.ClosedJaxpr):
            found.append(value.jaxpr)
        elif isinstance(value, jex.Jaxpr):
            found.append(value)
    return found


def _elementwise(jaxpr: jex.Jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if all(map(_scalar, [*eqn.invars, *eqn.outvars])):
            continue
        if name in CALLS:
            if all(map(_elementwise, _jaxprs(eqn.params))):
                continue
            return False
        if name == "broadcast_in_dim" and _scalar(eqn.invars[0]):
            continue
        if name not in ELEMENTWISE:
            return False
    return True


_SHAPES = re.compile(r"\[[0-9,]*\]|shape=\([0-9, ]*\)|sizes=\([0-9, ]*\)")
_SPACES = re.compile(r"\s+")


def _text(closed: jex.ClosedJaxpr) -> str:
    """The trace with its shapes and line breaks taken out."""
    return _SPACES.sub(" ", _SHAPES.sub("[]", str(closed)))


def _vectors(tree: Any, sizes: list[int]) -> Any:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten(
        [
            jax.ShapeDtypeStruct(() if n < 0 else (n,), jnp.result_type(x))
            for x, n in zip(leaves, sizes, strict=True)
        ]
    )


def leaf_owners(init: Any, params: Any) -> tuple[int, ...] | None:
    """For each leaf of ``init(params)``'s state (flattened) the index of the param leaf it
    belongs to, or -1 for a scalar; None if some state leaf is neither a scalar nor shaped
    like exactly one param leaf, or if ``init`` is not elementwise."""
    num = len(jax.tree.leaves(params))
    owners, texts = None, []
    try:
        for base in (num + 2, 2 * num + 5):
            stand = _vectors(params, [base + j for j in range(num)])
            closed = jax.make_jaxpr(init)(stand)
            if not _elementwise(closed.jaxpr):
                return None
            texts.append(_text(closed))
            found = []
            for x in closed.out_avals:
                if x.shape == ():
                    found.append(-1)
                elif len(x.shape) == 1 and base <= x.shape[0] < base + num:
                    found.append(x.shape[0] - base)
                else:
                    return None
            if owners is not None and tuple(found) != owners:
                return None
            owners = tuple(found)
    except Exception:  # noqa: BLE001 - what cannot run on stand-ins is not elementwise
        return None
    return owners if texts[0] == texts[1] else None


def update_is_elementwise(
    update: Any, updates: Any, state: Any, params: Any, owners: tuple[int, ...]
) -> bool:
    """Whether ``update(updates, state, params)`` is elementwise (module doc), ``state``'s
    leaves belonging to the param leaves ``owners`` (from `leaf_owners`)."""
    num = len(jax.tree.leaves(updates))
    texts = []
    try:
        for base in (num + 2, 2 * num + 5):
            sizes = [base + j for j in range(num)]
            stand = [
                _vectors(updates, sizes),
                _vectors(state, [-1 if o < 0 else base + o for o in owners]),
                None if params is None else _vectors(params, sizes),
            ]
            closed = jax.make_jaxpr(update)(*stand)
            if not _elementwise(closed.jaxpr):
                return False
            texts.append(_text(closed))
    except Exception:  # noqa: BLE001 - what cannot run on stand-ins is not elementwise
        return False
    return texts[0] == texts[1]


def _is_zero(v: Any, zero: set) -> bool:
    if isinstance(v, jex.Literal):
        return not np.any(np.asarray(v.val) != 0)
    return v in zero


def _zeros(jaxpr: jex.Jaxpr, known: set) -> list[bool]:
    """Per output of ``jaxpr``: zero whatever its inputs (``known``: the input variables known
    to be zero)? Literal zeros, their broadcasts and casts, through nested calls."""
    zero = set(known)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("broadcast_in_dim", "convert_element_type", "copy", "copy_p"):
            if _is_zero(eqn.invars[0], zero):
                zero.add(eqn.outvars[0])
        elif name in CALLS and len(_jaxprs(eqn.params)) == 1:
            inner = _jaxprs(eqn.params)[0]
            given = {a for a, b in zip(inner.invars, eqn.invars, strict=True) if _is_zero(b, zero)}
            for out, is_zero in zip(eqn.outvars, _zeros(inner, given), strict=True):
                if is_zero:
                    zero.add(out)
    return [_is_zero(v, zero) for v in jaxpr.outvars]


def zero_leaves(init: Any, params: Any) -> set[int]:
    """The indices of the state leaves (flattened) that ``init`` makes zero whatever the
    params (``zeros_like`` and the like), found from its trace."""
    closed = jax.make_jaxpr(init)(_vectors(params, [x.size for x in jax.tree.leaves(params)]))
    return {i for i, is_zero in enumerate(_zeros(closed.jaxpr, set())) if is_zero}
