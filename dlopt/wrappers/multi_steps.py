"""optax's class API over `multi_steps`: `MultiSteps` and its skip predicates.

`MultiSteps(opt, every_k_schedule, ...)` holds the transform `multi_steps` builds and adds
``has_updated`` and ``gradient_transformation()``; the accumulation is `multi_steps`' (one
mechanism). `skip_not_finite` and `skip_large_updates` are the ``should_skip_update_fn``
predicates optax ships.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import chex
import jax
import jax.numpy as jnp

from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.wrappers.accumulation import MultiStepsState, multi_steps


class ShouldSkipUpdateFunction(Protocol):
    """``(updates, gradient_step, params) -> (skip, skip_state)``: ``skip`` a bool scalar
    (True rejects this mini-step), ``skip_state`` any pytree kept in
    `MultiStepsState.skip_state`."""

    def __call__(
        self, updates: chex.ArrayTree, gradient_step: chex.Array, params: chex.ArrayTree | None
    ) -> tuple[chex.Array, chex.ArrayTree]: ...


def skip_not_finite(
    updates: chex.ArrayTree, gradient_step: chex.Array, params: chex.ArrayTree | None
) -> tuple[chex.Array, chex.ArrayTree]:
    """Skip when any update is NaN or Inf: ``skip = #{i : not isfinite(u_i)} > 0``.

    Returns:
        ``(skip, {"should_skip": skip, "num_not_finite": count})``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.skip_not_finite({"w": jnp.array([1.0, jnp.nan])}, 0, None)[0]
        Array(True, dtype=bool)
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(u)) for u in jax.tree.leaves(updates)]
    num_not_finite = jnp.sum(jnp.array(counts, dtype=jnp.int32))
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(
    updates: chex.ArrayTree,
    gradient_step: chex.Array,
    params: chex.ArrayTree | None,
    max_squared_norm: chex.Numeric,
) -> tuple[chex.Array, chex.ArrayTree]:
    """Skip when the squared global norm is too large: ``skip = not (sum_i ||u_i||^2 < m)``
    (so a NaN norm skips too). Bind ``max_squared_norm`` with ``functools.partial``.

    Returns:
        ``(skip, {"should_skip": skip, "norm_squared": sum_i ||u_i||^2})``.

    Example:
        >>> import functools, jax.numpy as jnp, dlopt
        >>> fn = functools.partial(dlopt.skip_large_updates, max_squared_norm=1.0)
        >>> fn({"w": jnp.array([3.0, 4.0])}, 0, None)[1]["norm_squared"]
        Array(25., dtype=float32)
    """
    del gradient_step, params
    leaves = jax.tree.leaves(updates)
    norm_sq = jnp.sum(jnp.array([jnp.sum(jnp.square(u)) for u in leaves]))
    should_skip = jnp.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class MultiSteps:
    """Gradient accumulation with optax's class API: one step of ``opt`` every k calls.

    The transform is `multi_steps` (see there for the formula): the first k-1 calls of a
    cycle return zeros and accumulate the mean (or sum) of the gradients, the k-th passes it
    to ``opt``. ``every_k_schedule`` is an int or a function of the real-step count.

    Args:
        opt: the wrapped transform.
        every_k_schedule: mini-steps per real step, an int >= 1 or ``gradient_step -> k``.
        use_grad_mean: average the accumulated gradients (else sum them).
        should_skip_update_fn: a `ShouldSkipUpdateFunction` (`skip_not_finite`, ...);
            a skipped mini-step leaves the state as it was, but for ``skip_state``.
        accumulator_dtype: dtype of the accumulator (float32).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> ms = dlopt.MultiSteps(dlopt.sgd(1.0), every_k_schedule=2)
        >>> state = ms.init(jnp.zeros(2))
        >>> u, state = ms.update(jnp.ones(2), state)
        >>> bool(ms.has_updated(state)), u
        (False, Array([0., 0.], dtype=float32))
        >>> u, state = ms.update(3 * jnp.ones(2), state)
        >>> bool(ms.has_updated(state)), u
        (True, Array([-2., -2.], dtype=float32))

    References:
        optax.MultiSteps (DeepMind, 2021).
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[chex.Array], chex.Numeric],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: Any = jnp.float32,
    ):
        self._tx = multi_steps(
            opt,
            every_k_schedule,
            use_grad_mean=use_grad_mean,
            accumulator_dtype=accumulator_dtype,
            should_skip_update_fn=should_skip_update_fn,
        )
        self._opt = opt

    @property
    def inner_opt(self) -> GradientTransformation:
        return self._opt

    def init(self, params: chex.ArrayTree) -> MultiStepsState:
        return self._tx.init(params)

    def update(
        self,
        updates: chex.ArrayTree,
        state: MultiStepsState,
        params: chex.ArrayTree | None = None,
        **extra_args: Any,
    ) -> tuple[chex.ArrayTree, MultiStepsState]:
        return self._tx.update(updates, state, params, **extra_args)

    def has_updated(self, state: MultiStepsState | chex.ArrayTree) -> chex.Array:
        """Whether the call that returned ``state`` took a real step."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformationExtraArgs:
        return self._tx
