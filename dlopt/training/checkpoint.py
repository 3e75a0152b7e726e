"""Checkpoints on orbax-checkpoint: the `ModelCheckpoint` callback and `restore`.

A checkpoint is one directory ``<directory>/<n>`` holding three items: ``state`` (the whole
training-state pytree: step, params, optimizer state with its schedule counts and plateau
state, model state, RNG key data, skipped-step count), ``history`` (the `History` as JSON) and
``meta`` (epoch, monitored value and a SHA-256 fingerprint of every array leaf). Checkpoints
are numbered by the training step ``state.step`` (the epoch number for a state without a
``step``), so the numbering continues across a resumed run.

Writes are atomic: orbax writes into ``<n>.orbax-checkpoint-tmp`` and renames it to ``<n>``
only once every item is complete, so a crash mid-save leaves the previous checkpoint as the
latest. `restore` checks the fingerprints, so a damaged checkpoint is reported, never loaded.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.tree_util import keystr, tree_flatten_with_path

from dlopt.training.callbacks import Callback, _monitored, _resolve_mode
from dlopt.training.loop import History


class CheckpointError(RuntimeError):
    """A checkpoint directory holds no usable checkpoint, or the one asked for is damaged."""


def _options(max_to_keep: int | None = None, *, read_only: bool = False):
    return ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
    )


def _leftovers(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if ".orbax-checkpoint-tmp" in name)


def fingerprint(state: Any) -> dict[str, list]:
    """``{path: [dtype, shape, sha256]}`` of every array leaf of ``state`` (host copies).

    Paths read ``"opt_state/0/mu/w"``, the same for a NamedTuple or dataclass and the dict it
    restores to without a target. Leaves not fully addressable from this process (multi-host
    sharded arrays) are left out.
    """
    out = {}
    for path, leaf in tree_flatten_with_path(state)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        array = np.asarray(leaf)
        digest = hashlib.sha256(array.tobytes(order="C")).hexdigest()
        out[_path_name(path)] = [str(array.dtype), list(array.shape), digest]
    return out


def _path_name(path: tuple) -> str:
    """``"opt_state/0/trace/w"``: the same for a NamedTuple/dataclass and its dict restore."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(keystr((key,)))
    return "/".join(parts)


def _state_step(state: Any, epoch: int) -> int:
    step = getattr(state, "step", None)
    if step is None and isinstance(state, Mapping):
        step = state.get("step")
    if step is None:
        return epoch + 1
    if isinstance(step, jax.Array) and not step.is_fully_addressable:  # multi-host, replicated
        step = step.addressable_data(0)
    return int(np.asarray(step).reshape(-1)[0])  # a pmap-replicated step has a device axis


def _improved(current: float, best: float, mode: str) -> bool:
    if math.isnan(current):
        return False
    return current < best if mode == "min" else current > best


class ModelCheckpoint(Callback):
    """Saves the training state and `History` at the end of epochs, atomically (orbax).

    With ``save_best_only`` a checkpoint is written only when ``logs[monitor]`` improves on
    the best value so far (``mode="min"``: lower is better, ``"max"``: higher; an epoch
    without ``monitor`` in its logs is skipped with a warning, as in Keras); the best value
    is recovered from the `History` when training resumes. ``max_to_keep`` keeps the newest
    checkpoints (with ``save_best_only``: the best ones); keep at least 2, so that a damaged
    latest checkpoint still leaves a good one behind.

    Args:
        directory: the checkpoint directory (created if missing).
        monitor: the ``logs`` entry to watch, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"``, or ``"auto"`` (``"max"`` for names with ``acc`` or
            ending in ``auc``, else ``"min"``), as in Keras.
        save_best_only: save only improvements of ``monitor``; otherwise every epoch.
        max_to_keep: how many checkpoints to keep (None: all).
        overwrite: at the start of training, delete checkpoints numbered above the current
            ``state.step`` (left by a run that is being redone) instead of raising.

    Example:
        >>> import tempfile
        >>> ckpt = ModelCheckpoint(tempfile.mkdtemp(), monitor="val_loss", mode="min")
        >>> # state, history = fit(state, data, epochs=10, val_data=val, callbacks=[ckpt])
        >>> # state, history = restore(ckpt.directory, target=state)

    References:
        ``keras.callbacks.ModelCheckpoint``; orbax-checkpoint ``CheckpointManager``.
    """

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
        mode = _resolve_mode(mode, monitor)
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep=}.")
        self.directory = os.path.abspath(os.fspath(directory))
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
            self._manager = ocp.CheckpointManager(
                self.directory, options=_options(self.max_to_keep)
            )
        return self._manager

    def on_train_begin(self, state: Any, history: History) -> Any:
        self.best = math.inf if self.mode == "min" else -math.inf
        for logs in history.epochs:  # resuming: the best so far is in the History
            value = logs.get(self.monitor)
            if value is not None and _improved(value, self.best, self.mode):
                self.best = value
        step = _state_step(state, len(history) - 1)
        later = [s for s in self.manager.all_steps() if s > step]
        if later and not self.overwrite:
            raise CheckpointError(
                f"{self.directory} already holds checkpoints {later} from beyond the current "
                f"step {step}. Resume from the latest with restore({self.directory!r}, target), "
                "use an empty directory, or pass ModelCheckpoint(..., overwrite=True) to delete "
                "them."
            )
        for s in later:
            self.manager.delete(s)
        return state

    def on_epoch_end(
        self, epoch: int, state: Any, history: History, logs: Mapping[str, float]
    ) -> Any:
        if self.save_best_only:
            current = _monitored(dict(logs), self.monitor, "ModelCheckpoint")
            if current is None or not _improved(current, self.best, self.mode):
                return state
        else:
            current = logs.get(self.monitor)
        if current is not None and _improved(float(current), self.best, self.mode):
            self.best = float(current)
        self.save(epoch, state, _with_epoch(history, logs), current)
        return state

    def save(self, epoch: int, state: Any, history: History, value: float | None = None) -> int:
        """Writes one checkpoint (numbered by ``state.step``) and returns its number."""
        step = _state_step(state, epoch)
        if step in self.manager.all_steps():
            if not self.overwrite:
                raise CheckpointError(
                    f"checkpoint {step} already exists in {self.directory} (the step did not "
                    "advance since the last save). Pass overwrite=True to replace it."
                )
            self.manager.delete(step)
        meta = {
            "epoch": int(epoch),
            "step": step,
            "monitor": self.monitor,
            "value": None if value is None else float(value),
            "fingerprint": fingerprint(state),
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                history=ocp.args.JsonSave(history.to_dict()),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        self.saved_steps.append(step)
        return step

    def on_train_end(self, state: Any, history: History) -> Any:
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None
        return state


def _with_epoch(history: History, logs: Mapping[str, float]) -> History:
    """The History including this epoch's ``logs`` (fit may append them after the callbacks)."""
    logs = {str(k): float(v) for k, v in logs.items()}
    last = history.epochs[-1] if history.epochs else None
    if last is not None and History([last]) == History([logs]):
        return history
    return History([*history.epochs, logs])


def available_steps(directory: str | os.PathLike) -> list[int]:
    """The numbers of the finished checkpoints in ``directory`` (unfinished saves excluded)."""
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        return []
    manager = ocp.CheckpointManager(directory, options=_options(read_only=True))
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def restore(
    directory: str | os.PathLike, target: Any = None, *, step: int | None = None
) -> tuple[Any, History]:
    """Loads a checkpoint written by `ModelCheckpoint`: ``(state, history)``.

    Args:
        directory: the checkpoint directory.
        target: a template state (e.g. a freshly created `TrainState`, or the state you were
            training). The result then has the same pytree types, static fields and array
            shardings. Without it, containers come back as dicts and lists of arrays.
        step: the checkpoint number to load (see `available_steps`); default the latest. Use
            it to fall back to an earlier checkpoint when the latest is damaged.

    Returns:
        ``(state, history)``: the training state and its `History` up to that checkpoint.

    Raises:
        CheckpointError: the directory has no finished checkpoint, ``step`` is not there, the
            checkpoint is damaged (unreadable or fingerprint mismatch), or it does not match
            ``target``. The message names the directory and the good checkpoints left.

    Example:
        >>> # state, history = restore("/tmp/run1", target=state)             # latest
        >>> # state, history = restore("/tmp/run1", target=state, step=300)   # a given one
    """
    directory = os.path.abspath(os.fspath(directory))
    steps = available_steps(directory)
    if not steps:
        leftovers = _leftovers(directory)
        detail = (
            f"it holds only unfinished saves {leftovers} (a run stopped mid-save)"
            if leftovers
            else ("it is missing" if not os.path.isdir(directory) else "it holds no checkpoint")
        )
        raise CheckpointError(
            f"No checkpoint to restore in {directory}: {detail}. Check the path, or train with "
            f"ModelCheckpoint({directory!r}) first."
        )
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(
            f"No checkpoint {step} in {directory}; the finished ones are {steps}. Pass one of "
            "them as step=."
        )
    others = [s for s in steps if s != step]
    fix = (
        f"Restore an earlier one with restore({directory!r}, target, step={others[-1]}) "
        f"(finished checkpoints: {steps}), and delete {os.path.join(directory, str(step))}."
        if others
        else "No other checkpoint is left there; retrain from scratch."
    )
    meta = _read(directory, step, ocp.args.Composite(meta=ocp.args.JsonRestore()), fix)["meta"]
    if target is not None:
        _check_target(target, meta, step, directory)
    state_args = ocp.args.StandardRestore(target) if target is not None else None
    args = ocp.args.Composite(
        state=state_args or ocp.args.StandardRestore(), history=ocp.args.JsonRestore()
    )
    restored = _read(directory, step, args, fix)
    state, now_prints = restored["state"], fingerprint(restored["state"])
    bad = [
        path
        for path, saved in meta["fingerprint"].items()
        if (now := now_prints.get(path)) is not None and now[:2] == saved[:2] and now != saved
    ]
    if bad:
        raise CheckpointError(
            f"Checkpoint {step} in {directory} is damaged: the arrays at {bad[:3]} differ from "
            f"what was saved (fingerprint mismatch). {fix}"
        )
    return state, History.from_dict(restored["history"])


def _read(directory: str, step: int, args: Any, fix: str) -> Any:
    """``manager.restore``; any failure (orbax, tensorstore, json) means a damaged checkpoint."""
    manager = ocp.CheckpointManager(directory, options=_options(read_only=True))
    try:
        return manager.restore(step, args=args)
    except Exception as error:
        raise CheckpointError(
            f"Checkpoint {step} in {directory} is damaged and cannot be read "
            f"({type(error).__name__}: {str(error)[:300]}). {fix}"
        ) from error
    finally:
        manager.close()


def _check_target(target: Any, meta: Mapping[str, Any], step: int, directory: str) -> None:
    saved = {path: tuple(v[1]) for path, v in meta["fingerprint"].items()}
    wanted = {
        _path_name(path): tuple(np.shape(leaf)) for path, leaf in tree_flatten_with_path(target)[0]
    }
    if saved.keys() == wanted.keys() and saved == wanted:
        return
    missing, extra = sorted(saved.keys() - wanted.keys()), sorted(wanted.keys() - saved.keys())
    shapes = [p for p in saved.keys() & wanted.keys() if saved[p] != wanted[p]]
    detail = (
        f"the checkpoint has {missing[:3]} that target lacks"
        if missing
        else f"target has {extra[:3]} that the checkpoint lacks"
        if extra
        else f"shapes differ at {[(p, saved[p], wanted[p]) for p in shapes[:3]]}"
    )
    raise CheckpointError(
        f"Checkpoint {step} in {directory} does not match target: {detail}. Build target with "
        "the same model and optimizer as the run that saved it, or restore without target."
    )
