"""BackupAndRestore: a run killed (SIGKILL) at any moment and rerun ends bitwise like one that
never stopped; EarlyStopping and ReduceLROnPlateau state included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest
from support import TESTS
from support.checkpoint import EVAL_STEP, loss_fn, make_data, make_state

import dlopt
from dlopt.training import (
    EarlyStopping,
    History,
    LambdaCallback,
    ReduceLROnPlateau,
    fit,
    make_train_step,
)
from dlopt.training.backup import BackupAndRestore
from dlopt.training.checkpoint import CheckpointMismatchError, available_steps

HERE = os.path.dirname(os.path.abspath(__file__))
EPOCHS = 15


def injected_state():
    """test_checkpoint's Net (BatchNorm, dropout) under Adam with an injected learning rate."""
    state = make_state()
    tx = dlopt.inject_hyperparams(dlopt.adam)(learning_rate=0.05)
    return state.replace(tx=tx, opt_state=tx.init(state.params))


TRAIN_STEP = make_train_step(loss_fn)


def callbacks(directory, hook=None):
    """The run's callbacks; ``hook`` (a LambdaCallback) first, the same in every run."""
    return [
        hook or LambdaCallback(),
        EarlyStopping(monitor="val_loss", patience=2),
        ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0),
        *([BackupAndRestore(directory)] if directory else []),
    ]


def run(state, cbs, epochs=EPOCHS):
    train, val = make_data()
    return fit(
        state,
        train,
        epochs=epochs,
        val_data=val,
        train_step=TRAIN_STEP,
        eval_step=EVAL_STEP,
        callbacks=cbs,
        progress=False,
    )


def lr(state):
    return float(dlopt.get_hyperparam(state.opt_state, "learning_rate"))


# ------------------------------------------------------------- SIGKILL, in a fresh process

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    sys.path[:0] = [{here!r}, {tests!r}]  # this module, and tests/ for support/
    import numpy as np
    import jax
    from orbax.checkpoint import handlers
    import test_backup as t
    from dlopt.training import LambdaCallback, store

    point, at = os.environ.get("KILL", ":-1").split(":")
    at = int(at)
    epoch = [-1]

    def kill():
        os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(e, s, h):
        epoch[0] = e

    def on_epoch_end(e, s, h, logs):  # after the epoch's training, before its backup
        if point == "epoch_end" and e == at:
            kill()

    def on_train_end(s, h):  # training over, the backup not yet deleted
        if point == "train_end":
            kill()

    if point == "mid_save":  # the state item written, the JSON items not
        json_save = handlers.JsonCheckpointHandler.async_save

        def save(self, *args, **kwargs):
            if epoch[0] == at:
                kill()
            return json_save(self, *args, **kwargs)

        handlers.JsonCheckpointHandler.async_save = save
    if point == "before_delete":  # the new backup committed, the old one not yet deleted
        empty_trash = store.empty_trash

        def empty(directory):
            if epoch[0] == at and os.listdir(os.path.join(directory, store.TRASH)):
                kill()
            return empty_trash(directory)

        store.empty_trash = empty
    hook = LambdaCallback(
        on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end, on_train_end=on_train_end
    )
    directory = os.environ["BACKUP"] or None
    state, history = t.run(t.injected_state(), t.callbacks(directory, hook))
    np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(state)])
    with open({out!r} + ".json", "w") as f:
        json.dump({{"history": history.to_dict(), "lr": t.lr(state)}}, f)
    """
)


def run_script(out, backup, kill=None):
    script = SCRIPT.format(here=HERE, tests=str(TESTS), out=out)
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "BACKUP": backup,
        "KILL": kill or ":-1",
        # the processes share compiled steps (a run starts in 1-2 s instead of 5-10)
        "JAX_COMPILATION_CACHE_DIR": os.path.join(os.path.dirname(out), "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    if kill is None:
        assert result.returncode == 0, result.stderr[-3000:]
        saved = np.load(out)
        with open(out + ".json") as f:
            record = json.load(f)
        return [saved[f"arr_{i}"] for i in range(len(saved.files))], record
    assert result.returncode == -9, (kill, result.returncode, result.stderr[-3000:])
    return None


@pytest.mark.slow  # 7 processes: 15-45 s
def test_sigkill_at_any_moment_then_rerun_equals_an_uninterrupted_run(tmp_path):
    straight, record = run_script(str(tmp_path / "straight.npz"), backup="")
    history = History.from_dict(record["history"])
    assert 6 <= len(history) < EPOCHS  # EarlyStopping stopped it
    assert record["lr"] < 0.05  # ReduceLROnPlateau reduced it

    backup = str(tmp_path / "backup")
    kills = ["epoch_end:1", "mid_save:2", "before_delete:3", "train_end:0"]
    for kill in kills:
        run_script(str(tmp_path / "killed.npz"), backup, kill)
        assert len(available_steps(backup)) == 1  # always one usable backup
    resumed, resumed_record = run_script(str(tmp_path / "resumed.npz"), backup)
    chex.assert_trees_all_equal(resumed, straight)  # params, opt state, BatchNorm, rng, step
    assert History.from_dict(resumed_record["history"]) == history
    assert resumed_record["lr"] == record["lr"]
    assert not os.path.exists(backup)  # delete_checkpoint=True


# ------------------------------------------------------------------------ in one process


class Crash(Exception):
    pass


def crash_at(epoch):
    def on_epoch_end(e, s, h, logs):
        if e == epoch:
            raise Crash

    return LambdaCallback(on_epoch_end=on_epoch_end)


@pytest.fixture(scope="module")
def straight():
    cbs = callbacks(None)
    state, history = run(injected_state(), cbs)
    return state, history, cbs[1].stopped_epoch


def test_crash_and_rerun_in_process_equals_straight(tmp_path, straight):
    state0, history0, stopped = straight
    directory = str(tmp_path / "b")
    with pytest.raises(Crash):
        run(injected_state(), callbacks(directory, crash_at(stopped - 1)))
    cbs = callbacks(directory)
    state, history = run(injected_state(), cbs)
    assert cbs[-1].resumed and cbs[-1].resumed_epoch == stopped - 1
    assert cbs[1].stopped_epoch == stopped and history == history0  # not two epochs later
    chex.assert_trees_all_equal(jax.tree.leaves(state), jax.tree.leaves(state0))
    assert lr(state) == lr(state0)


def test_keep_the_backup_then_rerun_trains_no_further(tmp_path, straight):
    state0, history0, _ = straight
    directory = str(tmp_path / "b")
    run(injected_state(), [*callbacks(None), BackupAndRestore(directory, delete_checkpoint=False)])
    assert len(available_steps(directory)) == 1
    seen = []
    hook = LambdaCallback(on_epoch_begin=lambda e, s, h: seen.append(e))
    cbs = [*callbacks(None, hook), BackupAndRestore(directory, delete_checkpoint=False)]
    state, history = run(injected_state(), cbs)
    assert seen == [] and history == history0  # EarlyStopping had stopped the saved run
    chex.assert_trees_all_equal(jax.tree.leaves(state), jax.tree.leaves(state0))


def test_other_callbacks_on_resume_raise_naming_the_difference(tmp_path):
    directory = str(tmp_path / "b")
    with pytest.raises(Crash):
        run(injected_state(), callbacks(directory, crash_at(1)))
    cbs = [LambdaCallback(), ReduceLROnPlateau(), BackupAndRestore(directory)]
    with pytest.raises(CheckpointMismatchError, match="1:EarlyStopping"):
        run(injected_state(), cbs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [({"save_freq": 10}, ValueError, "save_freq"), ({"delete_checkpoint": 1}, TypeError, "delete")],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        BackupAndRestore(tmp_path, **kwargs)
