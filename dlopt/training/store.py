"""A saved run on disk (orbax): atomic writes and replacement, fingerprints, and the checks
that say what went wrong. `dlopt.training.checkpoint` (``ModelCheckpoint``, ``restore``) and
`dlopt.training.backup` (``BackupAndRestore``) write and read runs through it; what a saved run
holds is listed in `dlopt.training.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.tree_util import tree_flatten_with_path

from dlopt.core import tree as tree_lib
from dlopt.training import callback_state
from dlopt.training.layout import from_saved, saved_form
from dlopt.training.loop import History
from dlopt.training.quiet import quiet_reads

TRASH = ".dlopt-trash"  # checkpoints being deleted are renamed here first
STAGING = ".dlopt-staging"  # a checkpoint that replaces one of the same number is written here


class CheckpointError(RuntimeError):
    """A checkpoint directory holds no usable checkpoint, or the one asked for is unusable."""


class CheckpointNotFoundError(CheckpointError):
    """The directory is missing, holds no finished checkpoint, or not the one asked for."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint does not fit the target (or the callbacks): structure, shapes, dtypes."""


class CheckpointDamagedError(CheckpointError):
    """The checkpoint's files are unreadable or differ from what was saved (fingerprints)."""


# --------------------------------------------------------------------------- the directory


def _options(max_to_keep: int | None = None, *, read_only: bool = False):
    return ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=False,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        todelete_subdir=None if read_only else TRASH,
    )


def open_manager(directory: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """A writing orbax manager on ``directory``, after finishing an interrupted replacement."""
    finish_interrupted(directory)
    empty_trash(directory)
    return ocp.CheckpointManager(directory, options=_options(max_to_keep))


def empty_trash(directory: str) -> None:
    """Deletes what was renamed into the trash (checkpoints already out of sight)."""
    shutil.rmtree(os.path.join(directory, TRASH), ignore_errors=True)


def finish_interrupted(directory: str) -> None:
    """Completes a replacement that a kill interrupted between its two renames: a finished
    checkpoint in the staging folder whose number is missing from ``directory`` moves in."""
    staging = os.path.join(directory, STAGING)
    if not os.path.isdir(staging):
        return
    try:
        for name in os.listdir(staging):
            target = os.path.join(directory, name)
            if name.isdigit() and not os.path.exists(target):
                os.rename(os.path.join(staging, name), target)
        shutil.rmtree(staging, ignore_errors=True)
    except OSError:  # a read-only directory: restore reads the staging copy instead
        pass


def unfinished_saves(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if ".orbax-checkpoint-tmp" in name)


def available_steps(directory: str | os.PathLike) -> list[int]:
    """The numbers of the finished checkpoints in ``directory`` (unfinished saves excluded)."""
    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        return []
    finish_interrupted(directory)
    with quiet_reads():
        manager = ocp.CheckpointManager(directory, options=_options(read_only=True))
        try:
            return sorted(manager.all_steps())
        finally:
            manager.close()


# --------------------------------------------------------------------------- fingerprints


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
        out[tree_lib.path_name(path)] = [str(array.dtype), list(array.shape), digest]
    return out


def meta_digest(meta: Mapping[str, Any]) -> str:
    """The sha256 of ``meta`` (without its own ``"meta_sha256"``) as canonical JSON: a byte
    changed in the saved meta (a dtype, a shape, a fingerprint) is damage, not a mismatch."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_step(state: Any, epoch: int) -> int:
    step = getattr(state, "step", None)
    if step is None and isinstance(state, Mapping):
        step = state.get("step")
    if step is None:
        return epoch + 1
    if isinstance(step, jax.Array) and not step.is_fully_addressable:  # multi-host, replicated
        step = step.addressable_data(0)
    return int(np.asarray(step).reshape(-1)[0])  # a pmap-replicated step has a device axis


# --------------------------------------------------------------------------- one saved run


def write_run(
    manager: ocp.CheckpointManager,
    number: int,
    state: Any,
    history: History,
    *,
    epoch: int,
    callbacks: Sequence[Any] = (),
    **meta: Any,
) -> None:
    """Saves ``state``, ``history``, the callbacks' states and ``meta`` as checkpoint
    ``number`` of ``manager`` (one atomic orbax save; a flat state in the tree layout)."""
    state = saved_form(state)
    tree, arrays = callback_state.encode(callback_state.collect(callbacks))
    meta = {
        "epoch": int(epoch),
        "step": state_step(state, epoch),
        "stopped": any(getattr(cb, "stop_training", False) for cb in callbacks),
        **meta,
        "fingerprint": fingerprint(state),
        "callback_fingerprint": fingerprint(arrays),
    }
    meta["meta_sha256"] = meta_digest(meta)
    items = {
        "state": ocp.args.StandardSave(state),
        "history": ocp.args.JsonSave(history.to_dict()),
        "callbacks": ocp.args.JsonSave(tree),
        "meta": ocp.args.JsonSave(meta),
    }
    if arrays:
        items["callback_arrays"] = ocp.args.StandardSave(arrays)
    manager.save(number, args=ocp.args.Composite(**items), force=True)
    manager.wait_until_finished()
    empty_trash(os.fspath(manager.directory))


def replace_run(directory: str, number: int, write: Any) -> None:
    """Replaces checkpoint ``number`` by what ``write(manager, number)`` saves, never
    deleting the old one before the new one is complete (written in the staging folder,
    then renamed in; `finish_interrupted` completes a kill between the two renames)."""
    staging = os.path.join(directory, STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    manager = ocp.CheckpointManager(staging, options=_options())
    try:
        write(manager, number)
    finally:
        manager.close()
    trash = os.path.join(directory, TRASH)
    os.makedirs(trash, exist_ok=True)
    os.rename(os.path.join(directory, str(number)), os.path.join(trash, str(number)))
    os.rename(os.path.join(staging, str(number)), os.path.join(directory, str(number)))
    shutil.rmtree(staging, ignore_errors=True)
    empty_trash(directory)


def _fix_hint(directory: str, number: int, steps: list[int]) -> str:
    others = [s for s in steps if s != number]
    if not others:
        return "No other checkpoint is left there; retrain from scratch."
    return (
        f"Restore an earlier one with restore({directory!r}, target, step={others[-1]}) "
        f"(finished checkpoints: {steps}), and delete {os.path.join(directory, str(number))}."
    )


def read_run(
    directory: str,
    number: int,
    target: Any = None,
    callbacks: Sequence[Any] | None = None,
    *,
    steps: list[int] | None = None,
) -> tuple[Any, History, dict[str, Any]]:
    """Loads checkpoint ``number``: ``(state, history, meta)``, the callbacks' states loaded
    into ``callbacks`` (when given). Raises the `CheckpointError` that names the problem."""
    fix = _fix_hint(directory, number, steps or [number])
    if not os.path.isdir(os.path.join(directory, str(number))):
        staging = os.path.join(directory, STAGING)  # an interrupted replacement, read-only dir
        if os.path.isdir(os.path.join(staging, str(number))):
            directory = staging
    meta = _read(directory, number, {"meta": ocp.args.JsonRestore()}, fix)["meta"]
    _check_meta(meta, number, directory, fix)
    flat_target, target = target, saved_form(target)
    if target is not None:
        _check_target(target, meta, number, directory)
    names = _item_names(directory, number)
    items = {
        "state": ocp.args.StandardRestore(target) if target is not None else None,
        "history": ocp.args.JsonRestore(),
    }
    items["state"] = items["state"] or ocp.args.StandardRestore()
    if callbacks is not None:
        if "callbacks" not in names:
            raise CheckpointMismatchError(
                f"Checkpoint {number} in {directory} holds no callback states (it was written "
                "without them); restore it without callbacks=."
            )
        items["callbacks"] = ocp.args.JsonRestore()
        if "callback_arrays" in names:
            items["callback_arrays"] = ocp.args.StandardRestore()
    restored = _read(directory, number, items, fix)
    state = restored["state"]
    _check_prints(meta["fingerprint"], fingerprint(state), number, directory, fix)
    if callbacks is not None:
        arrays = restored.get("callback_arrays") or {}
        _check_prints(
            meta.get("callback_fingerprint", {}), fingerprint(arrays), number, directory, fix
        )
        states = callback_state.decode(restored["callbacks"], arrays)
        try:
            callback_state.load(callbacks, states, f"Checkpoint {number} in {directory}")
        except ValueError as error:
            raise CheckpointMismatchError(str(error)) from error
    return from_saved(state, flat_target), History.from_dict(restored["history"]), meta


def _item_names(directory: str, number: int) -> set[str]:
    path = os.path.join(directory, str(number))
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def _read(directory: str, number: int, items: Mapping[str, Any], fix: str) -> Any:
    """``manager.restore``, quietly; a failure after the target and meta checks means damaged
    files."""
    with quiet_reads():
        manager = ocp.CheckpointManager(directory, options=_options(read_only=True))
        try:
            return manager.restore(number, args=ocp.args.Composite(**items))
        except Exception as error:
            raise CheckpointDamagedError(
                f"Checkpoint {number} in {directory} is damaged and cannot be read "
                f"({type(error).__name__}: {str(error)[:300]}). {fix}"
            ) from None
        finally:
            manager.close()


def _check_meta(meta: Any, number: int, directory: str, fix: str) -> None:
    """Raises `CheckpointDamagedError` when the meta differs from its saved digest (written
    since the digest exists), is no mapping, or names a dtype that numpy does not know."""
    damaged = None
    if not isinstance(meta, Mapping) or not isinstance(meta.get("fingerprint"), Mapping):
        damaged = "its meta is not what dlopt writes"
    elif "meta_sha256" in meta and meta["meta_sha256"] != meta_digest(meta):
        damaged = "its meta differs from what was saved (digest mismatch)"
    else:
        for path, print_ in meta["fingerprint"].items():
            try:
                np.dtype(print_[0])
            except (TypeError, ValueError, IndexError):
                damaged = f"its meta names an unknown dtype {print_[0]!r} at {path!r}"
                break
    if damaged:
        raise CheckpointDamagedError(
            f"Checkpoint {number} in {directory} is damaged: {damaged}. {fix}"
        )


def _check_prints(saved: Mapping, now: Mapping, number: int, directory: str, fix: str) -> None:
    bad = [
        path
        for path, print_ in saved.items()
        if (got := now.get(path)) is not None and got[:2] == print_[:2] and got != print_
    ]
    if bad:
        raise CheckpointDamagedError(
            f"Checkpoint {number} in {directory} is damaged: the arrays at {bad[:3]} differ from "
            f"what was saved (fingerprint mismatch). {fix}"
        )


def _check_target(target: Any, meta: Mapping[str, Any], number: int, directory: str) -> None:
    """Raises `CheckpointMismatchError` naming the first path (in the saved order) where the
    checkpoint and ``target`` differ in presence, shape or dtype."""
    saved = {path: (v[0], tuple(v[1])) for path, v in meta["fingerprint"].items()}
    wanted = {
        tree_lib.path_name(path): (str(np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))),
                           tuple(np.shape(leaf)))
        for path, leaf in tree_flatten_with_path(target)[0]
    }  # fmt: skip
    detail = None
    for path, (dtype, shape) in saved.items():
        if path not in wanted:
            detail = f"the checkpoint has {path!r} that target lacks"
        elif wanted[path] != (dtype, shape):
            got_dtype, got_shape = wanted[path]
            detail = (
                f"at {path!r} the checkpoint holds {dtype}{list(shape)} and target "
                f"{got_dtype}{list(got_shape)}"
            )
        if detail:
            break
    else:
        extra = [p for p in wanted if p not in saved]
        if extra:
            detail = f"target has {extra[0]!r} that the checkpoint lacks"
    if detail:
        raise CheckpointMismatchError(
            f"Checkpoint {number} in {directory} does not match target: {detail}. Build target "
            "with the same model and optimizer as the run that saved it, or restore without "
            "target."
        )


def with_epoch_logs(history: History, logs: Mapping[str, float]) -> History:
    """The History including this epoch's ``logs`` (fit may append them after the callbacks)."""
    logs = {str(k): float(v) for k, v in logs.items()}
    last = history.epochs[-1] if history.epochs else None
    if last is not None and History([last]) == History([logs]):
        return history
    return History([*history.epochs, logs])
