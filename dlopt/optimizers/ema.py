"""An exponential moving average of the updates: the momentum of Adafactor and Signum.

Not exported at the top level: `dlopt.adafactor` (``momentum=``) and `dlopt.signum` build on
it. It has optax's signature, state and numbers (``optax.ema``).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt import numerics, validation
from dlopt import tree as tree_lib
from dlopt.base import GradientTransformation


def one_buffer_dtype(
    name: str, optax_dtype: Any | None, mu_dtype: Any | None, optax_default: Any | None = None
) -> Any | None:
    """The storage dtype of a momentum buffer that optax names ``name`` and dlopt ``mu_dtype``.

    ``mu_dtype`` wins over an ``optax_dtype`` left at its default; two different explicit
    dtypes raise, naming both arguments. Invalid dtypes raise a ``TypeError`` naming theirs.
    """
    resolved = {}
    for arg, value in ((name, optax_dtype), ("mu_dtype", mu_dtype)):
        try:
            resolved[arg] = numerics.canonical_dtype(value)
        except TypeError as error:
            raise TypeError(f"{arg} must be a dtype or None, got {arg}={value!r}.") from error
    optax_value, mu = resolved[name], resolved["mu_dtype"]
    if mu is None:
        return optax_value
    default = numerics.canonical_dtype(optax_default)
    if optax_value is not None and optax_value != default and optax_value != mu:
        raise ValueError(
            f"{name} and mu_dtype name the same buffer; pass one of them, got "
            f"{name}={optax_dtype!r} and mu_dtype={mu_dtype!r}."
        )
    return mu


def buffer_dtype(dtype: Any | None, p: Any) -> Any:
    """The storage dtype of ``p``'s buffer: ``dtype`` (default ``p``'s), made complex of the
    same precision for a complex ``p`` (a real buffer would drop the imaginary part)."""
    param_dtype = tree_lib.dtype_of(p)
    if dtype is None:
        return param_dtype
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        return jnp.dtype(jnp.complex128 if dtype.itemsize >= 8 else jnp.complex64)
    return dtype


def _ema_leaf(u, m, leaf, out_dtype, *, decay, debias, writer):
    f = numerics.compute_dtype(u.dtype, m.dtype)
    new_m = writer.put(numerics.ema(m.astype(f), u.astype(f), decay), m, leaf, 1)
    stored = new_m.astype(f)
    update = numerics.unbias(stored, decay, writer.count) if debias else stored
    return update.astype(out_dtype), new_m


class EmaState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    ema: chex.ArrayTree  # m, the moving average (in accumulator_dtype / mu_dtype)


def ema(
    decay: chex.Numeric,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """An exponential moving average of the updates, optionally bias-corrected.

    .. math::
        m_t = \\beta m_{t-1} + (1 - \\beta) u_t, \\qquad
        u_t \\leftarrow m_t \\ \\text{or, with debias,}\\ \\frac{m_t}{1 - \\beta^t}

    Deliberate difference from optax: for a complex parameter a real ``accumulator_dtype``
    stores the complex dtype of that precision (optax casts the average to the real dtype,
    dropping its imaginary part).

    Args:
        decay: :math:`\\beta` in [0, 1).
        debias: divide by :math:`1 - \\beta^t`.
        accumulator_dtype: dtype of :math:`m` (default: each parameter's dtype).
        mu_dtype: the same as ``accumulator_dtype`` under dlopt's uniform name (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower dtype
            (dlopt only).

    Returns:
        A `GradientTransformation` with state `EmaState`.
    """
    validation.check_in_range("decay", decay, 0.0, 1.0)
    numerics.check_rounding(state_rounding)
    dtype = one_buffer_dtype("accumulator_dtype", accumulator_dtype, mu_dtype)

    def init_fn(params):
        tree_lib.check_float_params(params)
        buffers = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=buffer_dtype(dtype, p)), params)
        return EmaState(count=jnp.zeros([], jnp.int32), ema=buffers)

    def update_fn(updates, state, params=None):
        count = tree_lib.safe_increment(state.count)
        leaf_fn = functools.partial(
            _ema_leaf, decay=decay, debias=debias,
            writer=numerics.StateWriter(count, state_rounding),
        )  # fmt: skip
        updates, new_ema = tree_lib.map_unzip(
            leaf_fn,
            updates,
            state.ema,
            numerics.leaf_indices(updates),
            numerics.out_dtypes(updates, params, state.ema if dtype is None else None),
        )
        return updates, EmaState(count=count, ema=new_ema)

    return GradientTransformation(init_fn, update_fn)
