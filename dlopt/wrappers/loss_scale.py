"""Dynamic loss scaling for float16 training: a policy (scale, unscale, adjust) and its state.

Small float16 gradients underflow to zero. Loss scaling multiplies the loss by a factor
:math:`S` before differentiation (so the backward pass works on :math:`S`-times larger
numbers) and divides the gradients by :math:`S` before the update. :math:`S` is dynamic, as in
Keras's ``LossScaleOptimizer`` and torch's ``GradScaler``: a step whose gradients overflow
(Inf/NaN) is skipped and :math:`S` is divided by ``factor``; after ``growth_interval``
consecutive finite steps :math:`S` is multiplied by ``factor``.

It is not a `GradientTransformation` (it needs the loss, which a transform never sees): pass
it once, to the train step, ``make_train_step(loss_fn, loss_scale=dlopt.dynamic_loss_scale())``
(or to ``fit(..., options=StepOptions(loss_scale=...))``). Its `DynamicLossScaleState` lives
in the training state, ``state.loss_scale`` (checkpointed with it): the step starts it with
``init()`` when the state holds none (``TrainState.create(..., loss_scale=policy)`` starts it
up front, e.g. for a checkpoint's restore target). A step skipped on overflow is the train
step's one guard (`dlopt.wrappers.finite.guarded`) and counts in ``state.skipped_steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib


class DynamicLossScaleState(NamedTuple):
    scale: chex.Array  # float32 scalar S
    good_steps: chex.Array  # int32: consecutive finite steps since S last changed


class DynamicLossScale(NamedTuple):
    """A loss-scaling policy: pure functions of its `DynamicLossScaleState`.

    Attributes:
        init: ``() -> state``, the initial state.
        scale_loss: ``(loss, state) -> S * loss`` (in float32, or float64 for a float64 loss).
        unscale: ``(grads, state) -> grads / S``, each leaf back in its dtype (None leaves
            pass through).
        adjust: ``(state, finite) -> state`` after a step: divide :math:`S` by ``factor``
            when not ``finite``, multiply it after ``growth_interval`` finite steps.
    """

    init: Callable[[], DynamicLossScaleState]
    scale_loss: Callable[[chex.Array, DynamicLossScaleState], chex.Array]
    unscale: Callable[[chex.ArrayTree, DynamicLossScaleState], chex.ArrayTree]
    adjust: Callable[[DynamicLossScaleState, chex.Array], DynamicLossScaleState]


def _unscale_leaf(g: chex.Array, scale: chex.Array) -> chex.Array:
    f = numerics.compute_dtype(g.dtype)
    return (g.astype(f) / scale.astype(f)).astype(g.dtype)


def dynamic_loss_scale(
    initial_scale: float = 2.0**15,
    growth_interval: int = 2000,
    factor: float = 2.0,
    *,
    min_scale: float = 1.0,
) -> DynamicLossScale:
    """Dynamic loss scaling (Keras's ``LossScaleOptimizer``, torch's ``GradScaler``).

    .. math::
        g = \\nabla (S \\cdot L) / S, \\qquad
        S \\leftarrow \\begin{cases}
            \\max(S / f, S_{\\min}),\\ n \\leftarrow 0 & g \\text{ not finite (step skipped)} \\\\
            f S,\\ n \\leftarrow 0 & n = N - 1 \\\\
            S,\\ n \\leftarrow n + 1 & \\text{otherwise}
        \\end{cases}

    with :math:`N` = ``growth_interval`` and :math:`f` = ``factor``: :math:`S` grows after
    the :math:`N`-th consecutive finite step (that step still uses the old :math:`S`), as
    Keras counts. A growth that would overflow float32 is not taken.

    Deliberate difference from Keras: :math:`S` never drops below ``min_scale`` (Keras
    halves without bound; at :math:`S = 0` every step would divide 0 by 0 and be skipped
    forever).

    Args:
        initial_scale: the first :math:`S`, > 0 (Keras's default :math:`2^{15}`).
        growth_interval: :math:`N`, finite steps between two growths, an int >= 1 (Keras's
            ``dynamic_growth_steps``).
        factor: :math:`f` >= 1, the growth and backoff factor (1: a static scale that still
            skips non-finite steps).
        min_scale: the smallest :math:`S`, > 0 (dlopt only).

    Returns:
        A `DynamicLossScale` policy with state `DynamicLossScaleState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> policy = dlopt.dynamic_loss_scale(initial_scale=8.0, growth_interval=2)
        >>> s = policy.init()
        >>> s = policy.adjust(s, jnp.array(False))  # an overflow: halve
        >>> float(s.scale)
        4.0

    References:
        Micikevicius et al., "Mixed Precision Training", ICLR 2018.
    """
    validation.check_positive("initial_scale", initial_scale)
    validation.check_int("growth_interval", growth_interval, 1)
    validation.check_in_range("factor", factor, 1.0, math.inf)
    validation.check_positive("min_scale", min_scale)

    def init() -> DynamicLossScaleState:
        return DynamicLossScaleState(
            scale=jnp.asarray(initial_scale, jnp.float32), good_steps=jnp.zeros((), jnp.int32)
        )

    def scale_loss(loss, state):
        loss = jnp.asarray(loss)
        f = numerics.compute_dtype(loss.dtype)
        return loss.astype(f) * state.scale.astype(f)

    def unscale(grads, state):
        return jax.tree.map(lambda g: _unscale_leaf(g, state.scale), grads)

    def adjust(state, finite):
        scale, good = state.scale, state.good_steps
        grow = finite & (good >= growth_interval - 1)
        grown = scale * jnp.float32(factor)
        grown = jnp.where(jnp.isfinite(grown), grown, scale)
        lowered = jnp.maximum(scale / jnp.float32(factor), jnp.float32(min_scale))
        new_scale = jnp.where(finite, jnp.where(grow, grown, scale), lowered)
        zero = jnp.zeros_like(good)
        new_good = jnp.where(finite & ~grow, tree_lib.safe_increment(good), zero)
        return DynamicLossScaleState(scale=new_scale, good_steps=new_good)

    return DynamicLossScale(init, scale_loss, unscale, adjust)
