"""Parameter averaging: `ModelEMA` (Keras's ``use_ema``), `SWA` (torch's ``swa_utils``).

Both keep the average in the training state, ``state.averages`` (an `Averages`: the averaged
params and a count of averaging updates), so checkpoints and `BackupAndRestore` save and
resume it with the rest, bitwise. `fit` creates it (``prepare_state``, before a backup is
restored); with a hand-written loop call ``callback.prepare_state(state)`` once (also to build
a `restore` target). `ModelEMA` updates the average inside the train step, after every applied
update (a skipped step leaves it); `SWA` at the end of an epoch.

``eval_on_average=True`` runs validation on the averaged params (the model state, e.g.
BatchNorm statistics, stays the trained one; `SWA` can recompute it first, see `update_bn`).
After training, the averaged model is ``swap_averages(state)`` (SWA with BatchNorm: then
``update_bn``). The average is taken over ``state.params`` only (torch's ``AveragedModel``
default and Keras's trainable variables), in the params' dtypes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.training.batchnorm import update_bn
from dlopt.training.callbacks import Callback
from dlopt.wrappers.inject import get_hyperparam, is_scheduled, set_hyperparam

__all__ = ["SWA", "Averages", "ModelEMA", "swap_averages", "update_bn"]


def _ema_leaf(a: chex.Array, p: chex.Array, keep: chex.Array, new: chex.Array) -> chex.Array:
    f = numerics.compute_dtype(a.dtype, p.dtype)
    return (keep.astype(f) * a.astype(f) + new.astype(f) * p.astype(f)).astype(a.dtype)


@dataclasses.dataclass(frozen=True)
class EmaRule:
    """`ModelEMA`'s update, run by the train step (a static part of `Averages`)."""

    decay: float
    every: int
    warmup: bool

    def weights(self, count: chex.Array) -> tuple[chex.Array, chex.Array]:
        """``(d, 1 - d)`` for the update after ``count`` earlier ones, in float32."""
        c = count.astype(jnp.float32)
        if self.warmup:  # d = min(decay, (1 + c) / (10 + c)), 1 - d = 9 / (10 + c) below decay
            ramp = (1.0 + c) / (10.0 + c)
            below = ramp < jnp.float32(self.decay)
            keep = jnp.where(below, ramp, jnp.float32(self.decay))
            return keep, jnp.where(below, 9.0 / (10.0 + c), jnp.float32(1.0 - self.decay))
        first = count == 0  # Keras: the first update copies the params
        keep = jnp.where(first, jnp.float32(0.0), jnp.float32(self.decay))
        return keep, jnp.where(first, jnp.float32(1.0), jnp.float32(1.0 - self.decay))

    def update(self, averages: Averages, params: chex.ArrayTree, step: chex.Array) -> Averages:
        def run(avg: Averages) -> Averages:
            keep, new = self.weights(avg.count)
            mean = jax.tree.map(lambda a, p: _ema_leaf(a, p, keep, new), avg.params, params)
            return avg.replace(count=tree_lib.safe_increment(avg.count), params=mean)

        if self.every == 1:
            return run(averages)
        return jax.lax.cond(step % self.every == 0, run, lambda avg: avg, averages)


@struct.dataclass
class Averages:
    """``state.averages``: the averaged params and the number of averaging updates so far.

    ``rule`` (static) is `ModelEMA`'s in-step update while its `fit` runs, else None.
    ``params`` is held in the state's layout, like ``state.stored_params`` (a
    `dlopt.core.flat.Buffers` for a flat state, so the average updates in one fused pass);
    ``swap_averages(state).params`` reads the average as the params tree.
    """

    count: chex.Array  # int32, saturating
    params: chex.ArrayTree
    rule: EmaRule | None = struct.field(pytree_node=False, default=None)

    def after_step(self, state: Any) -> Averages:
        """Called by the train step after an applied update: ``rule``'s update, if any."""
        if self.rule is None:
            return self
        return self.rule.update(self, state.stored_params, state.step)


def with_averages(state: Any, rule: EmaRule | None = None) -> Any:
    """``state`` with an `Averages` (a copy of the params, count 0) unless it has one, and
    ``rule`` as its in-step update."""
    averages = getattr(state, "averages", None)
    if averages is None:
        averages = Averages(
            count=jnp.zeros_like(state.step), params=tree_lib.copy(state.stored_params), rule=rule
        )
    else:
        tree_lib.check_matching_trees(state.stored_params, averages.params, "params", "averages")
        averages = averages.replace(rule=rule)
    return state.replace(averages=averages)


def swap_averages(state: Any) -> Any:
    """``state`` with its params and averaged params exchanged (Keras's ``SwapEMAWeights``;
    swapping twice gives ``state`` back). After training: the averaged model.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import ModelEMA, TrainState, swap_averages
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.ones(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> state = ModelEMA().prepare_state(state)  # as fit does: the average starts as a copy
        >>> state = state.replace(params={"w": jnp.full((), 3.0)})  # as if trained
        >>> swapped = swap_averages(state)
        >>> float(swapped.params["w"]), float(swapped.averages.params["w"])
        (1.0, 3.0)
    """
    averages = getattr(state, "averages", None)
    if averages is None:
        raise ValueError("the state holds no averages: train it with ModelEMA or SWA.")
    return state.replace(
        params=averages.params, averages=averages.replace(params=state.stored_params)
    )


def _swa_leaf(a: chex.Array, p: chex.Array, w: chex.Array) -> chex.Array:
    """torch's ``lerp(a, p, w)``: ``a + w (p - a)`` for ``w < 0.5``, else ``p - (1 - w)(p - a)``."""
    f = numerics.compute_dtype(a.dtype, p.dtype)
    w = w.reshape(w.shape + (1,) * (jnp.ndim(a) - w.ndim)).astype(f)  # pmap: a device axis
    a32, p32 = a.astype(f), p.astype(f)
    diff = p32 - a32
    return jnp.where(w < 0.5, a32 + w * diff, p32 - diff * (1.0 - w)).astype(a.dtype)


@jax.jit
def _swa_update(averages: Averages, params: chex.ArrayTree) -> Averages:
    w = 1.0 / (averages.count.astype(jnp.float32) + 1.0)  # 1 at the first: a copy
    mean = jax.tree.map(lambda a, p: _swa_leaf(a, p, w), averages.params, params)
    return averages.replace(count=tree_lib.safe_increment(averages.count), params=mean)


class _Averaging(Callback):
    """What `ModelEMA` and `SWA` share: the average in the state, validation on it."""

    eval_on_average: bool = False
    rule: EmaRule | None = None

    def set_callbacks(self, callbacks: Any) -> None:
        super().set_callbacks(callbacks)
        averaging = [type(cb).__name__ for cb in callbacks if isinstance(cb, _Averaging)]
        if len(averaging) > 1:
            raise ValueError(
                f"one averaging callback per run (the state holds one average), got {averaging}."
            )

    def prepare_state(self, state: Any) -> Any:
        """``state`` with ``state.averages`` (a copy of the params, unless it has one)."""
        return with_averages(state, self.rule)

    def on_train_begin(self, state: Any, history: Any) -> Any:
        del history
        return self.prepare_state(state)  # kept when fit already did (a no-op)

    def _averaged(self, epoch: int) -> bool:
        del epoch
        return True

    def eval_state(self, epoch: int, state: Any) -> Any:
        if not (self.eval_on_average and self._averaged(epoch)):
            return state
        return state.replace(params=state.averages.params)

    def on_train_end(self, state: Any, history: Any) -> Any:
        del history
        averages = getattr(state, "averages", None)  # no more in-step updates after this fit
        return state if averages is None else state.replace(averages=averages.replace(rule=None))


class ModelEMA(_Averaging):
    """An exponential moving average of the params, updated in the train step (Keras's EMA).

    .. math::
        \\bar\\theta \\leftarrow d\\,\\bar\\theta + (1 - d)\\,\\theta \\quad
        \\text{after every } k\\text{-th step } (\\texttt{state.step} \\bmod k = 0)

    with :math:`d` = ``decay``, except :math:`d = 0` at the first update (a copy, as Keras
    does at ``iterations == 0``). With ``warmup=True``, the update after :math:`t` earlier ones
    uses :math:`d_t = \\min(d, (1 + t) / (10 + t))` (TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``, timm's ``ModelEma`` warmup), from the initial params. Arithmetic in
    float32 (or wider), the average stored in the params' dtypes. A step skipped for
    non-finite gradients does not update it. The average lives in ``state.averages``
    (checkpointed; see the module doc); the callback itself has no state to save.

    Args:
        decay: :math:`d` in [0, 1] (Keras's ``ema_momentum``, default 0.99).
        every: :math:`k`, an int >= 1: average after every :math:`k`-th step.
        warmup: ramp :math:`d` up from 0.1 (see above).
        eval_on_average: run validation on the averaged params.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import ModelEMA, TrainState, fit, swap_averages
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> data = [{"x": jnp.arange(4.0), "y": 2 * jnp.arange(4.0)}]
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> ema = ModelEMA(decay=0.5)
        >>> state, history = fit(state, data, epochs=3, loss_fn=loss_fn, callbacks=[ema],
        ...                      progress=False)  # w: 1.4, 1.82, 1.946
        >>> final = swap_averages(state)  # the EMA weights: 1.4, then 0.5 w_avg + 0.5 w
        >>> round(float(state.params["w"]), 3), round(float(final.params["w"]), 3)
        (1.946, 1.778)

    References:
        Polyak and Juditsky, "Acceleration of stochastic approximation by averaging", 1992;
        ``keras.optimizers.Optimizer(use_ema=True)``.
    """

    def __init__(
        self,
        decay: float = 0.99,
        every: int = 1,
        warmup: bool = False,
        *,
        eval_on_average: bool = False,
    ):
        validation.check_in_range("decay", decay, 0.0, 1.0, high_closed=True)
        validation.check_int("every", every, 1)
        validation.check_flag("warmup", warmup)
        validation.check_flag("eval_on_average", eval_on_average)
        self.decay, self.every, self.warmup = float(decay), int(every), warmup
        self.eval_on_average = eval_on_average
        self.rule = EmaRule(self.decay, self.every, warmup)


def _set_numeric(opt_state: Any, name: str, value: float) -> Any:
    old = jnp.asarray(get_hyperparam(opt_state, name))
    new = jnp.full(old.shape, value, old.dtype)
    if isinstance(old, jax.Array) and len(old.sharding.device_set) > 1:
        new = jax.device_put(new, old.sharding)  # keep a replicated/sharded layout
    return set_hyperparam(opt_state, name, new)


class SWA(_Averaging):
    """Stochastic weight averaging: the mean of the params at the ends of epochs >= start.

    .. math::
        \\bar\\theta_n = \\bar\\theta_{n-1} + \\frac{\\theta - \\bar\\theta_{n-1}}{n}
        \\quad \\text{after each epoch } e \\ge \\texttt{start\\_epoch}

    (torch's ``AveragedModel.update_parameters``: a copy at :math:`n = 1`, then ``lerp``),
    after the epoch's train steps and before its validation. With ``swa_lr``, the injected
    learning rate (``dlopt.inject_hyperparams``, a number) is set to ``swa_lr`` from
    ``start_epoch`` on. The average lives in ``state.averages`` (checkpointed, see the module
    doc); BatchNorm statistics for the averaged params come from `update_bn` (``bn_data``).

    Deliberate difference from torch: ``swa_lr`` switches the learning rate at once (torch's
    ``SWALR`` anneals to it over ``anneal_epochs``, default 10); for an annealed or scheduled
    learning rate, build the schedule to end at the SWA rate (``dlopt.join_schedules``)
    and leave ``swa_lr`` None.

    Args:
        start_epoch: the first epoch (0-based) whose end params are averaged, an int >= 0.
        swa_lr: the learning rate from ``start_epoch`` on, >= 0, or None (unchanged).
        hyperparam: the injected hyperparameter ``swa_lr`` sets.
        eval_on_average: run validation on the averaged params (from ``start_epoch`` on).
        bn_data: with ``eval_on_average``, batches (or ``epoch -> batches``) to recompute the
            BatchNorm statistics of the averaged params on before each validation
            (`update_bn`); needs ``loss_fn``.
        loss_fn: the loss function (the train-step contract) for ``bn_data``.
        bn_momentum: the model's BatchNorm momentum, for `update_bn`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import SWA, TrainState, fit, swap_averages
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> data = [{"x": jnp.arange(4.0), "y": 2 * jnp.arange(4.0)}]
        >>> tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.1)
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())}, tx=tx, rng=0)
        >>> swa = SWA(start_epoch=2, swa_lr=0.05)
        >>> state, history = fit(state, data, epochs=4, loss_fn=loss_fn, callbacks=[swa],
        ...                      progress=False)
        >>> lr = dlopt.get_hyperparam(state.opt_state, "learning_rate")
        >>> int(state.averages.count), round(float(lr), 6)  # epochs 2 and 3 averaged, at swa_lr
        (2, 0.05)
        >>> final = swap_averages(state)  # with BatchNorm, then update_bn(final, batches, loss_fn)
        >>> round(float(final.params["w"]), 4)  # the mean of the epoch 2 and 3 ends
        1.9035

    References:
        Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
        UAI 2018; ``torch.optim.swa_utils``.
    """

    def __init__(
        self,
        start_epoch: int,
        swa_lr: float | None = None,
        *,
        hyperparam: str = "learning_rate",
        eval_on_average: bool = False,
        bn_data: Any = None,
        loss_fn: Any = None,
        bn_momentum: float = 0.99,
    ):
        validation.check_int("start_epoch", start_epoch, 0)
        if swa_lr is not None:
            validation.check_learning_rate(swa_lr, "swa_lr")
            if callable(swa_lr):
                raise ValueError(f"swa_lr must be a number or None, got {swa_lr=!r}.")
        validation.check_flag("eval_on_average", eval_on_average)
        if (bn_data is None) != (loss_fn is None):
            raise ValueError("SWA: pass bn_data and loss_fn together (or neither).")
        validation.check_in_range("bn_momentum", bn_momentum, 0.0, 1.0)
        self.start_epoch, self.swa_lr, self.hyperparam = start_epoch, swa_lr, hyperparam
        self.eval_on_average = eval_on_average
        self.bn_data, self.loss_fn, self.bn_momentum = bn_data, loss_fn, float(bn_momentum)

    def on_train_begin(self, state: Any, history: Any) -> Any:
        state = super().on_train_begin(state, history)
        if self.swa_lr is not None and is_scheduled(state.opt_state, self.hyperparam):
            raise ValueError(
                f"SWA(swa_lr=...) sets a numeric injected {self.hyperparam}, but the optimizer "
                "drives it by a schedule: build the schedule to end at the SWA rate "
                "(dlopt.join_schedules) and pass swa_lr=None."
            )
        return state

    def _averaged(self, epoch: int) -> bool:
        return epoch >= self.start_epoch

    def on_epoch_begin(self, epoch: int, state: Any, history: Any) -> Any:
        del history
        if self.swa_lr is None or epoch < self.start_epoch:
            return state
        return state.replace(opt_state=_set_numeric(state.opt_state, self.hyperparam, self.swa_lr))

    def on_epoch_train_end(self, epoch: int, state: Any, history: Any) -> Any:
        del history
        if epoch < self.start_epoch:
            return state
        return state.replace(averages=_swa_update(state.averages, state.stored_params))

    def eval_state(self, epoch: int, state: Any) -> Any:
        averaged = super().eval_state(epoch, state)
        if averaged is state or self.bn_data is None:
            return averaged
        data = self.bn_data
        if callable(data) and not isinstance(data, Iterable):
            data = data(epoch)
        return update_bn(averaged, data, self.loss_fn, momentum=self.bn_momentum)
