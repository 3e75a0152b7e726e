"""Schedule-free learning: interpolation and iterate averaging in place of momentum and decay.

`schedule_free` wraps any base optimizer (run it without momentum); `schedule_free_sgd` and
`schedule_free_adamw` are the two usual bases. Gradients are taken at ``y`` (the params the
training loop holds); evaluate and checkpoint for inference at ``x``, which
`schedule_free_eval_params` recovers from ``y`` and the state.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    with_extra_args_support,
)
from dlopt.core.combine import chain
from dlopt.optimizers.rmsprop import scale_by_rms
from dlopt.optimizers.sgd import sgd
from dlopt.schedules.decay import linear_schedule
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


class ScheduleFreeState(NamedTuple):
    b1: chex.Array  # beta_1, kept for schedule_free_eval_params
    weight_sum: chex.Array  # sum over steps of max_lr ** weight_lr_power
    step_count: chex.Array  # int32 t, from 1, saturating
    max_lr: chex.Array  # the largest learning rate so far
    base_optimizer_state: Any
    z: chex.ArrayTree  # the base optimizer's iterates, in state_dtype


def _schedule_free_leaf(y, z, u, leaf, out_dtype, *, b1, ck, writer):
    f = numerics.compute_dtype(y.dtype, z.dtype, u.dtype)
    y, z_old = y.astype(f), z.astype(f)
    z = writer.put(z_old + u.astype(f), z, leaf, 1)
    z_new = z.astype(f)
    b1, one_minus_b1, ck = (tree_lib.scalar_like(v, z_new) for v in (b1, 1 - b1, ck))
    # y' - y = b1 (x' - x) + (1 - b1)(z' - z), with x' - x = ck (z' - x) and b1 x = y - (1 - b1) z
    dz = z_new - z_old
    update = ck * (b1 * dz + (z_old - y)) + one_minus_b1 * dz
    return update.astype(out_dtype), z


def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    weight_lr_power: chex.Numeric = 2.0,
    state_dtype: Any | None = None,
    *,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Makes ``base_optimizer`` schedule-free: its momentum becomes interpolation + averaging.

    With the base optimizer's update :math:`\\Delta_t` (e.g. :math:`-\\gamma_t \\nabla f(y_t)`
    for SGD), computed at the params :math:`y_t`:

    .. math::
        z_{t+1} = z_t + \\Delta_t, \\quad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}, \\quad
        y_{t+1} = \\beta_1 x_{t+1} + (1 - \\beta_1) z_{t+1},

    with :math:`c_{t+1} = w_t / \\sum_{i \\le t} w_i` and :math:`w_t = (\\max_{i \\le t}
    \\gamma_i)^{p}` (:math:`p` = ``weight_lr_power``: early warmup steps weigh less in the
    average). :math:`z_1 = x_1 = y_1` are the initial params. Only ``z`` is stored:
    :math:`x_t = (y_t - (1 - \\beta_1) z_t) / \\beta_1`, so memory is the base optimizer's
    plus one params-sized buffer. Evaluate at :math:`x` (`schedule_free_eval_params`), not at
    the params :math:`y`. Run the base optimizer without momentum (``b1=0``); the learning
    rate needs warmup but no decay.

    The update is returned as :math:`y_{t+1} - y_t = c_{t+1} (\\beta_1 \\delta_t + z_t - y_t) +
    (1 - \\beta_1) \\delta_t` with :math:`\\delta_t = z_{t+1} - z_t`, arithmetic in float32
    (or wider); ``z`` is stored in ``state_dtype`` with stochastic rounding when narrower.

    Deliberate differences from optax: the update is computed in the difference form above
    (a zero learning rate gives exactly zero updates; optax's ``y' - y`` leaves rounding
    residue) and equals optax's to float32 rounding; ``b1``, ``weight_sum`` and ``max_lr``
    are float32 (float64 with float64 params), not the params' lowest dtype (a bfloat16
    ``weight_sum`` stops growing); ``b1`` must be in (0, 1].

    Args:
        base_optimizer: the optimizer whose updates move :math:`z` (dlopt's or optax's).
        learning_rate: :math:`\\gamma_t` >= 0 (or a schedule, evaluated at the step
            :math:`t = 1, 2, \\ldots`): the base optimizer's learning rate, used here only for
            the averaging weights.
        b1: :math:`\\beta_1` in (0, 1]: interpolation between :math:`x` and :math:`z`.
        weight_lr_power: :math:`p` >= 0.
        state_dtype: dtype of :math:`z` (default: each parameter's dtype). Narrower than
            the params (bfloat16 ``z`` for float32 params), :math:`z_1` is the rounded
            params, so :math:`x` and :math:`y` move by that rounding even at zero gradients.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding of :math:`z` into a
            narrower ``state_dtype`` (dlopt only).

    Returns:
        A `GradientTransformationExtraArgs` with state `ScheduleFreeState`; ``update`` needs
        ``params`` and passes extra keyword arguments to the base optimizer.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.schedule_free(dlopt.adam(1e-3, b1=0.0), learning_rate=1e-3)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> eval_params = dlopt.schedule_free_eval_params(state, params)

    References:
        Defazio, Yang, Mehta, Mishchenko, Khaled and Cutkosky, 2024, "The Road Less
        Scheduled", NeurIPS.
    """
    if not (hasattr(base_optimizer, "init") and hasattr(base_optimizer, "update")):
        raise TypeError(
            f"base_optimizer must be a GradientTransformation, got {base_optimizer=!r}."
        )
    validation.check_learning_rate(learning_rate)
    validation.check_in_range("b1", b1, 0.0, 1.0, low_closed=False, high_closed=True)
    validation.check_non_negative("weight_lr_power", weight_lr_power)
    numerics.check_rounding(state_rounding)
    state_dtype = validation.check_storage_dtype("state_dtype", state_dtype)
    base = with_extra_args_support(base_optimizer)

    def init_fn(params):
        tree_lib.check_float_params(params)
        dtype = numerics.scalar_dtype(params)
        return ScheduleFreeState(
            b1=jnp.asarray(b1).astype(dtype),
            weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base.init(params),
            z=tree_lib.copy(params, state_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        if params is None:
            raise ValueError("schedule_free needs params: call update(grads, state, params).")
        tree_lib.check_matching_trees(params, updates, "params", "updates")
        dtype = state.max_lr.dtype
        lr = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr).astype(dtype))
        weight = max_lr ** tree_lib.scalar_like(weight_lr_power, max_lr)
        weight_sum = state.weight_sum + weight
        ratio = jnp.nan_to_num(weight / weight_sum, nan=0.0, posinf=jnp.inf)  # 0/0 at lr = 0
        ck = jnp.where(jnp.isnan(weight) | jnp.isnan(weight_sum), jnp.nan, ratio)
        base_updates, base_state = base.update(
            updates, state.base_optimizer_state, params, **extra_args
        )
        updates, z = rule.lift(
            functools.partial(_schedule_free_leaf, b1=b1, ck=ck),
            params,
            (state.z, base_updates),
            count=state.step_count,
            rounding=state_rounding,
            params=params,
        ) or (updates, state.z)
        return updates, ScheduleFreeState(
            b1=state.b1,
            weight_sum=weight_sum,
            step_count=tree_lib.safe_increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _is_schedule_free_state(node: Any) -> bool:
    """A NamedTuple with ``b1`` and ``z`` fields: dlopt's or optax's `ScheduleFreeState`."""
    return isinstance(node, tuple) and {"b1", "z"} <= set(getattr(node, "_fields", ()))


def _find_state(state: Any) -> Any:
    """The outermost schedule-free state inside ``state`` (a chain, a wrapper), or None."""
    nodes = jax.tree.leaves(state, is_leaf=_is_schedule_free_state)
    return next((n for n in nodes if _is_schedule_free_state(n)), None)


def _eval_leaf(y, z, b1):
    f = numerics.compute_dtype(y.dtype, z.dtype)
    y_f, z_f = y.astype(f), z.astype(f)
    b1 = jnp.asarray(b1).astype(f)
    return ((y_f - (1 - b1) * z_f) / b1).astype(y.dtype)


def schedule_free_eval_params(state: Any, params: chex.ArrayTree) -> chex.ArrayTree:
    """The params to evaluate a schedule-free model at: :math:`x = (y - (1 - \\beta_1) z) /
    \\beta_1`, from the training params :math:`y` and the state's :math:`z`.

    Deliberate difference from optax: ``state`` may be any state that contains a
    `ScheduleFreeState` (e.g. a `chain` or `inject_hyperparams` state around `schedule_free`);
    the result keeps each parameter's dtype.

    Args:
        state: the optimizer state, containing a `ScheduleFreeState`.
        params: :math:`y`, the params being trained.

    Returns:
        :math:`x`, shaped and typed like ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.schedule_free_sgd(0.1)
        >>> params = jnp.ones(2)
        >>> dlopt.schedule_free_eval_params(tx.init(params), params)
        Array([1., 1.], dtype=float32)
    """
    found = _find_state(state)
    if found is None:
        raise ValueError(
            "schedule_free_eval_params needs the state of a schedule-free optimizer (one "
            f"containing a ScheduleFreeState), got a {type(state).__name__}."
        )
    return jax.tree.map(lambda y, z: _eval_leaf(jnp.asarray(y), z, found.b1), params, found.z)


def _warmup(learning_rate: ScalarOrSchedule, warmup_steps: int | None) -> ScalarOrSchedule:
    """The rate ramped linearly from 0 over ``warmup_steps``: optax's
    ``warmup_constant_schedule(0, learning_rate, warmup_steps)`` for a number, and
    ``min(t / warmup_steps, 1) * learning_rate(t)`` for a schedule (optax's raises a
    ``TypeError`` at the first update there); the rate itself when ``warmup_steps`` is None."""
    if warmup_steps is None:
        return learning_rate
    validation.check_int("warmup_steps", warmup_steps, 1)
    if not callable(learning_rate):
        return linear_schedule(0.0, learning_rate, warmup_steps)
    ramp = linear_schedule(0.0, 1.0, warmup_steps)

    def warmed_up(count: chex.Numeric) -> chex.Numeric:
        return ramp(count) * learning_rate(count)

    return warmed_up


def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: chex.Numeric = 0.9,
    weight_decay: chex.Numeric | None = None,
    weight_lr_power: chex.Numeric = 2.0,
    state_dtype: Any | None = None,
    *,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Schedule-free SGD: `schedule_free` around plain `sgd`.

    .. math::
        z_{t+1} = z_t - \\gamma_t (\\nabla f(y_t) + \\lambda y_t), \\quad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}, \\quad
        y_{t+1} = \\beta_1 x_{t+1} + (1 - \\beta_1) z_{t+1}

    with :math:`c_{t+1}` as in `schedule_free` and :math:`\\gamma_t` ramping linearly from 0
    to ``learning_rate`` over ``warmup_steps``. The weight decay :math:`\\lambda y` is taken
    at :math:`y` and scaled by :math:`\\gamma` (as optax and torch do).

    Deliberate differences from optax: ``warmup_steps`` must be an int >= 1 or None (optax's
    ``warmup_steps=0`` gives a learning rate of 0 forever), and it ramps a schedule too
    (optax's raises a ``TypeError`` at the first update when given both).

    Args:
        learning_rate: :math:`\\gamma` >= 0 after warmup, or a schedule (with
            ``warmup_steps``, multiplied by the ramp).
        warmup_steps: length of the linear warmup from 0, or None.
        b1: :math:`\\beta_1` in (0, 1].
        weight_decay: :math:`\\lambda` >= 0, or None for none.
        weight_lr_power, state_dtype, state_rounding: as in `schedule_free`.

    Returns:
        ``schedule_free(chain([add_decayed_weights(weight_decay)], sgd(lr)), lr, b1, ...)``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.schedule_free_sgd(1.0, warmup_steps=100)

    References:
        Defazio et al., 2024, "The Road Less Scheduled", NeurIPS.
    """
    learning_rate = _warmup(learning_rate, warmup_steps)
    optimizer = sgd(learning_rate)
    if weight_decay is not None:
        optimizer = chain(add_decayed_weights(weight_decay), optimizer)
    return schedule_free(
        optimizer, learning_rate, b1, weight_lr_power, state_dtype, state_rounding=state_rounding
    )


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    weight_decay: chex.Numeric = 0.0,
    weight_lr_power: chex.Numeric = 2.0,
    state_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Schedule-free AdamW: `schedule_free` around AdamW without momentum.

    .. math::
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        z_{t+1} = z_t - \\gamma_t \\left(\\frac{g_t}{\\sqrt{v_t / (1 - \\beta_2^t)} +
        \\epsilon} + \\lambda y_t\\right),

    with :math:`g_t = \\nabla f(y_t)`, then :math:`x` and :math:`y` as in `schedule_free`.
    The base is ``scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True)``: Adam
    with ``b1=0``, without the all-zero first moment.

    Args:
        learning_rate: :math:`\\gamma` >= 0 after warmup, or a schedule (with
            ``warmup_steps``, multiplied by the ramp).
        warmup_steps: length of the linear warmup from 0, or None.
        b1: :math:`\\beta_1` in (0, 1] (interpolation; not a momentum here).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        weight_decay: :math:`\\lambda` >= 0.
        weight_lr_power, state_dtype, state_rounding: as in `schedule_free`.
        nu_dtype: dtype of :math:`v` (dlopt only).

    Returns:
        ``schedule_free(chain(scale_by_rms(...), add_decayed_weights(weight_decay),
        scale_by_learning_rate(lr)), lr, b1, ...)``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.schedule_free_adamw(2.5e-3, warmup_steps=1000, weight_decay=1e-4)

    References:
        Defazio et al., 2024, "The Road Less Scheduled", NeurIPS.
    """
    validation.check_in_range("b2", b2, 0.0, 1.0)  # named here: scale_by_rms calls it decay
    validation.check_non_negative("eps", eps)
    learning_rate = _warmup(learning_rate, warmup_steps)
    optimizer = chain(
        scale_by_rms(
            b2, eps, eps_in_sqrt=False, bias_correction=True, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
    return schedule_free(
        optimizer, learning_rate, b1, weight_lr_power, state_dtype, state_rounding=state_rounding
    )
