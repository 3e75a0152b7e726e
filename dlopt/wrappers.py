"""Wrappers around a transform: `inject_hyperparams`, `apply_if_finite`, `multi_steps`.

Each keeps the wrapped state in its own NamedTuple, so the result jits, scans, vmaps, pmaps and
checkpoints like any transform. `get_hyperparam` / `set_hyperparam` read and write an injected
hyperparameter wherever it sits in an optimizer state tree (callbacks and sweeps use them).
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

from dlopt import tree as tree_lib
from dlopt.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.base import with_extra_args_support as _extra_args


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {name}={value!r}.")


def _widest_float(params: chex.ArrayTree) -> Any:
    """float64 when a parameter is float64, else float32 (never narrower than float32)."""
    dtypes = {jnp.asarray(p).dtype for p in jax.tree.leaves(params)}
    return jnp.float64 if jnp.dtype(jnp.float64) in dtypes else jnp.float32


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _as_hyperparam(value: Any, dtype: Any) -> jax.Array:
    """A hyperparameter as an array: strong float arrays keep their dtype, other floats
    (Python numbers, numpy values, weak-typed arrays) become ``dtype``; ints stay ints."""
    if isinstance(value, jax.Array) and not getattr(value, "weak_type", False):
        return value
    return jnp.asarray(value, dtype) if _is_float(value) else jnp.asarray(value)


def _split_arguments(signature, static_args, args, kwargs) -> tuple[dict, dict, dict]:
    """The factory's arguments as (schedules, numeric hyperparameters, passed as they are)."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name, param in signature.parameters.items():
        if param.kind is param.VAR_KEYWORD:
            arguments |= arguments.pop(name)
        elif param.kind is param.VAR_POSITIONAL and arguments.pop(name):
            raise ValueError(f"inject_hyperparams passes keywords only; got *{name}.")
    schedules, numeric, other = {}, {}, {}
    for name, value in arguments.items():
        if name in static_args or isinstance(value, bool | str) or value is None:
            other[name] = value
        elif callable(value):
            schedules[name] = value
        elif isinstance(value, int | float | np.number | np.ndarray | jax.Array):
            numeric[name] = value
        else:
            other[name] = value
    return schedules, numeric, other


class InjectHyperparamsState(NamedTuple):
    count: chex.Array  # int32 step t, saturating; schedules are evaluated on it
    hyperparams: dict[str, chex.Array]  # the values used by the last step; numeric ones writable
    inner_state: Any  # the state of the wrapped transform
    schedule_scales: dict[str, chex.Array]  # f32 multiplier of each schedule (1; writable)


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
    ``state.schedule_scales[name]`` (1 unless set with `set_schedule_scale`, as the
    `ReduceLROnPlateau` callback does: ``lr_t = scale * schedule(t)``); writing its
    ``hyperparams`` entry has no effect. Booleans, None, strings and ``static_args`` are passed
    to the factory as they are. Bad values are checked eagerly (schedules at step 0) by building
    the factory once.

    Deliberate difference from optax: float hyperparameters are stored in float32 (float64 when
    a parameter is float64) rather than in the parameters' widest dtype, so ``b2=0.999`` does not
    round to 1.0 for bfloat16 parameters; the inner rule casts them to each leaf's dtype.

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
        schedules, numeric, other = _split_arguments(signature, static_args, args, kwargs)
        first = {k: s(jnp.zeros([], jnp.int32)) for k, s in schedules.items()}
        inner_factory(**other, **numeric, **first)  # eager validation, naming the argument

        def build(hyperparams):
            return _extra_args(inner_factory(**other, **hyperparams))

        def init_fn(params):
            dtype = _widest_float(params) if hyperparam_dtype is None else hyperparam_dtype
            hyperparams = {k: _as_hyperparam(v, dtype) for k, v in numeric.items()}
            count = jnp.zeros([], jnp.int32)
            hyperparams |= {k: _as_hyperparam(s(count), dtype) for k, s in schedules.items()}
            scales = {k: jnp.ones([], jnp.float32) for k in schedules}
            inner_state = build(hyperparams).init(params)
            return InjectHyperparamsState(count, hyperparams, inner_state, scales)

        def update_fn(updates, state, params=None, **extra_args):
            dtype = hyperparam_dtype
            if dtype is None:
                dtype = _widest_float(updates if params is None else params)
            hyperparams = {k: _as_hyperparam(v, dtype) for k, v in state.hyperparams.items()}
            scales = dict(state.schedule_scales)
            for k, s in schedules.items():
                value = jnp.asarray(s(state.count)).astype(hyperparams[k].dtype)
                hyperparams[k] = value * scales[k].astype(value.dtype)
            updates, inner_state = build(hyperparams).update(
                updates, state.inner_state, params, **extra_args
            )
            count = tree_lib.safe_increment(state.count)
            return updates, InjectHyperparamsState(count, hyperparams, inner_state, scales)

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
    found = []
    for node in jax.tree.leaves(opt_state, is_leaf=_is_injected):
        if _is_injected(node):
            found += [node, *_injected_nodes(node.inner_state)]
    return found


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
    """
    hits = []

    def replace(node):
        if not _is_injected(node):
            return node
        hyperparams = dict(node.hyperparams)
        if name in hyperparams:
            hyperparams[name] = _cast_like(value, hyperparams[name])
            hits.append(name)
        inner = jax.tree.map(replace, node.inner_state, is_leaf=_is_injected)
        return node._replace(hyperparams=hyperparams, inner_state=inner)

    new_state = jax.tree.map(replace, opt_state, is_leaf=_is_injected)
    if not hits:
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
            return name in (getattr(node, "schedule_scales", None) or {})
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
        >>> state = dlopt.wrappers.set_schedule_scale(tx.init(jnp.zeros(2)), "learning_rate", 0.5)
        >>> _, state = tx.update(jnp.ones(2), state)
        >>> float(state.hyperparams["learning_rate"])
        0.05000000074505806
    """
    hits = []

    def replace(node):
        if not _is_injected(node):
            return node
        inner = jax.tree.map(replace, node.inner_state, is_leaf=_is_injected)
        scales = getattr(node, "schedule_scales", None)
        if not scales or name not in scales:
            return node._replace(inner_state=inner)
        hits.append(name)
        return node._replace(
            inner_state=inner, schedule_scales={**scales, name: _cast_like(scale, scales[name])}
        )

    new_state = jax.tree.map(replace, opt_state, is_leaf=_is_injected)
    if not hits:
        raise ValueError(
            f"no injected schedule named {name!r} in the optimizer state: pass {name} to "
            "dlopt.inject_hyperparams(factory)(...) as a schedule (step -> value), or set a "
            "numeric one with set_hyperparam."
        )
    return new_state


# --- the NaN/Inf guard and the gradient accumulator, shared with dlopt.training's steps


def all_finite(tree: chex.ArrayTree) -> chex.Array:
    """A bool scalar: every element of every leaf of ``tree`` is finite."""
    finite = jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        finite = jnp.logical_and(finite, jnp.all(jnp.isfinite(leaf)))
    return finite


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
