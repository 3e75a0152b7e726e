"""Run a transform only on the steps a condition picks: `conditionally_transform` (other
steps pass the updates through) and `conditionally_mask` (other steps return zeros)."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import chex
import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.base import with_extra_args_support as _extra_args


class ConditionFn(Protocol):
    """``(step, **extra_args) -> bool scalar``: whether to run the inner transform."""

    def __call__(self, step: chex.Array, **extra_args: Any) -> chex.Array: ...


class ConditionallyTransformState(NamedTuple):
    inner_state: Any
    step: chex.Array  # int32, calls so far (saturating)


class ConditionallyMaskState(NamedTuple):
    step: chex.Array  # int32, calls so far (saturating)
    inner_state: Any


def _conditional(inner, should_transform_fn, forward_extra_args, *, zero_rejected, state_cls):
    inner = _extra_args(inner)

    def init_fn(params):
        return state_cls(inner_state=inner.init(params), step=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        def run(_):
            new_updates, new_state = inner.update(updates, state.inner_state, params, **extra_args)
            return new_updates, tree_lib.cast_like(new_state, state.inner_state)

        def hold(_):
            held = jax.tree.map(jnp.zeros_like, updates) if zero_rejected else updates
            return held, state.inner_state

        condition_kwargs = extra_args if forward_extra_args else {}
        pred = should_transform_fn(state.step, **condition_kwargs)
        new_updates, inner_state = jax.lax.cond(pred, run, hold, None)
        step = tree_lib.safe_increment(state.step)
        return new_updates, state_cls(inner_state=inner_state, step=step)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def conditionally_transform(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """``inner`` on the steps where ``should_transform_fn(step)`` holds; else ``u <- u``.

    .. math::
        u_t \\leftarrow \\begin{cases} \\mathrm{inner}(u_t) & c(t) \\\\ u_t & \\text{else}
        \\end{cases}

    On a rejected step the inner state is kept as it was. ``step`` counts the calls from 0.

    Args:
        inner: the transform to run.
        should_transform_fn: ``(step, **extra_args) -> bool`` (a `ConditionFn`).
        forward_extra_args: pass the update's extra arguments to the condition too.

    Returns:
        A `GradientTransformationExtraArgs` with state `ConditionallyTransformState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.conditionally_transform(dlopt.scale(10.0), lambda step: step >= 1)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> u, tx.update(jnp.ones(1), state)[0]
        (Array([1.], dtype=float32), Array([10.], dtype=float32))
    """
    return _conditional(
        inner,
        should_transform_fn,
        forward_extra_args,
        zero_rejected=False,
        state_cls=ConditionallyTransformState,
    )


def conditionally_mask(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformationExtraArgs:
    """``inner`` on the steps where ``should_transform_fn(step)`` holds; else ``u <- 0``.

    .. math::
        u_t \\leftarrow \\begin{cases} \\mathrm{inner}(u_t) & c(t) \\\\ 0 & \\text{else}
        \\end{cases}

    The arguments are `conditionally_transform`'s; the state is `ConditionallyMaskState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.conditionally_mask(dlopt.sgd(0.1), lambda step: step % 2 == 1)
        >>> state = tx.init(jnp.zeros(1))
        >>> u, state = tx.update(jnp.ones(1), state)
        >>> u, tx.update(jnp.ones(1), state)[0]
        (Array([0.], dtype=float32), Array([-0.1], dtype=float32))
    """
    return _conditional(
        inner,
        should_transform_fn,
        forward_extra_args,
        zero_rejected=True,
        state_cls=ConditionallyMaskState,
    )
