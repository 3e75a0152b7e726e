"""Reduce-on-plateau: shrink the learning rate when a monitored value stops improving.

The decision is one pure function, `plateau_step`, shared by the `reduce_on_plateau`
transform (one observation per ``accumulation_size`` updates) and the epoch-level training
callback (one observation per epoch).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformationExtraArgs


class PlateauConfig(NamedTuple):
    """Static hyperparameters of the plateau rule (see `reduce_on_plateau` for meanings).

    ``patience`` counts as in torch (a reduction after more than ``patience`` bad
    observations); ``atol`` is an absolute margin added to the ``threshold`` one.
    """

    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"  # "rel" | "abs"
    mode: str = "min"  # "min" | "max"
    cooldown: int = 0
    min_scale: float = 0.0
    atol: float = 0.0


class PlateauState(NamedTuple):
    scale: jax.Array  # multiplies the updates / learning rate, starts at 1
    best_value: jax.Array  # +inf (min) or -inf (max) at start
    plateau_count: jax.Array  # int32, bad observations since the last improvement
    cooldown_count: jax.Array  # int32, observations left in cooldown


def _check_config(config: PlateauConfig) -> None:
    """Raises ``ValueError`` naming the first invalid field of ``config``."""
    validation.check_in_range("factor", config.factor, 0.0, 1.0)
    validation.check_int("patience", config.patience)
    validation.check_non_negative("threshold", config.threshold)
    validation.check_choice("threshold_mode", config.threshold_mode, ("rel", "abs"))
    validation.check_choice("mode", config.mode, ("min", "max"))
    validation.check_int("cooldown", config.cooldown)
    validation.check_in_range("min_scale", config.min_scale, 0.0, 1.0, high_closed=True)
    validation.check_non_negative("atol", config.atol)


def plateau_init(config: PlateauConfig, dtype: Any = jnp.float32) -> PlateauState:
    """The state before any observation: scale 1, the worst possible best value, no counts."""
    _check_config(config)
    worst = math.inf if config.mode == "min" else -math.inf
    return PlateauState(
        scale=jnp.ones([], dtype),
        best_value=jnp.full([], worst, dtype),
        plateau_count=jnp.zeros([], jnp.int32),
        cooldown_count=jnp.zeros([], jnp.int32),
    )


def plateau_step(state: PlateauState, value: chex.Numeric, config: PlateauConfig) -> PlateauState:
    """Takes one observation ``value`` of the monitored quantity; pure and jit-able.

    In torch's order: improvement check (``best`` and the bad count), cooldown (counts down
    and forgets bad observations), then a reduction ``scale <- max(factor * scale,
    min_scale)`` once the bad count exceeds ``patience``, which restarts the cooldown.
    An improvement (mode ``min``; ``max`` mirrors it) is

    .. math::
        v < b - \\tau |b| - a \\ (\\text{rel}), \\qquad v < b - \\tau - a \\ (\\text{abs})

    with ``a = config.atol`` (0 unless set). A NaN value is a bad observation. The result
    keeps the dtypes of ``state``.
    """
    best = jnp.asarray(state.best_value)
    value = jnp.asarray(value).astype(best.dtype)
    if value.shape != ():
        raise ValueError(f"value must be a scalar, got shape {value.shape}.")
    sign = 1.0 if config.mode == "min" else -1.0
    tau, atol = float(config.threshold), float(config.atol)
    # b (1 -+ tau sign(b)) is b -+ tau |b| and stays +-inf (not NaN) while b is infinite.
    if config.threshold_mode == "rel":
        bar = best * (1.0 - sign * tau * jnp.sign(best)) - sign * atol
    else:
        bar = best - sign * (tau + atol)
    improved = value < bar if config.mode == "min" else value > bar

    best = jnp.where(improved, value, best)
    bad = jnp.where(improved, 0, tree_lib.safe_increment(state.plateau_count))
    in_cooldown = state.cooldown_count > 0
    cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
    bad = jnp.where(in_cooldown, 0, bad)

    scale = jnp.asarray(state.scale)
    reduce = bad > config.patience
    reduced = jnp.maximum(scale * float(config.factor), float(config.min_scale))
    return PlateauState(
        scale=jnp.where(reduce, reduced, scale).astype(scale.dtype),
        best_value=best,
        plateau_count=jnp.where(reduce, 0, bad).astype(jnp.int32),
        cooldown_count=jnp.where(reduce, config.cooldown, cooldown_count).astype(jnp.int32),
    )


class ReduceLROnPlateauState(NamedTuple):
    """optax's ``ReduceLROnPlateauState`` fields, in its order (``state.plateau``: the first
    four as a `PlateauState`)."""

    scale: jax.Array  # multiplies the updates, starts at 1
    best_value: jax.Array  # the best observation so far, +inf (min) or -inf (max) at start
    plateau_count: jax.Array  # int32, bad observations since the last improvement
    cooldown_count: jax.Array  # int32, observations left in cooldown
    count: jax.Array  # int32, values in the current accumulation window
    avg_value: jax.Array  # the mean of the values in the window

    @property
    def plateau(self) -> PlateauState:
        """The plateau rule's part of the state, for `plateau_step`."""
        return PlateauState(self.scale, self.best_value, self.plateau_count, self.cooldown_count)


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
    *,
    threshold: float | None = None,
    threshold_mode: str | None = None,
    mode: str = "min",
) -> GradientTransformationExtraArgs:
    """Multiplies the updates by a scale that shrinks when ``value`` stops improving.

    ``update(updates, state, params=None, *, value)`` adds ``value`` (e.g. the loss) to a
    window; every ``accumulation_size`` updates the window's mean is one observation. With
    ``b`` the best observation so far, an observation ``v`` improves (mode ``"min"``) when

    .. math::
        v < b - \\mathrm{rtol}\\,|b| - \\mathrm{atol}

    (``v > b + ...`` in mode ``"max"``); once ``patience`` bad observations in a row are seen,
    ``scale <- max(factor * scale, min_scale)`` and the next ``cooldown`` observations are
    ignored. The updates are ``u <- scale * u`` with the scale after this update's
    observation. Put it after the learning rate in a chain: ``chain(sgd(lr),
    reduce_on_plateau())``, i.e. ``lr_t = lr * scale_t``.

    Two calling conventions, each with its reference's numbers:

    * optax's (``rtol``, ``atol``; the positional order above is optax 0.2.8's): ``patience``
      counts as in optax and Keras, a reduction on the ``patience``-th bad observation.
    * torch's (pass ``threshold`` and/or ``threshold_mode``; ``rtol``/``atol`` then stay at
      their defaults): the margin is ``threshold * |b|`` (``"rel"``, default) or
      ``threshold`` (``"abs"``), default ``threshold=1e-4``, and ``patience`` counts as in
      ``torch.optim.lr_scheduler.ReduceLROnPlateau``: a reduction after *more than*
      ``patience`` bad observations.

    ``mode="max"`` (an accuracy, a reward) works with both.

    Deliberate differences from optax:

    * The relative margin is ``rtol * |b|``. optax's ``(1 - rtol) * b`` (and torch's
      ``b * (1 - threshold)``) move the bar *above* a negative ``b``, so a flat negative value
      (log-likelihood, ELBO, negative reward) counts as an improvement forever and the rate
      never shrinks. For ``b >= 0`` the rule equals optax's (torch's) exactly.
    * ``patience=0`` reduces on every bad observation; optax reduces on every observation,
      improving ones included.
    * ``rtol`` is not limited to 1, ``rtol = atol = 0`` is allowed (any decrease improves)
      and ``factor=0`` is allowed; the state is float32 (float64 for float64 parameters)
      rather than in the parameters' dtypes; ``mode`` and torch's keywords are additions.
    * torch skips reductions smaller than ``eps=1e-8``; here the reduction always applies
      (it is a no-op once ``min_scale`` is reached).

    Args:
        factor: multiplies the scale at a reduction, in [0, 1).
        patience: bad observations tolerated (see the two conventions), an integer >= 0.
        rtol: relative margin an improvement must clear, >= 0 (optax's convention).
        atol: absolute margin an improvement must clear, >= 0 (optax's convention).
        cooldown: observations after a reduction during which bad ones are not counted.
        accumulation_size: updates averaged into one observation, an integer >= 1.
        min_scale: the scale never goes below this, in [0, 1] (torch's ``min_lr / lr``).
        threshold: torch's margin ``tau`` >= 0; selects torch's convention.
        threshold_mode: torch's ``"rel"`` (margin ``tau * |b|``) or ``"abs"`` (margin
            ``tau``); selects torch's convention.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy, a reward).

    Returns:
        A `GradientTransformationExtraArgs` with state `ReduceLROnPlateauState` (the current
        scale is ``state.scale``).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.sgd(0.1), dlopt.reduce_on_plateau(patience=5))
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(2)}, state, params, value=jnp.array(1.0))
        >>> float(state[1].scale)
        1.0

    References:
        PyTorch, ``torch.optim.lr_scheduler.ReduceLROnPlateau``;
        ``optax.contrib.reduce_on_plateau``.
    """
    torch_style = threshold is not None or threshold_mode is not None
    validation.check_non_negative("rtol", rtol)
    validation.check_non_negative("atol", atol)
    if torch_style and (rtol != 1e-4 or atol != 0.0):
        raise ValueError(
            "pass optax's rtol/atol or torch's threshold/threshold_mode, not both; got "
            f"{rtol=}, {atol=}, {threshold=}, {threshold_mode=}."
        )
    validation.check_int("patience", patience)
    if torch_style:
        tau = 1e-4 if threshold is None else threshold
        config = PlateauConfig(
            factor, patience, tau, threshold_mode or "rel", mode, cooldown, min_scale
        )
    else:  # optax counts the reduction on the patience-th bad observation: torch's patience - 1
        torch_patience = max(int(patience) - 1, 0)
        config = PlateauConfig(factor, torch_patience, rtol, "rel", mode, cooldown, min_scale, atol)
    _check_config(config)
    validation.check_int("accumulation_size", accumulation_size, 1)

    def init_fn(params):
        dtype = numerics.scalar_dtype(params)
        return ReduceLROnPlateauState(
            *plateau_init(config, dtype),
            count=jnp.zeros([], jnp.int32),
            avg_value=jnp.zeros([], dtype),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise TypeError(
                "reduce_on_plateau needs the monitored value: call "
                "update(updates, state, params, value=loss)."
            )
        avg = jnp.asarray(state.avg_value)
        value = jnp.asarray(value).astype(avg.dtype)
        if value.shape != ():
            raise ValueError(f"value must be a scalar, got shape {value.shape}.")
        count = tree_lib.safe_increment(state.count)
        avg = (state.count.astype(avg.dtype) * avg + value) / count.astype(avg.dtype)
        ready = count >= accumulation_size
        plateau = PlateauState(
            state.scale, state.best_value, state.plateau_count, state.cooldown_count
        )
        observed = plateau_step(plateau, avg, config)
        plateau = jax.tree.map(lambda new, old: jnp.where(ready, new, old), observed, plateau)
        updates = jax.tree.map(lambda u: u * tree_lib.scalar_like(plateau.scale, u), updates)
        return updates, ReduceLROnPlateauState(
            *plateau,
            count=jnp.where(ready, 0, count).astype(jnp.int32),
            avg_value=jnp.where(ready, jnp.zeros_like(avg), avg),
        )

    return GradientTransformationExtraArgs(init_fn, update_fn)
