"""`BackupAndRestore`: rerunning a crashed training script continues it exactly (Keras's name).

At every epoch end the whole run is saved, atomically, as one checkpoint (see
`dlopt.training.checkpoint` for what it holds: the training state, the `History`, the epoch
and the state of every callback of the run); at the start of `fit` the latest backup, if any,
is restored and training continues from the next epoch. The same script rerun after a crash,
a kill or a preemption therefore ends with bitwise the same params, `History` and learning
rate as a run that never stopped, provided the data of an epoch depends only on the epoch
(a list, or a callable ``epoch -> batches`` that seeds its shuffling with the epoch).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import orbax.checkpoint as ocp

from dlopt.core import validation
from dlopt.training.callbacks import Callback
from dlopt.training.loop import History, Resume
from dlopt.training.store import (
    available_steps,
    empty_trash,
    open_manager,
    read_run,
    with_epoch_logs,
    write_run,
)


class BackupAndRestore(Callback):
    """Backs the run up at every epoch end and resumes from the latest backup in `fit`.

    A backup is written after every other callback's ``on_epoch_end`` (``epoch_end_order =
    2``), as checkpoint ``<directory>/<n>`` (``n`` counts the backups); the previous one is
    deleted only once the new one is complete, so a kill at any moment, in the middle of a
    save included, leaves a usable backup. When `fit` starts and a backup exists, it restores
    the training state (into the shapes, types and shardings of the state given to `fit`),
    the `History` and every callback's state (`Callback.load_state_dict`; pass the same
    callbacks, in the same order), and continues from the epoch after the backed-up one; a
    run whose callbacks had stopped it does not train further. Put the data's randomness in
    the epoch number (``train_data=lambda epoch: ...``) for a bitwise-equal resume.

    Args:
        directory: where the backup lives (created if missing); one per training run.
        save_freq: ``"epoch"``, a backup at every epoch end (Keras's int, every N batches, is
            not supported: a run resumes at an epoch boundary).
        delete_checkpoint: delete the backup when training finishes (in ``on_train_end``);
            with False, rerunning a finished script restores it and trains no further.

    Attributes:
        resumed: whether the last `fit` started from a backup (then ``resumed_epoch`` is the
            first epoch it ran).

    Example:
        >>> import tempfile, jax.numpy as jnp, dlopt
        >>> from dlopt.training import BackupAndRestore, TrainState, fit
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> data = [{"x": jnp.arange(4.0), "y": 2 * jnp.arange(4.0)}]
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     backup = BackupAndRestore(directory, delete_checkpoint=False)
        ...     _ = fit(state, data, epochs=2, loss_fn=loss_fn, callbacks=[backup],
        ...             progress=False)  # a run that stopped after epoch 1
        ...     fresh = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                               tx=dlopt.sgd(0.1), rng=0)
        ...     state, history = fit(fresh, data, epochs=4, loss_fn=loss_fn, callbacks=[backup],
        ...                          progress=False)  # the script run again
        >>> backup.resumed, backup.resumed_epoch, len(history), int(state.step)
        (True, 2, 4, 4)

    References:
        ``keras.callbacks.BackupAndRestore``.
    """

    epoch_end_order = 2

    def __init__(
        self,
        directory: str | os.PathLike,
        save_freq: str = "epoch",
        delete_checkpoint: bool = True,
    ):
        if save_freq != "epoch":
            raise ValueError(
                f"save_freq must be 'epoch' (a backup at every epoch end), got {save_freq=!r}; "
                "a run resumes at an epoch boundary."
            )
        validation.check_flag("delete_checkpoint", delete_checkpoint)
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self.resumed = False
        self.resumed_epoch: int | None = None
        self._number = 0
        self._manager: ocp.CheckpointManager | None = None

    @property
    def manager(self) -> ocp.CheckpointManager:
        if self._manager is None:
            self._manager = open_manager(self.directory, max_to_keep=1)
        return self._manager

    def resume(self, state: Any, history: History) -> Resume | None:
        """Called by `fit` before ``on_train_begin``: the latest backup as a `Resume`
        (state, history, first epoch to run, stopped), or None when there is none."""
        del history
        self.resumed, self.resumed_epoch, self._number = False, None, 0
        steps = available_steps(self.directory)
        if not steps:
            return None
        callbacks = self.run_callbacks or (self,)
        state, history, meta = read_run(
            self.directory, steps[-1], target=state, callbacks=callbacks, steps=steps
        )
        self._number = steps[-1]
        self.resumed, self.resumed_epoch = True, int(meta["epoch"]) + 1
        return Resume(state, history, self.resumed_epoch, bool(meta["stopped"]))

    def on_epoch_end(self, epoch: int, state: Any, history: History, logs: dict[str, float]) -> Any:
        self._number += 1
        callbacks = self.run_callbacks or (self,)
        full = with_epoch_logs(history, logs)
        write_run(self.manager, self._number, state, full, epoch=epoch, callbacks=callbacks)
        return state

    def on_train_end(self, state: Any, history: History) -> Any:
        del history
        manager, self._manager = self.manager, None
        if self.delete_checkpoint:
            for number in manager.all_steps():
                manager.delete(number)  # renamed into the trash first: gone in one rename
        manager.close()
        if self.delete_checkpoint:
            empty_trash(self.directory)
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)  # only when nothing else lives there
        return state
