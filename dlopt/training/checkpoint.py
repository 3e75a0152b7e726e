"""Checkpoints on orbax-checkpoint: the `ModelCheckpoint` callback and `restore`.

A checkpoint is one directory ``<directory>/<n>`` holding everything a run needs to continue:

* ``state``: the whole training-state pytree (step, params, optimizer state with its schedule
  counts, injected hyperparameters and plateau state, model state, RNG key data, skipped-step
  count, and the parameter averages of ModelEMA/SWA and the loss-scale state when used);
* ``history``: the `History` up to the saved epoch, as JSON;
* ``callbacks``: the ``state_dict()`` of every callback of the run (EarlyStopping's counters,
  best value and best weights, ReduceLROnPlateau's plateau state, ModelCheckpoint's best
  value, ...), as JSON, with their arrays in ``callback_arrays``;
* ``meta``: the epoch, step, monitored value, whether a callback had stopped training, and a
  SHA-256 fingerprint of every array (state and callbacks).

Checkpoints are numbered by the training step ``state.step`` (the epoch number for a state
without a ``step``), so the numbering continues across a resumed run.

Writes are atomic: orbax writes into ``<n>.orbax-checkpoint-tmp`` and renames it to ``<n>``
only once every item is complete; old checkpoints are renamed away (atomically) before they
are deleted, and a checkpoint that is overwritten is first written in full next to it, so a
kill at any moment leaves the previous checkpoint usable. `restore` checks the fingerprints
and says which problem it met: a missing directory or checkpoint, a checkpoint that does not
match the target (naming the first differing path), or damaged files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import orbax.checkpoint as ocp

from dlopt.core import validation
from dlopt.training.callbacks import Callback
from dlopt.training.loop import History
from dlopt.training.monitor import improves, monitored_value, resolve_mode
from dlopt.training.store import (
    CheckpointDamagedError,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    available_steps,
    empty_trash,
    fingerprint,
    open_manager,
    read_run,
    replace_run,
    state_step,
    unfinished_saves,
    with_epoch_logs,
    write_run,
)

__all__ = [
    "CheckpointDamagedError",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ModelCheckpoint",
    "available_steps",
    "fingerprint",
    "restore",
]


def restore(
    directory: str | os.PathLike,
    target: Any = None,
    *,
    step: int | None = None,
    callbacks: Sequence[Any] | None = None,
) -> tuple[Any, History]:
    """Loads a checkpoint written by `ModelCheckpoint`: ``(state, history)``.

    To resume exactly, pass the run's callbacks (the same ones, in the same order) so that
    their states are loaded too, then ``fit(state, ..., callbacks=callbacks,
    initial_epoch=len(history), history=history)``.

    Args:
        directory: the checkpoint directory.
        target: a template state (e.g. a freshly created `TrainState`, or the state you were
            training). The result then has the same pytree types, static fields and array
            shardings. Without it, containers come back as dicts and lists of arrays.
        step: the checkpoint number to load (see `available_steps`); default the latest. Use
            it to fall back to an earlier checkpoint when the latest is damaged.
        callbacks: callbacks to load the saved callback states into (`Callback.load_state_dict`).

    Returns:
        ``(state, history)``: the training state and its `History` up to that checkpoint.

    Raises:
        CheckpointNotFoundError: the directory is missing, has no finished checkpoint, or
            ``step`` is not there.
        CheckpointMismatchError: the checkpoint does not match ``target`` (the first differing
            path is named) or ``callbacks``.
        CheckpointDamagedError: its files are unreadable or differ from their fingerprints.
        All are `CheckpointError`s; the message names the directory and the good checkpoints.

    Example:
        >>> import tempfile, jax.numpy as jnp, dlopt
        >>> from dlopt.training import ModelCheckpoint, TrainState, available_steps, fit, restore
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> data = [{"x": jnp.arange(4.0), "y": 2 * jnp.arange(4.0)}]
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     state, history = fit(state, data, epochs=3, val_data=data, loss_fn=loss_fn,
        ...                          callbacks=[ModelCheckpoint(directory)], progress=False)
        ...     print(available_steps(directory))
        ...     latest, history = restore(directory, target=state)  # the latest
        ...     first, first_history = restore(directory, target=state, step=1)  # a given one
        [1, 2, 3]
        >>> int(latest.step), len(history), int(first.step), len(first_history)
        (3, 3, 1, 1)
    """
    directory = os.path.abspath(os.fspath(directory))
    steps = available_steps(directory)
    if not steps:
        leftovers = unfinished_saves(directory)
        detail = (
            f"it holds only unfinished saves {leftovers} (a run stopped mid-save)"
            if leftovers
            else ("it is missing" if not os.path.isdir(directory) else "it holds no checkpoint")
        )
        raise CheckpointNotFoundError(
            f"No checkpoint to restore in {directory}: {detail}. Check the path, or train with "
            f"ModelCheckpoint({directory!r}) first."
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointNotFoundError(
            f"No checkpoint {step} in {directory}; the finished ones are {steps}. Pass one of "
            "them as step=."
        )
    state, history, _ = read_run(directory, step, target, callbacks, steps=steps)
    return state, history


# --------------------------------------------------------------------------- the callback


class ModelCheckpoint(Callback):
    """Saves the training state, `History` and callbacks' states at epoch ends (orbax).

    With ``save_best_only`` a checkpoint is written only when ``logs[monitor]`` improves on
    the best value so far (``mode="min"``: lower is better, ``"max"``: higher; an epoch
    without ``monitor`` in its logs is skipped with a warning, as in Keras). ``max_to_keep``
    keeps the newest checkpoints (with ``save_best_only``: the best ones); keep at least 2, so
    that a damaged latest checkpoint still leaves a good one behind. What a checkpoint holds
    is listed in `dlopt.training.checkpoint`; `fit` runs this callback's ``on_epoch_end``
    after the others' (``epoch_end_order = 1``), so the saved callback states include the
    epoch. Resume with ``restore(directory, target, callbacks=callbacks)`` and
    ``fit(..., initial_epoch=len(history), history=history)``.

    Args:
        directory: the checkpoint directory (created here if missing; one that cannot be
            created raises a ``ValueError`` naming it).
        monitor: the ``logs`` entry to watch, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (``"max"`` for names with ``acc`` or
            ending in ``auc``, else ``"min"``), as in Keras.
        save_best_only: save only improvements of ``monitor``; otherwise every epoch.
        max_to_keep: how many checkpoints to keep (None: all).
        overwrite: at the start of training, delete checkpoints numbered above the current
            ``state.step`` (left by a run that is being redone) instead of raising; and
            replace a checkpoint of the same number (written in full before the old one goes).

    Example:
        >>> import tempfile, jax.numpy as jnp, dlopt
        >>> from dlopt.training import ModelCheckpoint, TrainState, fit, restore
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> data = [{"x": jnp.arange(4.0), "y": 2 * jnp.arange(4.0)}]
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     ckpt = ModelCheckpoint(directory, monitor="val_loss", mode="min")
        ...     state, history = fit(state, data, epochs=3, val_data=data, loss_fn=loss_fn,
        ...                          callbacks=[ckpt], progress=False)
        ...     best, best_history = restore(ckpt.directory, target=state)
        >>> ckpt.saved_steps, len(best_history)  # val_loss improved every epoch
        ([1, 2, 3], 3)

    References:
        ``keras.callbacks.ModelCheckpoint``; orbax-checkpoint ``CheckpointManager``.
    """

    epoch_end_order = 1

    def __init__(
        self,
        directory: str | os.PathLike,
        monitor: str = "val_loss",
        mode: str = "min",
        save_best_only: bool = True,
        max_to_keep: int | None = 3,
        *,
        overwrite: bool = False,
    ):
        mode = resolve_mode(mode, monitor)
        if max_to_keep is not None:
            validation.check_int("max_to_keep", max_to_keep, 1)
        self.directory = os.path.abspath(os.fspath(directory))
        try:  # here rather than at the first save, an epoch of training later
            os.makedirs(self.directory, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"ModelCheckpoint cannot use directory={os.fspath(directory)!r}: "
                f"{error.strerror or error}; pass a folder you can write to."
            ) from None
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.max_to_keep = max_to_keep
        self.overwrite = overwrite
        self.best = math.inf if mode == "min" else -math.inf
        self.saved_steps: list[int] = []
        self._manager: ocp.CheckpointManager | None = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = open_manager(self.directory, self.max_to_keep)
        return self._manager

    def state_dict(self) -> dict[str, Any]:
        """The best monitored value so far and the checkpoints this callback wrote."""
        return {"best": self.best, "saved_steps": list(self.saved_steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.saved_steps = [int(s) for s in state["saved_steps"]]
        super().load_state_dict(state)

    def on_train_begin(self, state: Any, history: History) -> Any:
        if self.fresh_start():
            self.best = math.inf if self.mode == "min" else -math.inf
            for logs in history.epochs:  # resuming by hand: the best so far is in the History
                value = logs.get(self.monitor)
                if value is not None and improves(value, self.best, self.mode):
                    self.best = value
        step = state_step(state, len(history) - 1)
        later = [s for s in self.manager.all_steps() if s > step]
        redone = any(getattr(cb, "resumed", False) for cb in self.run_callbacks)
        if later and not (self.overwrite or redone):
            raise CheckpointError(
                f"{self.directory} already holds checkpoints {later} from beyond the current "
                f"step {step}. Resume from the latest with restore({self.directory!r}, target), "
                "use an empty directory, or pass ModelCheckpoint(..., overwrite=True) to delete "
                "them."
            )
        for s in later:  # a BackupAndRestore resume redoes (bitwise) the epochs they saved
            self.manager.delete(s)
        empty_trash(self.directory)
        return state

    def on_epoch_end(
        self, epoch: int, state: Any, history: History, logs: Mapping[str, float]
    ) -> Any:
        if self.save_best_only:
            current = monitored_value(dict(logs), self.monitor, "ModelCheckpoint")
            if current is None or not improves(current, self.best, self.mode):
                return state
        else:
            current = logs.get(self.monitor)
        if current is not None and improves(float(current), self.best, self.mode):
            self.best = float(current)
        self.save(epoch, state, with_epoch_logs(history, logs), current)
        return state

    def save(self, epoch: int, state: Any, history: History, value: float | None = None) -> int:
        """Writes one checkpoint (numbered by ``state.step``) and returns its number."""
        step = state_step(state, epoch)
        self.saved_steps.append(step)
        callbacks = self.run_callbacks or (self,)

        def write(manager, number):
            meta = {"monitor": self.monitor, "value": None if value is None else float(value)}
            write_run(manager, number, state, history, epoch=epoch, callbacks=callbacks, **meta)

        try:
            if step in self.manager.all_steps():
                if not self.overwrite:
                    raise CheckpointError(
                        f"checkpoint {step} already exists in {self.directory} (the step did "
                        "not advance since the last save). Pass overwrite=True to replace it."
                    )
                replace_run(self.directory, step, write)
                self.manager.reload()
            else:
                write(self.manager, step)
        except BaseException:
            self.saved_steps.pop()
            raise
        return step

    def on_train_end(self, state: Any, history: History) -> Any:
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None
        return state
