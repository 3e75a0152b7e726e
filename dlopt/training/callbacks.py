"""Keras-like callbacks for `fit`: early stopping, LR reduction on plateau, NaN guard, lambdas.

A callback sees the `TrainState`, the `History` so far and the epoch's ``logs`` (``"loss"``,
``"val_loss"``, metric names and their ``"val_"`` twins), and returns the (possibly new) state.
Setting ``stop_training = True`` ends `fit` after the current batch or epoch.

A callback's state (counters, best values, best weights) is ``state_dict()`` /
``load_state_dict()``; `ModelCheckpoint` and `BackupAndRestore` save it with the training
state, so a resumed run continues exactly where the saved one was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import validation
from dlopt.schedules.plateau import PlateauConfig, PlateauState, plateau_init, plateau_step
from dlopt.training.monitor import improves, monitored_value, resolve_mode
from dlopt.wrappers.inject import get_hyperparam, is_scheduled, set_hyperparam, set_schedule_scale


class Callback:
    """Base class: every hook is optional and returns the (possibly replaced) state.

    A callback with state to carry over a resumed run defines `state_dict` (JSON values and
    arrays) and `load_state_dict`; after a load, the next `on_train_begin` keeps the loaded
    state instead of starting afresh (see `fresh_start`).

    Attributes:
        stop_training: set to True to make `fit` stop after the current batch or epoch.
        epoch_end_order: `fit` calls ``on_epoch_end`` in increasing order of this (stable):
            0 for most callbacks, 1 for `ModelCheckpoint`, 2 for `BackupAndRestore`, so what
            they save includes every other callback's update of the epoch.

    Example:
        >>> from dlopt.training import Callback
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch, state, history, logs):
        ...         print(epoch, logs["loss"])
        ...         return state
        >>> state = PrintLoss().on_epoch_end(0, None, None, {"loss": 0.25})  # as fit calls it
        0 0.25
    """

    stop_training: bool = False
    epoch_end_order: int = 0
    run_callbacks: tuple[Any, ...] = ()

    def set_callbacks(self, callbacks: Sequence[Any]) -> None:
        """Called by `fit` (its `dlopt.training.callback_list.CallbackList`) before anything
        else with all the run's callbacks (in order)."""
        self.run_callbacks = tuple(callbacks)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of this callback: JSON values and arrays (default none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Loads what `state_dict` returned; the next `on_train_begin` keeps it."""
        del state
        self._loaded = True

    def fresh_start(self) -> bool:
        """For `on_train_begin`: False (once) right after `load_state_dict`, else True."""
        loaded = getattr(self, "_loaded", False)
        self._loaded = False
        return not loaded

    @property
    def uses_batch_hook(self) -> bool:
        """Whether `fit` must call `on_train_batch_end` (a host sync per batch)."""
        return type(self).on_train_batch_end is not Callback.on_train_batch_end

    def prepare_state(self, state: Any) -> Any:
        """Called by `fit` first, before a backup is restored: adds what this callback keeps
        in the training state (`ModelEMA`'s average), so a backup restores into it."""
        return state

    def resume(self, state: Any, history: Any) -> Any:
        """Called by `fit` after `prepare_state`: a `dlopt.training.Resume` to continue a
        saved run from (`BackupAndRestore`), or None (the default) to start as given."""
        del state, history

    def on_train_begin(self, state: Any, history: Any) -> Any:
        """Called once before the first epoch."""
        del history
        return state

    def on_epoch_begin(self, epoch: int, state: Any, history: Any) -> Any:
        """Called at the start of every epoch (0-based ``epoch``)."""
        del epoch, history
        return state

    def on_train_batch_end(self, batch: int, state: Any, logs: dict[str, float]) -> Any:
        """Called after every train step with its metrics, when `uses_batch_hook`."""
        del batch, logs
        return state

    def on_epoch_train_end(self, epoch: int, state: Any, history: Any) -> Any:
        """Called after the epoch's train steps, before its validation (`SWA` averages here)."""
        del epoch, history
        return state

    def eval_state(self, epoch: int, state: Any) -> Any:
        """The state the epoch's validation runs on (default ``state``; training goes on from
        ``state``). `ModelEMA` and `SWA` with ``eval_on_average=True`` give the average."""
        del epoch
        return state

    def on_epoch_end(self, epoch: int, state: Any, history: Any, logs: dict[str, float]) -> Any:
        """Called after every epoch, once ``logs`` holds its train and validation numbers."""
        del epoch, history, logs
        return state

    def on_train_end(self, state: Any, history: Any) -> Any:
        """Called once after the last epoch (also after an early stop)."""
        del history
        return state


def _copy(tree: Any) -> Any:
    """An on-device copy that survives the donation of the original buffers."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs (Keras).

    An epoch improves on the best value ``b`` when ``v < b - min_delta`` (mode ``"min"``;
    ``v > b + min_delta`` for ``"max"``). The wait counter resets only when the epoch also
    beats ``baseline`` (if given); training stops once it reaches ``patience``. Epochs before
    ``start_from_epoch`` are not monitored.

    Args:
        monitor: the logs key to watch, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for names with "acc").
        patience: epochs without improvement before stopping, an int >= 0.
        min_delta: the smallest change that counts as an improvement, >= 0.
        baseline: a value the monitor must beat, or None.
        start_from_epoch: the first epoch that is monitored (warm-up epochs before it).
        restore_best: on stopping, put back the params and model state (the "weights",
            BatchNorm statistics included) of the best epoch; step, opt_state and rng stay.

    Attributes:
        best, best_epoch, stopped_epoch, wait: as in Keras (``stopped_epoch`` 0: no stop).

    Example:
        >>> from dlopt.training import EarlyStopping
        >>> stop = EarlyStopping(monitor="val_loss", patience=2, restore_best=False)
        >>> for epoch, val_loss in enumerate([1.0, 0.8, 0.9, 0.85, 0.7]):  # as fit calls it
        ...     _ = stop.on_epoch_end(epoch, None, None, {"val_loss": val_loss})
        ...     if stop.stop_training:
        ...         break
        >>> stop.stopped_epoch, stop.best, stop.best_epoch
        (3, 0.8, 1)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 0,
        min_delta: float = 0.0,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        restore_best: bool = True,
    ):
        validation.check_int("patience", patience)
        validation.check_int("start_from_epoch", start_from_epoch)
        validation.check_non_negative("min_delta", min_delta)
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor)
        self.patience = patience
        self.min_delta = float(min_delta)
        self.baseline = baseline
        self.start_from_epoch = start_from_epoch
        self.restore_best = restore_best
        self._reset()

    def _reset(self) -> None:
        self.stop_training = False
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: tuple[Any, Any] | None = None
        self._loaded_weights: list[np.ndarray] | None = None

    def _improves(self, value: float, reference: float | None) -> bool:
        return improves(value, reference, self.mode, self.min_delta)

    def state_dict(self) -> dict[str, Any]:
        """Counters, best value and epoch, and the best weights (as a list of leaves)."""
        weights = self._loaded_weights
        if self.best_weights is not None:
            weights = jax.tree.leaves(self.best_weights)
        return {
            "stop_training": self.stop_training,
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_weights": weights,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._reset()
        self.stop_training = bool(state["stop_training"])
        self.wait, self.stopped_epoch = int(state["wait"]), int(state["stopped_epoch"])
        self.best = None if state["best"] is None else float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        weights = state["best_weights"]
        self._loaded_weights = None if weights is None else [np.asarray(w) for w in weights]
        super().load_state_dict(state)

    def _weights_like(self, state: Any) -> None:
        """Rebuilds loaded best weights with ``state``'s structure and array placements."""
        if self._loaded_weights is None or state is None:
            return
        leaves, treedef = jax.tree.flatten((state.params, state.model_state))
        if len(leaves) != len(self._loaded_weights):
            raise ValueError(
                f"EarlyStopping: the loaded best weights have {len(self._loaded_weights)} "
                f"arrays, the state's params and model state {len(leaves)}."
            )
        placed = [
            jax.device_put(w, x.sharding) if isinstance(x, jax.Array) else jnp.asarray(w)
            for w, x in zip(self._loaded_weights, leaves, strict=True)
        ]
        self.best_weights = jax.tree.unflatten(treedef, placed)
        self._loaded_weights = None

    def on_train_begin(self, state: Any, history: Any) -> Any:
        del history
        if self.fresh_start():
            self._reset()
        self._weights_like(state)
        return state

    def on_epoch_end(self, epoch: int, state: Any, history: Any, logs: dict[str, float]) -> Any:
        del history
        self._weights_like(state)
        if epoch < self.start_from_epoch:
            return state
        value = monitored_value(logs, self.monitor, "EarlyStopping")
        if value is None:
            return state
        if self.restore_best and self.best_weights is None:
            self.best_weights = _copy((state.params, state.model_state))
        self.wait += 1
        if self._improves(value, self.best):
            self.best, self.best_epoch = value, epoch
            if self.restore_best:
                self.best_weights = _copy((state.params, state.model_state))
            if self.baseline is None or self._improves(value, self.baseline):
                self.wait = 0
                return state
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.stop_training = True
            if self.restore_best and self.best_weights is not None:
                params, model_state = self.best_weights
                state = state.replace(params=params, model_state=model_state)
        return state


class ReduceLROnPlateau(Callback):
    """Multiplies an injected learning rate by ``factor`` when ``monitor`` plateaus (epochs).

    The decision is `dlopt.plateau_step`, the same rule as the `dlopt.reduce_on_plateau`
    transform in torch's convention: with ``b`` the best value, an epoch improves (mode
    ``"min"``) when ``v < b - threshold * |b|`` (``"rel"``) or ``v < b - threshold``
    (``"abs"``); after more than ``patience`` bad epochs the scale ``s <- factor * s`` (never
    below ``min_lr / lr_0``) and ``cooldown`` epochs are ignored. The learning rate must be a
    hyperparameter injected into the optimizer state with `dlopt.inject_hyperparams`:

    * a number: it is set to ``lr_0 * s`` (`dlopt.set_hyperparam`), ``lr_0`` the value read at
      the first ``on_train_begin``;
    * a schedule: the schedule is scaled, ``lr_t = s * schedule(t)``
      (`dlopt.set_schedule_scale`; ``lr_0 = schedule(0)`` for ``min_lr``).

    Args:
        monitor: the logs key to watch.
        factor: the reduction factor, in [0, 1).
        patience: bad epochs tolerated before a reduction.
        threshold: the improvement margin ``tau`` >= 0.
        threshold_mode: ``"rel"`` or ``"abs"``.
        cooldown: epochs after a reduction during which bad epochs are not counted.
        min_lr: the learning rate never goes below this.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        hyperparam: the name of the injected hyperparameter to drive.

    Attributes:
        initial_lr: ``lr_0``; the plateau state (scale, best value, counters) lives in the
            callback, carries over between `fit` calls made with the same callback object, and
            is saved by `state_dict`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import ReduceLROnPlateau, TrainState
        >>> tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.1)
        >>> state = TrainState.create(apply_fn=None, params=jnp.zeros(2), tx=tx, rng=0)
        >>> cb = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
        >>> state = cb.on_train_begin(state, None)  # as fit calls it
        >>> for epoch in range(3):  # no improvement after epoch 0: two bad epochs > patience
        ...     state = cb.on_epoch_end(epoch, state, None, {"val_loss": 1.0})
        >>> round(float(dlopt.get_hyperparam(state.opt_state, "learning_rate")), 6)
        0.05
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        mode: str = "min",
        hyperparam: str = "learning_rate",
    ):
        validation.check_non_negative("min_lr", min_lr)
        self.monitor = monitor
        self.min_lr = float(min_lr)
        self.hyperparam = hyperparam
        self._config = PlateauConfig(
            factor, patience, threshold, threshold_mode, resolve_mode(mode, monitor), cooldown
        )
        plateau_init(self._config)  # validates the fields, naming the bad one
        self.initial_lr: float | None = None
        self.plateau: PlateauState | None = None

    def on_train_begin(self, state: Any, history: Any) -> Any:
        del history
        self.fresh_start()  # the plateau state carries over between fits anyway
        if self.initial_lr is None:
            lr = jnp.asarray(get_hyperparam(state.opt_state, self.hyperparam))
            self.initial_lr = float(lr.reshape(-1)[0])
            min_scale = min(self.min_lr / self.initial_lr, 1.0) if self.initial_lr > 0 else 0.0
            self._config = self._config._replace(min_scale=min_scale)
            self.plateau = plateau_init(self._config)
        return state

    @property
    def scale(self) -> float:
        """The factor ``s`` the learning rate (or its schedule) is multiplied by."""
        return float(self.plateau.scale)

    @property
    def learning_rate(self) -> float:
        """The learning rate the callback currently sets (``lr_0 * s``)."""
        return self.initial_lr * self.scale

    def state_dict(self) -> dict[str, Any]:
        """``lr_0``, the bound on the scale and the plateau state, as numbers."""
        if self.plateau is None:
            return {"initial_lr": None, "min_scale": None, "plateau": None}
        return {
            "initial_lr": self.initial_lr,
            "min_scale": self._config.min_scale,
            "plateau": [float(self.plateau.scale), float(self.plateau.best_value),
                        int(self.plateau.plateau_count), int(self.plateau.cooldown_count)],
        }  # fmt: skip

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["plateau"] is None:
            self.initial_lr, self.plateau = None, None
        else:
            scale, best, bad, cooldown = state["plateau"]
            self.initial_lr = float(state["initial_lr"])
            self._config = self._config._replace(min_scale=float(state["min_scale"]))
            self.plateau = PlateauState(
                jnp.asarray(scale, jnp.float32),
                jnp.asarray(best, jnp.float32),
                jnp.asarray(bad, jnp.int32),
                jnp.asarray(cooldown, jnp.int32),
            )
        super().load_state_dict(state)

    def on_epoch_end(self, epoch: int, state: Any, history: Any, logs: dict[str, float]) -> Any:
        del epoch, history
        value = monitored_value(logs, self.monitor, "ReduceLROnPlateau")
        if value is None:
            return state
        old_scale = self.scale
        self.plateau = plateau_step(self.plateau, value, self._config)
        if self.scale == old_scale:
            return state
        if is_scheduled(state.opt_state, self.hyperparam):
            return state.replace(
                opt_state=set_schedule_scale(state.opt_state, self.hyperparam, self.scale)
            )
        old = jnp.asarray(get_hyperparam(state.opt_state, self.hyperparam))
        new = jnp.full(old.shape, self.learning_rate, old.dtype)
        if isinstance(old, jax.Array) and len(old.sharding.device_set) > 1:
            new = jax.device_put(new, old.sharding)  # keep a replicated/sharded layout
        return state.replace(opt_state=set_hyperparam(state.opt_state, self.hyperparam, new))


class TerminateOnNaN(Callback):
    """Stops training after the first train step whose ``monitor`` (the loss) is NaN or Inf.

    Attributes:
        stopped_batch: the index (within its epoch) of that step, or None.

    Example:
        >>> from dlopt.training import TerminateOnNaN
        >>> guard = TerminateOnNaN()
        >>> for batch, loss in enumerate([0.5, float("inf")]):  # as fit calls it
        ...     _ = guard.on_train_batch_end(batch, None, {"loss": loss})
        >>> guard.stop_training, guard.stopped_batch
        (True, 1)
    """

    def __init__(self, monitor: str = "loss"):
        self.monitor = monitor
        self.stopped_batch: int | None = None

    def on_train_begin(self, state: Any, history: Any) -> Any:
        del history
        if self.fresh_start():
            self.stop_training, self.stopped_batch = False, None
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"stop_training": self.stop_training, "stopped_batch": self.stopped_batch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stop_training = bool(state["stop_training"])
        self.stopped_batch = state["stopped_batch"]
        super().load_state_dict(state)

    def on_train_batch_end(self, batch: int, state: Any, logs: dict[str, float]) -> Any:
        if self.monitor in logs and not math.isfinite(logs[self.monitor]):
            self.stop_training, self.stopped_batch = True, batch
        return state


class LambdaCallback(Callback):
    """A callback from plain functions, one per hook (Keras's ``LambdaCallback``).

    Each function takes the hook's arguments (``on_epoch_end(epoch, state, history, logs)``,
    ...) and returns a new state, or None to keep the state unchanged.

    Example:
        >>> from dlopt.training import LambdaCallback
        >>> losses = []
        >>> cb = LambdaCallback(on_epoch_end=lambda e, s, h, logs: losses.append(logs["loss"]))
        >>> _ = cb.on_epoch_end(0, None, None, {"loss": 0.5})  # as fit calls it
        >>> losses
        [0.5]
    """

    def __init__(
        self,
        *,
        on_train_begin: Callable[..., Any] | None = None,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
    ):
        self._fns = {
            "on_train_begin": on_train_begin,
            "on_epoch_begin": on_epoch_begin,
            "on_train_batch_end": on_train_batch_end,
            "on_epoch_end": on_epoch_end,
            "on_train_end": on_train_end,
        }

    @property
    def uses_batch_hook(self) -> bool:
        return self._fns["on_train_batch_end"] is not None

    def _call(self, hook: str, state: Any, *args: Any) -> Any:
        fn = self._fns[hook]
        out = fn(*args) if fn is not None else None
        return state if out is None else out

    def on_train_begin(self, state, history):
        return self._call("on_train_begin", state, state, history)

    def on_epoch_begin(self, epoch, state, history):
        return self._call("on_epoch_begin", state, epoch, state, history)

    def on_train_batch_end(self, batch, state, logs):
        return self._call("on_train_batch_end", state, batch, state, logs)

    def on_epoch_end(self, epoch, state, history, logs):
        return self._call("on_epoch_end", state, epoch, state, history, logs)

    def on_train_end(self, state, history):
        return self._call("on_train_end", state, state, history)
