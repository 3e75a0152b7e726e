"""Gradient accumulation: the float32 accumulator (`accumulation_dtype`, `accumulate`) the
train steps' micro-batches share, and `multi_steps` (optax's ``MultiSteps``).

The state is a NamedTuple, so the result jits, scans, vmaps, pmaps and checkpoints like any
transform.
"""

from __future__ import annotations

from collections.abc import Callable
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
    skip_state: chex.ArrayTree = ()  # what ``should_skip_update_fn`` returned last (optax's)


def _no_skip(updates, gradient_step, params):
    del updates, gradient_step, params
    return jnp.array(False), ()


def multi_steps(
    tx: GradientTransformation,
    every_k: int | Callable[[chex.Array], chex.Numeric],
    *,
    use_grad_mean: bool = True,
    accumulator_dtype: Any | None = None,
    should_skip_update_fn: Callable[..., tuple[chex.Array, chex.ArrayTree]] | None = None,
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
    ``MultiSteps`` (`dlopt.MultiSteps`, a class over this function) computes the same numbers.

    Args:
        tx: the transform to apply to the accumulated gradient.
        every_k: calls per real step (an int >= 1), or a function of the real-step count
            ``gradient_step`` giving it (a batch size that grows over training).
        use_grad_mean: average the accumulated gradients (else sum them).
        accumulator_dtype: dtype of ``a`` (default: float32, float64 for float64 params).
        should_skip_update_fn: ``(updates, gradient_step, params) -> (skip, skip_state)``
            (`dlopt.skip_not_finite`, `dlopt.skip_large_updates`): a call whose ``skip`` is
            True returns zeros and leaves the state as it was, but for ``skip_state``.

    Returns:
        A `GradientTransformationExtraArgs` with state `MultiStepsState`; the real step
        happened on a call when the new ``state.mini_step == 0``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.multi_steps(dlopt.adam(1e-3), every_k=4)  # 4x the batch size

    References:
        optax.MultiSteps (DeepMind, 2021).
    """
    accumulator_dtype = validation.check_storage_dtype("accumulator_dtype", accumulator_dtype)
    if callable(every_k):
        k_of = every_k
    else:
        validation.check_int("every_k", every_k, 1)
        k_of = lambda step: every_k  # noqa: E731
    if should_skip_update_fn is not None and not callable(should_skip_update_fn):
        raise TypeError(
            "should_skip_update_fn must be a function (updates, gradient_step, params) -> "
            f"(skip, skip_state) or None, got {type(should_skip_update_fn).__name__}; pass e.g. "
            "dlopt.skip_not_finite."
        )
    should_skip = _no_skip if should_skip_update_fn is None else should_skip_update_fn
    inner = _extra_args(tx)

    def init_fn(params):
        tree_lib.check_float_params(params)
        zero = jnp.zeros([], jnp.int32)
        acc = jax.tree.map(
            lambda p: jnp.zeros_like(p, dtype=accumulation_dtype(p, accumulator_dtype)), params
        )
        _, skip_state = should_skip(jax.tree.map(jnp.zeros_like, params), zero, params)
        return MultiStepsState(zero, zero, inner.init(params), acc, skip_state)

    def update_fn(updates, state, params=None, **extra_args):
        skip, skip_state = should_skip(updates, state.gradient_step, params)
        skip = jnp.asarray(skip)
        if (skip.dtype, skip.shape) != (jnp.bool_, ()):
            raise ValueError(
                "should_skip_update_fn must return a bool scalar as its first output, got "
                f"dtype {skip.dtype} and shape {skip.shape}; return e.g. jnp.any(...)."
            )
        n = state.mini_step if use_grad_mean else None
        acc = jax.tree.map(lambda g, a: accumulate(a, g, count=n), updates, state.acc_grads)
        emit = state.mini_step >= k_of(state.gradient_step) - 1

        grads = tree_lib.cast_like(acc, updates)
        new_updates, inner_state = guarded_update(
            emit & ~skip, inner, grads, state.inner_opt_state, params, extra_args
        )
        acc = jax.tree.map(
            lambda a, old: jnp.where(skip, old, jnp.where(emit, jnp.zeros_like(a), a)),
            acc,
            state.acc_grads,
        )
        mini_step = jnp.where(skip, state.mini_step, jnp.where(emit, 0, state.mini_step + 1))
        gradient_step = jnp.where(
            emit & ~skip, tree_lib.safe_increment(state.gradient_step), state.gradient_step
        )
        return new_updates, MultiStepsState(mini_step, gradient_step, inner_state, acc, skip_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


class ApplyEvery(NamedTuple):
    """The state of `apply_every` (optax's class name): a counter and the gradient sum."""

    count: chex.Array  # int32, 0 ... k-1
    grad_acc: chex.ArrayTree


def apply_every(k: int = 1) -> GradientTransformation:
    """Sums the updates and emits the sum every ``k`` calls (zeros in between).

    .. math::
        a \\leftarrow [t \\bmod k \\ne 0]\\, a + u_t, \\qquad
        u_t \\leftarrow [t \\bmod k = k - 1]\\, a

    Unlike `multi_steps`, the transforms before it in a chain still step on every call, so
    ``k`` calls on half batches are not one call on their union; use `multi_steps`
    (`MultiSteps`) for that.

    Args:
        k: calls per emitted update (an int >= 1).

    Returns:
        A `GradientTransformation` with state `ApplyEvery`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.apply_every(2)
        >>> state = tx.init(jnp.zeros(2))
        >>> u, state = tx.update(jnp.ones(2), state)
        >>> u, _ = tx.update(jnp.ones(2), state)
        >>> u
        Array([2., 2.], dtype=float32)
    """
    validation.check_int("k", k, 1)

    def init_fn(params):
        return ApplyEvery(jnp.zeros([], jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        c = state.count % k
        grad_acc = jax.tree.map(
            lambda g, a: jnp.where(c != 0, a, jnp.zeros_like(a)) + g, updates, state.grad_acc
        )
        emit = c == k - 1
        new_updates = jax.tree.map(lambda a: jnp.where(emit, a, jnp.zeros_like(a)), grad_acc)
        count = tree_lib.safe_increment(state.count) % k
        return new_updates, ApplyEvery(count, grad_acc)

    return GradientTransformation(init_fn, update_fn)
