"""Gradient accumulation: the float32 accumulator (`accumulation_dtype`, `accumulate`) the
train steps' micro-batches share, and `multi_steps` (optax's ``MultiSteps``).

The state is a NamedTuple, so the result jits, scans, vmaps, pmaps and checkpoints like any
transform.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib
from dlopt.core import validation
from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.base import with_extra_args_support as _extra_args
from dlopt.wrappers.finite import guarded_update


def accumulation_dtype(x: Any, dtype: Any | None = None) -> Any:
    """The gradient accumulator's dtype for a leaf like ``x``: ``dtype`` if given, else
    float64 for a float64 leaf and float32 otherwise (never narrower: bf16 gradients sum in
    float32)."""
    if dtype is not None:
        return dtype
    x_dtype = x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype
    return jnp.float64 if x_dtype == jnp.float64 else jnp.float32


def accumulate(
    acc: chex.Array,
    g: chex.Array,
    *,
    weight: chex.Array | None = None,
    count: chex.Array | None = None,
) -> chex.Array:
    """One gradient into the accumulator ``acc``, in ``acc``'s dtype (see `accumulation_dtype`).

    .. math::
        a + w g \\ (\\text{weight } w), \\qquad a + (g - a) / (n + 1) \\ (\\text{count } n),
        \\qquad a + g \\ (\\text{neither})

    With a weight, a zero weight leaves ``a`` exactly as it is (an all-padding micro-batch's
    NaN gradient stays out). `multi_steps` keeps the running mean; the train steps sum
    example-weighted micro-batch gradients and divide by the total weight once.
    """
    g = jnp.asarray(g).astype(acc.dtype)
    if count is not None:
        return acc + (g - acc) / (count + 1).astype(acc.dtype)
    if weight is None:
        return acc + g
    w = jnp.asarray(weight)
    return jnp.where(w > 0, acc + g * w.astype(acc.dtype), acc)


class MultiStepsState(NamedTuple):
    mini_step: chex.Array  # int32: gradients accumulated since the last real step
    gradient_step: chex.Array  # int32: real steps taken (saturating)
    inner_opt_state: Any  # the state of the wrapped transform
    acc_grads: chex.ArrayTree  # the running mean (or sum) of the accumulated gradients


def multi_steps(
    tx: GradientTransformation,
    every_k: int,
    *,
    use_grad_mean: bool = True,
    accumulator_dtype: Any | None = None,
) -> GradientTransformationExtraArgs:
    """Gradient accumulation: one real step of ``tx`` every ``every_k`` calls.

    With :math:`n` the mini-step (0 ... k-1) and :math:`a` the accumulator:

    .. math::
        a \\leftarrow a + \\frac{g_t - a}{n + 1} \\ \\text{(mean)} \\quad\\text{or}\\quad
        a \\leftarrow a + g_t \\ \\text{(sum)}, \\qquad
        u_t = \\begin{cases} \\mathrm{tx.update}(a) & n = k - 1 \\text{ (then } a \\leftarrow 0)
        \\\\ 0 & \\text{otherwise} \\end{cases}

    With the mean, ``k`` calls on ``k`` batches equal one step on their union (the gradient
    of a mean loss is the mean of the batch gradients). The inner update runs only on the k-th
    call (``lax.cond``); extra arguments (``value=``) reach it on that call. optax's
    ``MultiSteps`` with an int ``every_k_schedule`` computes the same numbers.

    Args:
        tx: the transform to apply to the accumulated gradient.
        every_k: calls per real step (>= 1).
        use_grad_mean: average the accumulated gradients (else sum them).
        accumulator_dtype: dtype of ``a`` (default: float32, float64 for float64 params).

    Returns:
        A `GradientTransformationExtraArgs` with state `MultiStepsState`; the real step
        happened on a call when the new ``state.mini_step == 0``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.multi_steps(dlopt.adam(1e-3), every_k=4)  # 4x the batch size

    References:
        optax.MultiSteps (DeepMind, 2021).
    """
    validation.check_int("every_k", every_k, 1)
    accumulator_dtype = validation.check_storage_dtype("accumulator_dtype", accumulator_dtype)
    inner = _extra_args(tx)

    def init_fn(params):
        tree_lib.check_float_params(params)
        zero = jnp.zeros([], jnp.int32)
        acc = jax.tree.map(
            lambda p: jnp.zeros_like(p, dtype=accumulation_dtype(p, accumulator_dtype)), params
        )
        return MultiStepsState(zero, zero, inner.init(params), acc)

    def update_fn(updates, state, params=None, **extra_args):
        n = state.mini_step if use_grad_mean else None
        acc = jax.tree.map(lambda g, a: accumulate(a, g, count=n), updates, state.acc_grads)
        emit = state.mini_step >= every_k - 1

        grads = tree_lib.cast_like(acc, updates)
        new_updates, inner_state = guarded_update(
            emit, inner, grads, state.inner_opt_state, params, extra_args
        )
        acc = jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc)
        mini_step = jnp.where(emit, 0, state.mini_step + 1)
        gradient_step = jnp.where(
            emit, tree_lib.safe_increment(state.gradient_step), state.gradient_step
        )
        return new_updates, MultiStepsState(mini_step, gradient_step, inner_state, acc)

    return GradientTransformationExtraArgs(init_fn, update_fn)
