"""Measure the updates in the optimizer state without changing them: `snapshot`,
`monitor` and `measure_with_ema`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    stateless,
    with_extra_args_support,
)
from dlopt.core.combine import chain
from dlopt.transforms.ema import ema

Measure = Callable[[chex.ArrayTree], chex.ArrayTree]


class SnapshotState(NamedTuple):
    measurement: dict[str, Any]


def snapshot(measure_name: str, measure: Measure) -> GradientTransformation:
    """Keeps ``{measure_name: measure(u)}`` of the last updates in the state (of the params
    at ``init``); the updates pass unchanged. Place it anywhere in a chain to look there.

    Returns:
        A `GradientTransformation` with state `SnapshotState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.snapshot("grad_norm", jnp.linalg.norm), dlopt.sgd(0.1))
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> state[0].measurement["grad_norm"]
        Array(5., dtype=float32)
    """
    if not callable(measure):
        raise TypeError(f"measure must be a callable updates -> pytree, got {measure!r}")

    def init_fn(params):
        return SnapshotState({measure_name: measure(params)})

    def update_fn(updates, state, params=None):
        del params, state
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init_fn, update_fn)


class MonitorState(NamedTuple):
    measurements: dict[str, chex.ArrayTree]
    measure_states: tuple[Any, ...]


def monitor(
    measures: dict[str, GradientTransformation | Measure],
) -> GradientTransformationExtraArgs:
    """Records several measurements of the updates; the updates pass unchanged.

    Each measure is a function ``updates -> pytree`` or a transform whose *output* is the
    measurement (e.g. `measure_with_ema`); the state keeps the last ``measurements`` by name
    and each transform's own state.

    Returns:
        A `GradientTransformationExtraArgs` with state `MonitorState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.monitor({"norm": jnp.linalg.norm})
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> state.measurements["norm"]
        Array(5., dtype=float32)
    """
    if not isinstance(measures, dict):
        raise TypeError(f"measures must be a dict name -> measure, got {type(measures).__name__}")
    txs = {}
    for name, measure in measures.items():
        if isinstance(measure, GradientTransformation) or hasattr(measure, "init"):
            txs[name] = with_extra_args_support(measure)
        elif callable(measure):
            txs[name] = with_extra_args_support(stateless(lambda u, _, m=measure: m(u)))
        else:
            raise TypeError(f"measures[{name!r}] must be a callable or a transform")
    names = tuple(txs)

    def init_fn(params):
        states = tuple(txs[n].init(params) for n in names)
        # zeros shaped like the first measurements, so the state keeps one structure (scan,
        # checkpoints); optax starts from {} (a deliberate difference)
        first = jax.eval_shape(lambda: update_fn(params, MonitorState({}, states), params)[1])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first.measurements)
        return MonitorState(zeros, states)

    def update_fn(updates, state, params=None, **extra_args):
        measurements, new_states = {}, []
        for name, measure_state in zip(names, state.measure_states, strict=True):
            value, new_state = txs[name].update(updates, measure_state, params, **extra_args)
            measurements[name] = value
            new_states.append(new_state)
        return updates, MonitorState(measurements, tuple(new_states))

    return GradientTransformationExtraArgs(init_fn, update_fn)


def measure_with_ema(
    measure: Measure,
    decay: chex.Numeric,
    debias: bool = True,
    accumulator_dtype: Any | None = None,
) -> GradientTransformationExtraArgs:
    """A transform whose output is the EMA of ``measure(u)`` (for `monitor`):

    .. math::
        m_t = \\beta m_{t-1} + (1 - \\beta)\\, \\mathrm{measure}(u_t), \\qquad
        \\hat m_t = m_t / (1 - \\beta^t) \\ \\text{(debias)}

    Returns:
        A `GradientTransformationExtraArgs` (``chain(stateless(measure), ema(...))``) whose
        output is :math:`\\hat m_t`, not the updates.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.monitor({"ema_norm": dlopt.measure_with_ema(jnp.linalg.norm, 0.9)})
        >>> _, state = tx.update(jnp.array([3.0, 4.0]), tx.init(jnp.zeros(2)))
        >>> round(float(state.measurements["ema_norm"]), 4)
        5.0
    """
    base_ema = ema(decay, debias=debias, accumulator_dtype=accumulator_dtype)
    measurement_ema = base_ema._replace(init=lambda params: base_ema.init(measure(params)))
    return chain(stateless(lambda updates, _: measure(updates)), measurement_ema)
