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

from dlopt import tree as tree_lib
from dlopt import validation
from dlopt.base import GradientTransformationExtraArgs


class PlateauConfig(NamedTuple):
    """Static hyperparameters of the plateau rule (see `reduce_on_plateau` for meanings)."""

    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: str = "rel"  # "rel" | "abs"
    mode: str = "min"  # "min" | "max"
    cooldown: int = 0
    min_scale: float = 0.0


class PlateauState(NamedTuple):
    scale: jax.Array  # f32, multiplies the updates / learning rate, starts at 1
    best_value: jax.Array  # f32, +inf (min) or -inf (max) at start
    plateau_count: jax.Array  # int32, bad observations since the last improvement
    cooldown_count: jax.Array  # int32, observations left in cooldown


def _check_count(name: str, value: Any) -> None:
    validation.check_finite(name, value)
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {name}={value!r}.")


def _check_config(config: PlateauConfig) -> None:
    """Raises ``ValueError`` naming the first invalid field of ``config``."""
    validation.check_in_range("factor", config.factor, 0.0, 1.0)
    _check_count("patience", config.patience)
    validation.check_non_negative("threshold", config.threshold)
    if config.threshold_mode not in ("rel", "abs"):
        raise ValueError(
            f"threshold_mode must be 'rel' or 'abs', got threshold_mode={config.threshold_mode!r}."
        )
    if config.mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got mode={config.mode!r}.")
    _check_count("cooldown", config.cooldown)
    validation.check_in_range("min_scale", config.min_scale, 0.0, 1.0, high_closed=True)


def plateau_init(config: PlateauConfig) -> PlateauState:
    """The state before any observation: scale 1, the worst possible best value, no counts."""
    _check_config(config)
    worst = math.inf if config.mode == "min" else -math.inf
    return PlateauState(
        scale=jnp.ones([], jnp.float32),
        best_value=jnp.full([], worst, jnp.float32),
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
        v < b - \\tau |b| \\ (\\text{rel}), \\qquad v < b - \\tau \\ (\\text{abs}).

    A NaN value is a bad observation.
    """
    value = jnp.asarray(value).astype(jnp.float32)
    if value.shape != ():
        raise ValueError(f"value must be a scalar, got shape {value.shape}.")
    best, threshold = state.best_value, jnp.float32(config.threshold)
    sign = 1.0 if config.mode == "min" else -1.0
    # b (1 -+ tau sign(b)) is b -+ tau |b| and stays +-inf (not NaN) while b is infinite.
    if config.threshold_mode == "rel":
        bar = best * (1.0 - sign * threshold * jnp.sign(best))
    else:
        bar = best - sign * threshold
    improved = value < bar if config.mode == "min" else value > bar

    best = jnp.where(improved, value, best)
    bad = jnp.where(improved, 0, tree_lib.safe_increment(state.plateau_count))
    in_cooldown = state.cooldown_count > 0
    cooldown_count = jnp.where(in_cooldown, state.cooldown_count - 1, state.cooldown_count)
    bad = jnp.where(in_cooldown, 0, bad)

    reduce = bad > config.patience
    reduced = jnp.maximum(state.scale * jnp.float32(config.factor), jnp.float32(config.min_scale))
    return PlateauState(
        scale=jnp.where(reduce, reduced, state.scale),
        best_value=best,
        plateau_count=jnp.where(reduce, 0, bad).astype(jnp.int32),
        cooldown_count=jnp.where(reduce, config.cooldown, cooldown_count).astype(jnp.int32),
    )


class ReduceLROnPlateauState(NamedTuple):
    plateau: PlateauState
    count: jax.Array  # int32, updates in the current accumulation window
    accumulated_value: jax.Array  # f32 sum of values in the window


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: str = "rel",
    mode: str = "min",
    cooldown: int = 0,
    min_scale: float = 0.0,
    accumulation_size: int = 1,
) -> GradientTransformationExtraArgs:
    """Multiplies the updates by a scale that shrinks when ``value`` stops improving.

    ``update(updates, state, params=None, *, value)`` adds ``value`` (e.g. the loss) to a
    window; every ``accumulation_size`` updates the window's mean is one observation for
    `plateau_step`, whose rule is torch's ``ReduceLROnPlateau``: with ``b`` the best value so
    far, an observation ``v`` improves (mode ``"min"``) when

    .. math::
        v < b - \\tau |b| \\ (\\text{threshold\\_mode="rel"}), \\qquad
        v < b - \\tau \\ (\\text{"abs"})

    (``v > b + ...`` in mode ``"max"``); after more than ``patience`` bad observations in a
    row, ``scale <- max(factor * scale, min_scale)`` and ``cooldown`` observations are
    ignored. The updates are ``u <- scale * u`` with the scale after this update's
    observation. Put it after the learning rate in a chain: ``chain(sgd(lr),
    reduce_on_plateau())``, which is torch's ``lr_t = lr * scale_t``.

    Differences from the references, each deliberate:

    * The relative margin is ``tau * |b|``. torch's ``b * (1 - tau)`` and
      ``optax.contrib.reduce_on_plateau``'s ``(1 - rtol) * b`` move the bar *above* a
      negative ``b``, so a flat negative value (log-likelihood, ELBO, negative reward)
      counts as an improvement forever and the rate never shrinks. For ``b >= 0`` the rule
      equals torch's exactly.
    * Unlike optax.contrib, ``patience`` counts as in torch: optax reduces after ``patience``
      bad observations, this after ``patience + 1``; optax has no ``mode`` (minimises only)
      and no ``threshold_mode`` (``rtol``/``atol`` instead).
    * torch skips reductions smaller than ``eps=1e-8`` in learning-rate units; here the
      reduction always applies (it is a no-op once ``min_scale`` is reached).

    Args:
        factor: multiplies the scale at a reduction, in [0, 1).
        patience: bad observations tolerated before a reduction, an integer >= 0.
        threshold: ``tau`` >= 0, the margin an improvement must clear.
        threshold_mode: ``"rel"`` (margin ``tau * |b|``) or ``"abs"`` (margin ``tau``).
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy, a reward).
        cooldown: observations after a reduction during which bad ones are not counted.
        min_scale: the scale never goes below this, in [0, 1] (torch's ``min_lr / lr``).
        accumulation_size: updates averaged into one observation, an integer >= 1.

    Returns:
        A `GradientTransformationExtraArgs` with state `ReduceLROnPlateauState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.sgd(0.1), dlopt.reduce_on_plateau(patience=5))
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(2)}, state, params, value=jnp.array(1.0))

    References:
        PyTorch, ``torch.optim.lr_scheduler.ReduceLROnPlateau``.
    """
    config = PlateauConfig(factor, patience, threshold, threshold_mode, mode, cooldown, min_scale)
    _check_config(config)
    validation.check_finite("accumulation_size", accumulation_size)
    if isinstance(accumulation_size, bool) or not (
        float(accumulation_size).is_integer() and accumulation_size >= 1
    ):
        raise ValueError(f"accumulation_size must be an integer >= 1, got {accumulation_size=}.")

    def init_fn(params):
        del params
        return ReduceLROnPlateauState(
            plateau=plateau_init(config),
            count=jnp.zeros([], jnp.int32),
            accumulated_value=jnp.zeros([], jnp.float32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise TypeError(
                "reduce_on_plateau needs the monitored value: call "
                "update(updates, state, params, value=loss)."
            )
        total = state.accumulated_value + jnp.asarray(value).astype(jnp.float32)
        count = tree_lib.safe_increment(state.count)
        ready = count >= accumulation_size
        observed = plateau_step(state.plateau, total / jnp.float32(accumulation_size), config)
        plateau = jax.tree.map(lambda new, old: jnp.where(ready, new, old), observed, state.plateau)
        scale = plateau.scale
        updates = jax.tree.map(lambda u: u * tree_lib.scalar_like(scale, u), updates)
        return updates, ReduceLROnPlateauState(
            plateau=plateau,
            count=jnp.where(ready, 0, count).astype(jnp.int32),
            accumulated_value=jnp.where(ready, jnp.float32(0.0), total),
        )

    return GradientTransformationExtraArgs(init_fn, update_fn)
