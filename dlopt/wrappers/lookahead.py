"""Lookahead: k fast steps forward, then the slow weights move part of the way there."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)


class LookaheadParams(NamedTuple):
    """The fast and slow params of `lookahead`: take gradients at ``fast``, evaluate ``slow``."""

    fast: chex.ArrayTree  # the params the fast optimizer moves; compute gradients here
    slow: chex.ArrayTree  # the slow (averaged) params; use these for evaluation

    @classmethod
    def init_synced(cls, params: chex.ArrayTree) -> LookaheadParams:
        """Fast and slow params both equal to ``params``."""
        return cls(slow=params, fast=params)


class LookaheadState(NamedTuple):
    fast_state: Any  # the fast optimizer's state
    steps_since_sync: chex.Array  # int32 in [0, sync_period)


def _lookahead_leaf(fast, slow, u, *, sync, alpha):
    f = numerics.compute_dtype(fast.dtype, slow.dtype, u.dtype)
    u_f = u.astype(f)
    diff = fast.astype(f) + u_f - slow.astype(f)  # fast params after this step, minus slow
    alpha = tree_lib.scalar_like(alpha, diff)
    slow_u = jnp.where(sync, alpha * diff, jnp.zeros_like(diff))
    fast_u = jnp.where(sync, u_f - (1 - alpha) * diff, u_f)
    return fast_u.astype(tree_lib.dtype_of(fast)), slow_u.astype(tree_lib.dtype_of(slow))


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: chex.Numeric,
    reset_state: bool = False,
) -> GradientTransformationExtraArgs:
    """Lookahead: the fast optimizer runs ``sync_period`` steps, then the slow params move.

    On params `LookaheadParams` (fast :math:`\\theta`, slow :math:`\\phi`), with gradients
    taken at :math:`\\theta`: every step :math:`\\theta \\leftarrow \\theta + u` with
    :math:`u` from ``fast_optimizer``; every ``sync_period`` (:math:`k`) steps, after that
    step,

    .. math::
        \\phi \\leftarrow \\phi + \\alpha (\\theta - \\phi), \\qquad \\theta \\leftarrow \\phi

    (:math:`\\alpha` = ``slow_step_size``). Both moves are returned as one `LookaheadParams`
    of updates; apply them unchanged (`apply_updates`) or fast and slow go out of sync.
    With ``reset_state`` the fast optimizer's state is re-initialized at each sync.

    Deliberate differences from optax: ``slow_step_size`` must be in [0, 1] and
    ``sync_period`` an int >= 1; ``update`` raises a ``ValueError`` when ``params`` are not
    `LookaheadParams`; extra keyword arguments of ``update`` reach the fast optimizer; the
    state reset selects with ``jnp.where`` (optax blends arithmetically, so an inf/NaN in
    the old state leaks into the reset one).

    Args:
        fast_optimizer: the inner optimizer (dlopt's or optax's).
        sync_period: :math:`k`, an int >= 1.
        slow_step_size: :math:`\\alpha` in [0, 1] (0: the slow params never move; 1: plain
            ``fast_optimizer``).
        reset_state: re-initialize the fast optimizer's state after each sync.

    Returns:
        A `GradientTransformationExtraArgs` with state `LookaheadState`; ``update(grads,
        state, params)`` takes gradients shaped like ``params.fast`` and `LookaheadParams`
        params, and returns `LookaheadParams` updates. ``init`` accepts `LookaheadParams` or
        the fast params alone.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.lookahead(dlopt.sgd(0.1), sync_period=5, slow_step_size=0.5)
        >>> params = dlopt.LookaheadParams.init_synced({"w": jnp.ones(2)})
        >>> state = tx.init(params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2))(params.fast)
        >>> updates, state = tx.update(grads, state, params)
        >>> params = dlopt.apply_updates(params, updates)
        >>> params.fast["w"], params.slow["w"]  # the slow weights move every 5th step
        (Array([0.8, 0.8], dtype=float32), Array([1., 1.], dtype=float32))

    References:
        Zhang, Lucas, Hinton and Ba, 2019, "Lookahead Optimizer: k steps forward, 1 step
        back", NeurIPS.
    """
    validation.check_transformation("fast_optimizer", fast_optimizer)
    validation.check_int("sync_period", sync_period, 1, array_ok=True)
    validation.check_in_range("slow_step_size", slow_step_size, 0.0, 1.0, high_closed=True)
    inner = with_extra_args_support(fast_optimizer)

    def init_fn(params):
        fast = params.fast if hasattr(params, "fast") else params  # or the fast params alone
        return LookaheadState(
            fast_state=inner.init(fast), steps_since_sync=jnp.zeros([], jnp.int32)
        )

    def update_fn(updates, state, params=None, **extra_args):
        if not (hasattr(params, "fast") and hasattr(params, "slow")):
            raise ValueError(
                "lookahead needs LookaheadParams: update(grads, state, params) with params = "
                "dlopt.LookaheadParams(fast=..., slow=...) (LookaheadParams.init_synced(params) "
                f"to start) and grads taken at params.fast; got params of type "
                f"{type(params).__name__}."
            )
        fast_updates, fast_state = inner.update(
            updates, state.fast_state, params.fast, **extra_args
        )
        sync = state.steps_since_sync == sync_period - 1
        fast_u, slow_u = tree_lib.map_unzip(
            functools.partial(_lookahead_leaf, sync=sync, alpha=slow_step_size),
            params.fast,
            params.slow,
            fast_updates,
        ) or (fast_updates, fast_updates)
        if reset_state:
            fresh = inner.init(params.fast)
            fast_state = jax.tree.map(lambda c, i: jnp.where(sync, i, c), fast_state, fresh)
        steps = (state.steps_since_sync + 1) % sync_period
        steps = jnp.asarray(steps).astype(jnp.int32)
        # in the params' own container (optax's LookaheadParams too), as apply_updates needs
        moves = params._replace(fast=fast_u, slow=slow_u) if hasattr(params, "_replace") else None
        moves = LookaheadParams(fast=fast_u, slow=slow_u) if moves is None else moves
        return moves, LookaheadState(fast_state, steps)

    return GradientTransformationExtraArgs(init_fn, update_fn)
