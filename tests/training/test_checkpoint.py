"""ModelCheckpoint and restore: round trips, best-only saving, atomicity, damage, resume."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint import handlers
from support import TESTS
from support.checkpoint import EVAL_STEP, TRAIN_STEP, make_data, make_state

import dlopt
from dlopt.training import History, TrainState, fit
from dlopt.training.checkpoint import (
    CheckpointError,
    ModelCheckpoint,
    available_steps,
    restore,
)
from dlopt.training.layout import to_tree
from dlopt.training.store import meta_digest

HERE = os.path.dirname(os.path.abspath(__file__))


def run(state, epochs, callbacks=(), **kwargs):
    train, val = make_data()
    return fit(
        state,
        train,
        epochs=epochs,
        val_data=val,
        train_step=TRAIN_STEP,
        eval_step=EVAL_STEP,
        callbacks=callbacks,
        progress=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained():
    """A state after 2 epochs (non-trivial opt_state, batch_stats, step) and its History."""
    return run(make_state(), 2)


def as_numpy(tree):
    """The array leaves as numpy, in order (TrainStates built apart differ in their static tx)."""
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# -------------------------------------------------------------------------------- round trips


def test_restore_with_target_returns_the_same_types_and_values(tmp_path, trained):
    state, history = trained
    history = History([*history.epochs, {"loss": float("nan")}])  # NaN survives JSON
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    step = ckpt.save(1, state, history)
    ckpt.on_train_end(state, history)
    assert step == int(state.step) and available_steps(tmp_path) == [step]

    restored, restored_history = restore(tmp_path, target=make_state(seed=5))
    assert type(restored) is TrainState
    assert jax.tree.structure(restored.replace(tx=None, apply_fn=None)) == jax.tree.structure(
        state.replace(tx=None, apply_fn=None)
    )
    chex.assert_trees_all_equal(as_numpy(restored), as_numpy(state))
    assert restored.tx is not None and restored.apply_fn is not None  # static fields: target's
    assert restored_history == history


def test_restore_without_target_gives_plain_containers(tmp_path, trained):
    state, history = trained
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    ckpt.save(1, state, history)
    restored, _ = restore(tmp_path)
    assert isinstance(restored, dict) and set(restored) >= {"params", "opt_state", "rng"}
    chex.assert_trees_all_equal(
        sorted(map(np.asarray, jax.tree.leaves(restored)), key=lambda a: (a.shape, a.sum())),
        # the saved form is the tree layout, whatever layout the state was in
        sorted(map(np.asarray, jax.tree.leaves(to_tree(state))), key=lambda a: (a.shape, a.sum())),
    )


class PlainState(NamedTuple):
    params: dict
    opt_state: tuple


def test_generic_pytree_state_is_numbered_by_epoch(tmp_path):
    params = {"w": jnp.arange(3.0)}
    tx = dlopt.sgd(0.1, momentum=0.9)
    state = PlainState(params, tx.init(params))
    updates, opt_state = tx.update({"w": jnp.ones(3)}, state.opt_state, params)
    state = PlainState(dlopt.apply_updates(params, updates), opt_state)
    ckpt = ModelCheckpoint(tmp_path, monitor="loss", save_best_only=False)
    ckpt.on_train_begin(state, History())
    history = History([{"loss": 1.0}])
    ckpt.on_epoch_end(0, state, history, history.epochs[-1])
    assert available_steps(tmp_path) == [1]
    restored, _ = restore(tmp_path, target=PlainState(params, tx.init(params)))
    assert type(restored) is PlainState and type(restored.opt_state[0]) is type(opt_state[0])
    chex.assert_trees_all_equal(restored, state)


# ------------------------------------------------------------------ best only, max_to_keep


def drive(ckpt, values, monitor="val_loss"):
    """Runs ModelCheckpoint over epochs whose logs[monitor] are ``values``; step = epoch + 1."""
    history = History()
    state = {"step": jnp.zeros((), jnp.int32), "w": jnp.zeros(2)}
    ckpt.on_train_begin(state, history)
    for epoch, value in enumerate(values):
        state = {"step": jnp.asarray(epoch + 1, jnp.int32), "w": jnp.full(2, float(epoch))}
        logs = {"loss": 1.0, monitor: value}
        history.append(logs)
        ckpt.on_epoch_end(epoch, state, history, logs)
    ckpt.on_train_end(state, history)
    return history


@pytest.mark.parametrize(
    "mode, monitor, values, saved",
    [
        ("min", "val_loss", [3.0, 2.0, 2.5, 1.0, float("nan"), 0.5], [1, 2, 4, 6]),
        ("max", "val_accuracy", [0.5, 0.7, 0.6, 0.9, 0.9], [1, 2, 4]),
        ("auto", "val_accuracy", [0.5, 0.4, 0.6], [1, 3]),
    ],
)
def test_save_best_only(tmp_path, mode, monitor, values, saved):
    ckpt = ModelCheckpoint(tmp_path, monitor=monitor, mode=mode, max_to_keep=None)
    drive(ckpt, values, monitor)
    assert ckpt.saved_steps == saved and available_steps(tmp_path) == saved
    state, history = restore(tmp_path)
    assert float(state["w"][0]) == saved[-1] - 1 and len(history) == saved[-1]


def test_max_to_keep_keeps_the_newest_and_resume_remembers_the_best(tmp_path):
    drive(ModelCheckpoint(tmp_path, max_to_keep=2), [3.0, 2.0, 1.0])
    assert available_steps(tmp_path) == [2, 3]
    _, history = restore(tmp_path)
    resumed = ModelCheckpoint(tmp_path, max_to_keep=2)
    resumed.on_train_begin({"step": jnp.asarray(3)}, history)
    assert resumed.best == 1.0


def test_missing_monitor_warns_and_skips(tmp_path):
    ckpt = ModelCheckpoint(tmp_path, monitor="val_loss")
    ckpt.on_train_begin({"step": jnp.asarray(0)}, History())
    with pytest.warns(UserWarning, match="val_loss"):
        ckpt.on_epoch_end(0, {"step": jnp.asarray(1)}, History([{"loss": 1.0}]), {"loss": 1.0})
    assert available_steps(tmp_path) == []


def test_stale_checkpoints_raise_unless_overwrite(tmp_path):
    drive(ModelCheckpoint(tmp_path, save_best_only=False), [1.0, 1.0, 1.0])
    fresh = {"step": jnp.asarray(0), "w": jnp.zeros(2)}
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \[1, 2, 3\]"):
        ModelCheckpoint(tmp_path).on_train_begin(fresh, History())
    ModelCheckpoint(tmp_path, overwrite=True).on_train_begin(fresh, History())
    assert available_steps(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, match", [({"mode": "best"}, "mode"), ({"max_to_keep": 0}, "max_to_keep")]
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(tmp_path, **kwargs)


# ------------------------------------------------------------- atomicity and damaged files


def test_crash_mid_save_leaves_the_previous_checkpoint_as_latest(tmp_path, monkeypatch):
    drive(ModelCheckpoint(tmp_path, save_best_only=False), [1.0, 1.0])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    state = {"step": jnp.asarray(3, jnp.int32), "w": jnp.full(2, 9.0)}
    with monkeypatch.context() as m:  # the state item is written, the history item fails
        m.setattr(handlers.JsonCheckpointHandler, "async_save", crash)
        with pytest.raises(OSError, match="disk full"):
            ckpt.save(2, state, History([{"loss": 1.0}] * 3))
    assert glob.glob(os.path.join(tmp_path, "3.orbax-checkpoint-tmp*"))  # half-written
    assert available_steps(tmp_path) == [1, 2]
    restored, history = restore(tmp_path)
    assert float(restored["w"][0]) == 1.0 and len(history) == 2
    # the next run cleans the unfinished save up and saves normally
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    ckpt.save(2, state, History([{"loss": 1.0}] * 3))
    assert not glob.glob(os.path.join(tmp_path, "*tmp*")) and available_steps(tmp_path) == [1, 2, 3]


def test_leftover_tmp_dir_is_ignored(tmp_path):
    junk = tmp_path / "7.orbax-checkpoint-tmp"
    junk.mkdir()
    (junk / "state").write_bytes(b"half")
    with pytest.raises(CheckpointError, match="unfinished saves"):
        restore(tmp_path)
    drive(ModelCheckpoint(tmp_path, save_best_only=False), [1.0])
    state, _ = restore(tmp_path)
    assert int(state["step"]) == 1


def corrupt_manifest(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "manifest.ocdbt"), recursive=True):
        with open(path, "wb") as f:
            f.write(b"junk")


def flip_data_bytes(step_dir):
    for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
        data = bytearray(open(path, "rb").read())
        for i in range(len(data) // 2, len(data)):
            data[i] ^= 0xFF
        open(path, "wb").write(bytes(data))


def delete_history(step_dir):
    for path in glob.glob(os.path.join(step_dir, "history", "*")):
        os.remove(path)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax loop
@pytest.mark.parametrize("damage", [corrupt_manifest, flip_data_bytes, delete_history])
def test_damaged_latest_gives_a_clear_error_and_the_previous_one_restores(
    tmp_path, trained, damage
):
    state, history = trained
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    ckpt.save(0, state, history)
    later = state.replace(step=state.step + 1, params=jax.tree.map(lambda p: p + 1, state.params))
    ckpt.save(1, later, history)
    damage(os.path.join(tmp_path, str(int(later.step))))
    target = make_state()
    with pytest.raises(CheckpointError) as info:
        restore(tmp_path, target=target)
    message = str(info.value)
    assert str(tmp_path) in message and f"step={int(state.step)}" in message
    assert available_steps(tmp_path) == [int(state.step), int(later.step)]
    restored, _ = restore(tmp_path, target=target, step=int(state.step))
    chex.assert_trees_all_equal(as_numpy(restored), as_numpy(state))


def test_missing_checkpoint_and_step_errors(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}.*missing"):
        restore(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        restore(tmp_path)
    drive(ModelCheckpoint(tmp_path, save_best_only=False), [1.0, 1.0])
    with pytest.raises(CheckpointError, match=r"No checkpoint 5 .* \[1, 2\]"):
        restore(tmp_path, step=5)


def test_target_mismatch_is_reported(tmp_path):
    drive(ModelCheckpoint(tmp_path, save_best_only=False), [1.0])
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        restore(tmp_path, target={"step": jnp.zeros((), jnp.int32), "v": jnp.zeros(5)})


# --------------------------------------------------------------------------------- resume

RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    sys.path[:0] = [{here!r}, {tests!r}]  # this module, and tests/ for support/
    import numpy as np
    import test_checkpoint as t
    from dlopt.training.checkpoint import ModelCheckpoint, restore

    state, history = restore({directory!r}, target=t.make_state())
    ckpt = ModelCheckpoint({directory!r}, save_best_only=False)
    state, history = t.run(state, 6, [ckpt], initial_epoch=len(history), history=history)
    leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
    np.savez({out!r}, *leaves)
    json.dump(history.to_dict(), open({out!r} + ".json", "w"))
    """
)


def test_resume_in_a_new_process_is_identical(tmp_path):
    straight, straight_history = run(make_state(), 6)

    directory, out = str(tmp_path / "ckpt"), str(tmp_path / "resumed.npz")
    ckpt = ModelCheckpoint(directory, save_best_only=False)
    run(make_state(), 3, [ckpt])
    assert available_steps(directory) == [5, 10, 15]  # 5 steps per epoch
    script = RESUME_SCRIPT.format(here=HERE, tests=str(TESTS), directory=directory, out=out)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]

    resumed = np.load(out)
    leaves = [resumed[f"arr_{i}"] for i in range(len(resumed.files))]
    chex.assert_trees_all_equal(leaves, [np.asarray(x) for x in jax.tree.leaves(straight)])
    with open(out + ".json") as f:
        assert History.from_dict(json.load(f)) == straight_history
    assert available_steps(directory) == [20, 25, 30]


def test_values_that_differ_from_the_saved_fingerprint_are_reported(tmp_path):
    drive(ModelCheckpoint(tmp_path, save_best_only=False), [1.0, 1.0])
    path = os.path.join(tmp_path, "2", "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    meta["fingerprint"]["w"][2] = "0" * 64  # as if the stored bytes of w had changed
    meta["meta_sha256"] = meta_digest(meta)  # the meta itself consistent: the arrays differ
    with open(path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointError, match=r"\['w'\] differ .* step=1"):
        restore(tmp_path)
    state, _ = restore(tmp_path, step=1)
    assert float(state["w"][0]) == 0.0


def test_sharded_state_restores_with_the_target_shardings(tmp_path):
    from dlopt.training import make_mesh, shard_state

    mesh = make_mesh(8)
    state = shard_state(make_state(), mesh, shard_opt_state=True)  # ZeRO-1: Adam state split
    ModelCheckpoint(tmp_path, save_best_only=False).save(0, state, History())
    target = shard_state(make_state(seed=3), mesh, shard_opt_state=True)
    restored, _ = restore(tmp_path, target=target)
    chex.assert_trees_all_equal(as_numpy(restored), as_numpy(state))
    shardings = [x.sharding for x in jax.tree.leaves(restored)]
    assert shardings == [x.sharding for x in jax.tree.leaves(target)]
    assert any(s.spec != jax.sharding.PartitionSpec() for s in shardings)


# ------------------------------------------------- callbacks' state, errors, safe overwrite


def test_restore_with_callbacks_resumes_early_stopping_exactly(tmp_path):
    """EarlyStopping(patience=2), resumed from the checkpoint of the epoch before the straight
    run stops, stops when it does (without its saved state it would wait two more epochs)."""
    from dlopt.training import EarlyStopping

    def callbacks(directory):
        return [EarlyStopping(monitor="loss", patience=2),
                ModelCheckpoint(directory, save_best_only=False, max_to_keep=None)]  # fmt: skip

    straight_cbs = callbacks(tmp_path / "a")
    straight, straight_history = run(make_state(), 12, straight_cbs)
    stopped = straight_cbs[0].stopped_epoch
    assert 3 <= stopped < 11
    directory = tmp_path / "b"
    half, _ = run(make_state(), stopped, callbacks(directory))  # "crashed" before the stop
    cbs = callbacks(directory)
    state, history = restore(directory, target=make_state(), callbacks=cbs)
    assert cbs[0].wait > 0 and cbs[1].saved_steps == available_steps(directory)
    state, history = run(state, 12, cbs, initial_epoch=len(history), history=history)
    assert cbs[0].stopped_epoch == stopped and history == straight_history
    chex.assert_trees_all_equal(as_numpy(state), as_numpy(straight))
    chex.assert_trees_all_equal(
        as_numpy(half), as_numpy(restore(directory, make_state(), step=5 * stopped)[0])
    )


def test_restore_names_the_problem(tmp_path, trained):
    from dlopt.training.checkpoint import (
        CheckpointDamagedError,
        CheckpointMismatchError,
        CheckpointNotFoundError,
    )

    state, history = trained
    with pytest.raises(CheckpointNotFoundError, match="missing"):
        restore(tmp_path / "nope", target=state)
    ModelCheckpoint(tmp_path, save_best_only=False).save(0, state, history)
    with pytest.raises(CheckpointNotFoundError, match="No checkpoint 7"):
        restore(tmp_path, target=state, step=7)
    wrong_shape = to_tree(state).replace(params={**state.params, "Dense_1": {
        "kernel": jnp.zeros((8, 2)), "bias": state.params["Dense_1"]["bias"]}})  # fmt: skip
    with pytest.raises(
        CheckpointMismatchError,
        match=r"at 'params/Dense_1/kernel' .*float32\[8, 1\] and target float32\[8, 2\]",
    ):
        restore(tmp_path, target=wrong_shape)
    wrong_dtype = state.replace(skipped_steps=jnp.zeros((), jnp.float32))
    with pytest.raises(
        CheckpointMismatchError, match=r"at 'skipped_steps' .* int32\[\] and target float32\[\]"
    ):
        restore(tmp_path, target=wrong_dtype)
    extra = state.replace(model_state={**state.model_state, "extra": jnp.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match="target has 'model_state/extra'"):
        restore(tmp_path, target=extra)
    with pytest.raises(
        CheckpointMismatchError, match="the checkpoint has 'model_state/batch_stats"
    ):
        restore(tmp_path, target=state.replace(model_state={}))
    flip_data_bytes(os.path.join(tmp_path, str(int(state.step))))
    with pytest.raises(CheckpointDamagedError):
        restore(tmp_path, target=state)
    assert issubclass(CheckpointDamagedError, CheckpointError)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax loop
def test_overwriting_a_checkpoint_never_leaves_it_missing(tmp_path, monkeypatch):
    old = {"step": jnp.asarray(1, jnp.int32), "w": jnp.zeros(2)}
    new = {"step": jnp.asarray(1, jnp.int32), "w": jnp.ones(2)}
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False, overwrite=True)
    ckpt.save(0, old, History([{"loss": 1.0}]))

    def crash(*args, **kwargs):
        raise OSError("killed")

    with monkeypatch.context() as m:  # the replacement dies half-written: the old one stays
        m.setattr(handlers.JsonCheckpointHandler, "async_save", crash)
        with pytest.raises(OSError, match="killed"):
            ckpt.save(0, new, History([{"loss": 2.0}]))
    assert available_steps(tmp_path) == [1]
    assert float(restore(tmp_path)[0]["w"][0]) == 0.0

    real_rename = os.rename

    def rename(src, dst):  # dies between moving the old one out and the new one in
        if os.fspath(dst) == os.path.join(tmp_path, "1"):
            raise OSError("killed")
        real_rename(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        with pytest.raises(OSError, match="killed"):
            ModelCheckpoint(tmp_path, save_best_only=False, overwrite=True).save(0, new, History())
    assert not os.path.exists(os.path.join(tmp_path, "1"))  # moved out, the new one staged
    assert available_steps(tmp_path) == [1]  # the next look completes the replacement
    state, history = restore(tmp_path)
    assert float(state["w"][0]) == 1.0 and len(history) == 0
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False, overwrite=True)
    ckpt.save(0, old, History([{"loss": 1.0}]))  # an uninterrupted replacement
    assert float(restore(tmp_path)[0]["w"][0]) == 0.0 and os.listdir(tmp_path) == ["1"]


def test_callback_states_are_saved_with_their_arrays_and_checked(tmp_path, trained):
    from dlopt.training import Callback, EarlyStopping
    from dlopt.training.checkpoint import CheckpointMismatchError

    class Counter(Callback):
        def __init__(self):
            self.seen, self.table = 0, np.zeros(3, np.float32)

        def state_dict(self):
            return {"seen": self.seen, "table": self.table}

        def load_state_dict(self, state):
            self.seen, self.table = state["seen"], np.asarray(state["table"])

    state, history = trained
    counter, stop = Counter(), EarlyStopping(monitor="loss", patience=5)
    counter.seen, counter.table = 4, np.arange(3, dtype=np.float32)
    stop.on_epoch_end(0, state, history, {"loss": 1.0})
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    ckpt.set_callbacks([counter, stop, ckpt])
    ckpt.save(1, state, history)
    again, stop_again = Counter(), EarlyStopping(monitor="loss", patience=5)
    restore(tmp_path, target=make_state(), callbacks=[again, stop_again, ModelCheckpoint(tmp_path)])
    assert again.seen == 4 and again.table.tolist() == [0.0, 1.0, 2.0]
    stop_again.on_train_begin(make_state(), history)  # the best weights take the state's form
    chex.assert_trees_all_equal(stop_again.best_weights[0], state.params)
    with pytest.raises(CheckpointMismatchError, match="0:Counter"):
        restore(tmp_path, callbacks=[stop_again, again, ckpt])


# ------------------------------------------------------------------- quiet reads, meta damage


def test_restore_prints_nothing_and_leaves_the_loggers_as_they_were(
    tmp_path, trained, capfd, caplog
):
    import logging

    state, history = trained
    ModelCheckpoint(tmp_path, save_best_only=False).save(0, state, history)
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        restore(tmp_path, target=state)
        available_steps(tmp_path)
    out, err = capfd.readouterr()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "read only" not in out + err and "WARNING" not in out + err, out + err
    # only the reads are quiet: the same absl record outside them passes
    assert not logging.getLogger("absl").filters and not logging.getLogger("asyncio").filters


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax loop
@pytest.mark.parametrize("damage", [corrupt_manifest, flip_data_bytes])
def test_a_damaged_checkpoint_raises_quietly(tmp_path, trained, damage, capfd, caplog):
    import logging

    from dlopt.training.checkpoint import CheckpointDamagedError

    state, history = trained
    ModelCheckpoint(tmp_path, save_best_only=False).save(0, state, history)
    damage(os.path.join(tmp_path, str(int(state.step))))
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG), pytest.raises(CheckpointDamagedError):
        restore(tmp_path, target=state)
    out, err = capfd.readouterr()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "Task" not in out + err and "read only" not in out + err, out + err


@pytest.mark.parametrize("old, new", [("float32", "flnat32"), ("[8]", "[9]"), ("int32", "int31")])
def test_a_changed_byte_in_the_meta_is_damage(tmp_path, trained, old, new):
    from dlopt.training.checkpoint import CheckpointDamagedError

    state, history = trained
    ModelCheckpoint(tmp_path, save_best_only=False).save(0, state, history)
    (path,) = glob.glob(os.path.join(tmp_path, str(int(state.step)), "meta", "metadata"))
    text = open(path).read()
    assert old in text
    open(path, "w").write(text.replace(old, new, 1))
    for target in (state, None):
        with pytest.raises(CheckpointDamagedError, match="damaged: its meta"):
            restore(tmp_path, target=target)


def test_an_unknown_dtype_in_an_old_meta_without_digest_is_damage(tmp_path, trained):
    from dlopt.training.checkpoint import CheckpointDamagedError

    state, history = trained
    ModelCheckpoint(tmp_path, save_best_only=False).save(0, state, history)
    (path,) = glob.glob(os.path.join(tmp_path, str(int(state.step)), "meta", "metadata"))
    meta = json.load(open(path))
    del meta["meta_sha256"]  # as written before the digest existed
    json.dump(meta, open(path, "w"))
    restore(tmp_path, target=state)  # an old checkpoint still restores
    json.dump(json.loads(json.dumps(meta).replace("float32", "flnat32", 1)), open(path, "w"))
    with pytest.raises(CheckpointDamagedError, match="unknown dtype 'flnat32'"):
        restore(tmp_path, target=state)


def test_model_checkpoint_in_an_unwritable_directory_is_one_line(tmp_path):
    from dlopt.training.checkpoint import ModelCheckpoint

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad = [str(a_file), str(a_file / "sub")]
    if os.path.isdir("/proc/self"):
        bad.append("/proc/x")  # not creatable, even for root
    for directory in bad:
        with pytest.raises(ValueError, match="ModelCheckpoint cannot use directory=") as info:
            ModelCheckpoint(directory)
        assert len(str(info.value).splitlines()) == 1
