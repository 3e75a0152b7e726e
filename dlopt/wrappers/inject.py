"""Hyperparameters held in the optimizer state: `inject_hyperparams` and its accessors.

`inject_hyperparams(factory)(...)` moves numeric hyperparameters (and schedules, plain or
stateful) into the state, so they can be read and written between steps without a recompile,
scheduled, or vmapped over. `get_hyperparam` / `set_hyperparam` / `set_schedule_scale` find an
injected hyperparameter wherever it sits in an optimizer state tree (callbacks and sweeps use
them).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import numerics
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    StatefulSchedule,
)
from dlopt.core.base import with_extra_args_support as _extra_args


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _as_hyperparam(value: Any, dtype: Any) -> jax.Array:
    """A hyperparameter as an array: strong float arrays keep their dtype, other floats
    (Python numbers, numpy values, weak-typed arrays) become ``dtype``; ints stay ints."""
    if isinstance(value, jax.Array) and not getattr(value, "weak_type", False):
        return value
    return jnp.asarray(value, dtype) if _is_float(value) else jnp.asarray(value)


def _as_scheduled(value: Any, dtype: Any) -> jax.Array:
    """A schedule's value at ``init``: as `_as_hyperparam`, but an integer becomes ``dtype``,
    so a later fractional value is not truncated into an int slot."""
    value = _as_hyperparam(value, dtype)
    return value if _is_float(value) else value.astype(dtype)


def _split_arguments(signature, static_args, args, kwargs) -> tuple[dict, dict, dict, dict]:
    """The factory's arguments as (schedules, stateful schedules, numeric hyperparameters,
    passed as they are)."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name, param in signature.parameters.items():
        if param.kind is param.VAR_KEYWORD:
            arguments |= arguments.pop(name)
        elif param.kind is param.VAR_POSITIONAL and arguments.pop(name):
            raise ValueError(f"inject_hyperparams passes keywords only; got *{name}.")
    schedules, stateful, numeric, other = {}, {}, {}, {}
    for name, value in arguments.items():
        if name in static_args or isinstance(value, bool | str | type | np.dtype) or value is None:
            other[name] = value
        elif isinstance(value, StatefulSchedule):
            stateful[name] = value
        elif callable(value):
            schedules[name] = value
        elif isinstance(value, int | float | np.number | np.ndarray | jax.Array):
            numeric[name] = value
        else:
            other[name] = value
    return schedules, stateful, numeric, other


class InjectHyperparamsState(NamedTuple):
    count: chex.Array  # int32 step t, saturating; schedules are evaluated on it
    hyperparams: dict[str, chex.Array]  # the values used by the last step; numeric ones writable
    hyperparams_states: dict[str, Any]  # the states of the stateful schedules (optax's name)
    inner_state: Any  # the state of the wrapped transform
    schedule_scales: dict[str, chex.Array]  # f32 multiplier of schedule h at "h_scale" (1)


def _scale_key(name: str) -> str:
    """The `InjectHyperparamsState.schedule_scales` key of schedule ``name``: ``name`` plus
    "_scale", so that optax's ``tree_get(state, name)`` finds the hyperparameter alone."""
    return f"{name}_scale"


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any | None = None,
) -> Callable[..., GradientTransformationExtraArgs]:
    """Moves numeric hyperparameters into the optimizer state (writable, schedulable, vmappable).

    ``inject_hyperparams(factory)(**hparams)`` builds ``factory(**hparams)`` afresh at every
    step from values held in the state:

    .. math::
        h_t = \\begin{cases} s(t) & h \\text{ given as a schedule } s \\\\
        \\texttt{state.hyperparams[h]} & \\text{otherwise} \\end{cases}, \\qquad
        u_t, S_t = \\mathrm{factory}(h_t).\\mathrm{update}(g_t, S_{t-1})

    Numeric hyperparameters become arrays in ``state.hyperparams``; overwrite them between
    steps (`set_hyperparam`, or ``state.hyperparams[name] = jnp.asarray(v, dtype)``) without a
    recompile, or build a batch of states and ``jax.vmap`` many trainings at once. A callable
    argument is a schedule ``step -> value``, evaluated on ``state.count`` and multiplied by
    ``state.schedule_scales[name + "_scale"]`` (1 unless set with `set_schedule_scale`, as the
    `ReduceLROnPlateau` callback does: ``lr_t = scale * schedule(t)``); writing its
    ``hyperparams`` entry has no effect. A `dlopt.core.base.StatefulSchedule` (optax's protocol:
    ``init()``, ``update(state, **extra_args)``, ``__call__(state, **extra_args)``) keeps its
    state in ``state.hyperparams_states[name]`` and sees the extra arguments of ``update``
    (e.g. ``value=``), as in optax. Booleans, None, strings, dtypes and ``static_args`` are
    passed to the factory as they are. Bad values are checked eagerly (schedules at step 0) by
    building the factory once.

    Deliberate difference from optax: float hyperparameters are stored in float32 (float64 when
    a parameter is float64) rather than in the parameters' widest dtype, so ``b2=0.999`` does not
    round to 1.0 for bfloat16 parameters; the inner rule casts them to each leaf's dtype. Each
    hyperparameter keeps the dtype it had at ``init`` (a schedule's value is cast to it), so the
    state's structure never changes between steps (scan, donation); a schedule whose initial
    value is an int is stored as a float, so its later fractional values are kept (optax lets
    the stored dtype change with the value).

    Args:
        inner_factory: a function returning a transform, e.g. ``dlopt.adam``.
        static_args: names of callable arguments that are not schedules.
        hyperparam_dtype: dtype for float hyperparameters (default: float32, float64 with
            float64 params).

    Returns:
        A function taking ``inner_factory``'s arguments (schedules allowed in place of numbers)
        and returning a `GradientTransformationExtraArgs` with state `InjectHyperparamsState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.1, momentum=0.9)
        >>> state = tx.init({"w": jnp.zeros(2)})
        >>> state = dlopt.set_hyperparam(state, "learning_rate", 0.01)
        >>> float(dlopt.get_hyperparam(state, "learning_rate"))
        0.009999999776482582

    References:
        optax.inject_hyperparams (DeepMind, 2020).
    """
    static_args = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    if not static_args <= set(signature.parameters):
        raise ValueError(
            f"static_args must name parameters of {getattr(inner_factory, '__name__', 'the')}"
            f" factory ({sorted(signature.parameters)}), got static_args={sorted(static_args)}."
        )

    @functools.wraps(inner_factory)
    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformationExtraArgs:
        schedules, stateful, numeric, other = _split_arguments(signature, static_args, args, kwargs)
        first = {k: s(jnp.zeros([], jnp.int32)) for k, s in schedules.items()}
        first |= {k: f(f.init()) for k, f in stateful.items()}
        inner_factory(**other, **numeric, **first)  # eager validation, naming the argument
        scaled = {**schedules, **stateful}

        def build(hyperparams):
            return _extra_args(inner_factory(**other, **hyperparams))

        def init_fn(params):
            dtype = numerics.scalar_dtype(params) if hyperparam_dtype is None else hyperparam_dtype
            hyperparams = {k: _as_hyperparam(v, dtype) for k, v in numeric.items()}
            count = jnp.zeros([], jnp.int32)
            hyperparams |= {k: _as_scheduled(s(count), dtype) for k, s in schedules.items()}
            states = {k: f.init() for k, f in stateful.items()}
            hyperparams |= {k: _as_scheduled(f(states[k]), dtype) for k, f in stateful.items()}
            scales = {_scale_key(k): jnp.ones([], jnp.float32) for k in scaled}
            inner_state = build(hyperparams).init(params)
            return InjectHyperparamsState(count, hyperparams, states, inner_state, scales)

        def update_fn(updates, state, params=None, **extra_args):
            dtype = hyperparam_dtype
            if dtype is None:
                dtype = numerics.scalar_dtype(updates if params is None else params)
            hyperparams = {k: _as_hyperparam(v, dtype) for k, v in state.hyperparams.items()}
            scales = dict(state.schedule_scales)
            values = {k: s(state.count) for k, s in schedules.items()}
            values |= {k: f(state.hyperparams_states[k], **extra_args) for k, f in stateful.items()}
            for k, value in values.items():
                value = jnp.asarray(value).astype(hyperparams[k].dtype)
                hyperparams[k] = value * scales[_scale_key(k)].astype(value.dtype)
            states = {
                k: f.update(state.hyperparams_states[k], **extra_args) for k, f in stateful.items()
            }
            updates, inner_state = build(hyperparams).update(
                updates, state.inner_state, params, **extra_args
            )
            count = tree_lib.safe_increment(state.count)
            new_state = InjectHyperparamsState(count, hyperparams, states, inner_state, scales)
            return updates, new_state

        return GradientTransformationExtraArgs(init_fn, update_fn)

    return wrapped


def _is_injected(node: Any) -> bool:
    """An `InjectHyperparamsState`, or a NamedTuple like it (optax's injected states)."""
    fields = getattr(node, "_fields", ())
    return (
        "hyperparams" in fields and "inner_state" in fields and isinstance(node.hyperparams, dict)
    )


def _injected_nodes(opt_state: Any) -> list[Any]:
    """Every injected state in ``opt_state``, outermost first (wrapped ones included)."""
    return tree_lib.find_nodes(opt_state, _is_injected)


def _missing(opt_state: Any, name: str) -> ValueError:
    names = sorted({k for node in _injected_nodes(opt_state) for k in node.hyperparams})
    return ValueError(
        f"no injected hyperparameter named {name!r} in the optimizer state (injected: "
        f"{names or 'none'}). Wrap the optimizer with dlopt.inject_hyperparams(factory)(...) "
        f"and pass {name} to it."
    )


def get_hyperparam(opt_state: Any, name: str) -> jax.Array:
    """The value of the injected hyperparameter ``name`` found in ``opt_state``.

    ``opt_state`` may be any state tree (a chain's tuple, a dict, a TrainState's opt_state)
    holding `InjectHyperparamsState` nodes; the outermost node holding ``name`` is read.

    Raises:
        ValueError: naming ``name`` when no injected state holds it.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.clip(1.0), dlopt.inject_hyperparams(dlopt.sgd)(0.1))
        >>> float(dlopt.get_hyperparam(tx.init(jnp.zeros(2)), "learning_rate"))
        0.10000000149011612
    """
    for node in _injected_nodes(opt_state):
        if name in node.hyperparams:
            return node.hyperparams[name]
    raise _missing(opt_state, name)


def _cast_like(value: Any, old: Any) -> jax.Array:
    """``value`` in ``old``'s dtype (a float is never cast to an int), and a scalar broadcast
    to ``old``'s shape."""
    value, old = jnp.asarray(value), jnp.asarray(old)
    if _is_float(old) or not _is_float(value):
        value = value.astype(old.dtype)
    return jnp.broadcast_to(value, old.shape) if value.ndim == 0 else value


def _set_entry(opt_state: Any, field: str, name: str, value: Any) -> tuple[Any, bool]:
    """``opt_state`` with entry ``name`` of the dict ``field`` (``hyperparams`` or
    ``schedule_scales``) set to ``value`` in every injected state holding it, and whether
    one did."""
    hits = []

    def replace(node):
        if not _is_injected(node):
            return node
        inner = jax.tree.map(replace, node.inner_state, is_leaf=_is_injected)
        entries = getattr(node, field, None)
        if not entries or name not in entries:
            return node._replace(inner_state=inner)
        hits.append(name)
        new = {**entries, name: _cast_like(value, entries[name])}
        return node._replace(inner_state=inner, **{field: new})

    return jax.tree.map(replace, opt_state, is_leaf=_is_injected), bool(hits)


def set_hyperparam(opt_state: Any, name: str, value: chex.Numeric) -> Any:
    """A copy of ``opt_state`` whose injected hyperparameter ``name`` is ``value``.

    Every `InjectHyperparamsState` holding ``name`` is updated; ``value`` is cast to the stored
    dtype (and a scalar broadcast to the stored shape, e.g. a pmap-replicated state), so the
    jitted step does not recompile. Works under ``jit`` and ``vmap`` (a traced ``value``).

    Raises:
        ValueError: naming ``name`` when no injected state holds it.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.inject_hyperparams(dlopt.adam)(learning_rate=1e-3)
        >>> state = dlopt.set_hyperparam(tx.init(jnp.zeros(2)), "learning_rate", 3e-4)
        >>> round(float(dlopt.get_hyperparam(state, "learning_rate")), 6)
        0.0003
    """
    new_state, found = _set_entry(opt_state, "hyperparams", name, value)
    if not found:
        raise _missing(opt_state, name)
    return new_state


def is_scheduled(opt_state: Any, name: str) -> bool:
    """Whether the outermost injected state holding ``name`` drives it by a schedule (dlopt's
    `inject_hyperparams`; optax's injected states do not say, and read as False).

    Raises:
        ValueError: naming ``name`` when no injected state holds it.
    """
    for node in _injected_nodes(opt_state):
        if name in node.hyperparams:
            return _scale_key(name) in (getattr(node, "schedule_scales", None) or {})
    raise _missing(opt_state, name)


def set_schedule_scale(opt_state: Any, name: str, scale: chex.Numeric) -> Any:
    """A copy of ``opt_state`` whose schedule ``name`` is multiplied by ``scale`` from the next
    step on: ``h_t = scale * schedule(t)`` (float32; a scalar is broadcast to the stored shape,
    e.g. a pmap-replicated state).

    Raises:
        ValueError: when no injected state drives ``name`` by a schedule.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=lambda t: 0.1 / (1 + t))
        >>> state = dlopt.set_schedule_scale(tx.init(jnp.zeros(2)), "learning_rate", 0.5)
        >>> _, state = tx.update(jnp.ones(2), state)
        >>> float(state.hyperparams["learning_rate"])
        0.05000000074505806
    """
    new_state, found = _set_entry(opt_state, "schedule_scales", _scale_key(name), scale)
    if not found:
        raise ValueError(
            f"no injected schedule named {name!r} in the optimizer state: pass {name} to "
            "dlopt.inject_hyperparams(factory)(...) as a schedule (step -> value), or set a "
            "numeric one with set_hyperparam."
        )
    return new_state


inject_stateful_hyperparams = inject_hyperparams  # optax's older name for the same wrapper
InjectStatefulHyperparamsState = InjectHyperparamsState  # its state (one more field: scales)


class WrappedScheduleState(NamedTuple):
    count: chex.Array  # int32 step, saturating


class WrappedSchedule:
    """A plain schedule ``step -> value`` as a `dlopt.StatefulSchedule` (optax's class): its
    state counts the steps, ``update`` adds one, ``__call__`` is ``schedule_fn(count)``.

    Example:
        >>> import dlopt
        >>> s = dlopt.WrappedSchedule(lambda t: 0.1 * (t + 1))
        >>> state = s.update(s.init())
        >>> round(float(s(state)), 6)
        0.2
    """

    def __init__(self, schedule_fn: Callable[[chex.Numeric], chex.Numeric]):
        if not callable(schedule_fn):
            raise TypeError(f"schedule_fn must be a callable step -> value, got {schedule_fn!r}")
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(count=jnp.zeros([], jnp.int32))

    def update(self, state: WrappedScheduleState, **extra_args: Any) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(count=tree_lib.safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args: Any) -> chex.Numeric:
        del extra_args
        return self.schedule_fn(state.count)
