"""Wrappers around a transform: `apply_if_finite` (the NaN/Inf guard) and `multi_steps`
(gradient accumulation), and the guard and accumulator the training steps share with them.

Each keeps the wrapped state in its own NamedTuple, so the result jits, scans, vmaps, pmaps and
checkpoints like any transform. (`inject_hyperparams` lives in `dlopt.wrappers.inject`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.base import with_extra_args_support as _extra_args


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {name}={value!r}.")


# --- the NaN/Inf guard and the gradient accumulator, shared with dlopt.training's steps


def all_finite(tree: chex.ArrayTree) -> chex.Array:
    """A bool scalar: every element of every leaf of ``tree`` is finite.

    Computed as ``isfinite(sum_i sum(x_i * 0))``: ``x * 0`` is 0 for a finite element and NaN
    for NaN or +-Inf, so the sum is exactly 0 or NaN (it cannot overflow). That is the same
    answer as ``all(isfinite(x))``, but a float sum vectorizes where XLA's CPU boolean
    reduction does not: half the time of the guard's pass over the gradients.
    """
    total = jnp.zeros((), jnp.float32)
    for leaf in jax.tree.leaves(tree):
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue  # integers are always finite
        zero = jnp.sum(leaf * jnp.zeros((), leaf.dtype))
        total = total + jnp.real(zero).astype(jnp.float32)
    return jnp.isfinite(total)


def count_nonfinite(finite: chex.Array, count: chex.Array) -> chex.Array:
    """``count + 1`` (saturating) when not ``finite``, else ``count``: the skipped-step counter."""
    return jnp.where(finite, count, tree_lib.safe_increment(count))


def guarded(pred: chex.Array, apply: Callable[[Any], Any], skip: Callable[[Any], Any], operand):
    """``apply(operand)`` where ``pred``, else ``skip(operand)``: the one NaN/Inf guard.

    One ``lax.cond``, used by `apply_if_finite`, `multi_steps` and the train steps of
    `dlopt.training`: the update runs only when taken, and a skipped step costs no pass over
    the state (its buffers are passed through; under ``jit`` with donation they stay aliased).
    Under ``vmap`` both branches run and the result is selected.
    """
    return jax.lax.cond(pred, apply, skip, operand)


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


class ApplyIfFiniteState(NamedTuple):
    notfinite_count: chex.Array  # int32: consecutive non-finite steps so far
    last_finite: chex.Array  # bool: whether the last gradient was finite
    total_notfinite: chex.Array  # int32: non-finite steps over the whole run (saturating)
    inner_state: Any  # the state of the wrapped transform


def _update_if(pred, inner, updates, inner_state, params, extra_args) -> tuple[Any, Any]:
    """``inner.update(...)`` where ``pred``, else zero updates and ``inner_state`` as it is."""

    def run(_):
        new_updates, new_state = inner.update(updates, inner_state, params, **extra_args)
        return new_updates, tree_lib.cast_like(new_state, inner_state)

    shapes = jax.eval_shape(run, None)[0]

    def hold(_):
        return jax.tree.map(lambda s: jnp.zeros_like(s), shapes), inner_state

    return guarded(pred, run, hold, None)


def apply_if_finite(
    tx: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformationExtraArgs:
    """Skips a step whose gradient holds a NaN or Inf, and counts it.

    With :math:`c` the number of consecutive non-finite gradients (0 after a finite one):

    .. math::
        u_t, S_t = \\begin{cases} \\mathrm{tx.update}(g_t, S_{t-1}) & g_t \\text{ finite or }
        c > \\texttt{max\\_consecutive\\_errors} \\\\ 0,\\ S_{t-1} & \\text{otherwise}
        \\end{cases}

    A skipped step returns zero updates and leaves the inner state untouched (never poisoned).
    As in optax, after more than ``max_consecutive_errors`` bad steps in a row the update is
    applied anyway: persistent NaNs then show up in the loss (and `TerminateOnNaN` can stop the
    run) instead of stalling training silently. Under ``pmap``, reduce the gradients across
    devices first so that every replica takes the same decision.

    Args:
        tx: the transform to protect.
        max_consecutive_errors: consecutive non-finite steps skipped before giving up (>= 0).

    Returns:
        A `GradientTransformationExtraArgs` with state `ApplyIfFiniteState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.apply_if_finite(dlopt.adam(1e-3), max_consecutive_errors=5)

    References:
        optax.apply_if_finite (DeepMind, 2021).
    """
    _check_int("max_consecutive_errors", max_consecutive_errors, 0)
    inner = _extra_args(tx)

    def init_fn(params):
        zero = jnp.zeros([], jnp.int32)
        return ApplyIfFiniteState(zero, jnp.array(True), zero, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        finite = all_finite(updates)
        bad = jnp.where(finite, 0, count_nonfinite(finite, state.notfinite_count))
        total = count_nonfinite(finite, state.total_notfinite)

        apply = jnp.logical_or(finite, bad > max_consecutive_errors)
        new_updates, inner_state = _update_if(
            apply, inner, updates, state.inner_state, params, extra_args
        )
        return new_updates, ApplyIfFiniteState(bad, finite, total, inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


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
    _check_int("every_k", every_k, 1)
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
        new_updates, inner_state = _update_if(
            emit, inner, grads, state.inner_opt_state, params, extra_args
        )
        acc = jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc)
        mini_step = jnp.where(emit, 0, state.mini_step + 1)
        gradient_step = jnp.where(
            emit, tree_lib.safe_increment(state.gradient_step), state.gradient_step
        )
        return new_updates, MultiStepsState(mini_step, gradient_step, inner_state, acc)

    return GradientTransformationExtraArgs(init_fn, update_fn)
