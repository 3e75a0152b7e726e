"""fit and History: epoch means, validation, data forms, resume, stopping, progress, pmap."""

from __future__ import annotations

import functools
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.training import MLP, batches, make_data, make_loss_fn, make_state

import dlopt
from dlopt import training
from dlopt.training import History, LambdaCallback, TrainState, fit

TRAIN = batches(make_data(40, seed=0), 16)  # 16, 16, 8 rows: an uneven last batch
VAL = batches(make_data(24, seed=9), 16)


@functools.cache
def steps():
    loss_fn = make_loss_fn(MLP())
    return training.make_train_step(loss_fn), training.make_eval_step(loss_fn)


def run_fit(epochs, **kwargs):
    train_step, eval_step = steps()
    return fit(
        make_state(),
        TRAIN,
        epochs=epochs,
        val_data=VAL,
        train_step=train_step,
        eval_step=eval_step,
        progress=False,
        **kwargs,
    )


def linear_loss_fn(params, batch, *, model_state, rng, train):
    del rng, train
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean(jnp.square(pred - batch["y"])), {"model_state": model_state}


def linear_state():
    params = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    return TrainState.create(apply_fn=None, params=params, tx=dlopt.sgd(0.05), rng=0)


def test_epoch_logs_are_example_weighted_means_of_the_steps():
    state, history = run_fit(2)
    assert list(history.history) == [
        "loss",
        "accuracy",
        "skipped_steps",
        "val_loss",
        "val_accuracy",
    ]
    assert history.history["skipped_steps"] == [0.0, 0.0]
    assert len(history) == 2 and int(state.step) == 6
    # replay by hand: the epoch loss weights the 8-row batch by 8, not by 1/3
    train_step, eval_step = steps()
    s = make_state()
    for epoch in range(2):
        losses, sizes = [], []
        for b in TRAIN:
            s, m = train_step(s, b)
            losses.append(float(m["loss"]))
            sizes.append(len(b["y"]))
        want = np.average(losses, weights=sizes)
        np.testing.assert_allclose(history.history["loss"][epoch], want, rtol=1e-6)
        assert not np.isclose(want, np.mean(losses), rtol=1e-6)
    val = training.evaluate(s, VAL, eval_step)
    np.testing.assert_allclose(history.history["val_loss"][-1], val["loss"], rtol=1e-6)
    np.testing.assert_allclose(history.history["val_accuracy"][-1], val["accuracy"], rtol=1e-6)
    chex.assert_trees_all_close(state.params, s.params, rtol=1e-6)


def test_resume_with_initial_epoch_and_history_is_identical():
    straight_state, straight = run_fit(4)
    assert straight.history["loss"][-1] < 0.85 * straight.history["loss"][0]  # it trains
    half_state, half = run_fit(2)
    again = History.from_dict(json.loads(json.dumps(half.to_dict())))
    train_step, eval_step = steps()
    resumed_state, resumed = fit(
        half_state,
        TRAIN,
        epochs=4,
        val_data=VAL,
        train_step=train_step,
        eval_step=eval_step,
        progress=False,
        initial_epoch=2,
        history=again,
    )
    assert resumed == straight
    chex.assert_trees_all_equal(resumed_state.params, straight_state.params)


def test_callable_data_gets_the_epoch_and_one_shot_iterators_fail_clearly():
    seen = []

    def data(epoch):
        seen.append(epoch)
        return TRAIN[:1]

    state, history = fit(linear_state(), data, epochs=3, loss_fn=linear_loss_fn, progress=False)
    assert seen == [0, 1, 2] and len(history) == 3 and int(state.step) == 3
    with pytest.raises(ValueError, match="one-shot iterator"):
        fit(linear_state(), iter(TRAIN), epochs=2, loss_fn=linear_loss_fn, progress=False)


def test_stop_training_and_hook_order():
    calls = []

    class Recorder(training.Callback):
        def on_train_begin(self, state, history):
            calls.append("begin")
            return state

        def on_epoch_begin(self, epoch, state, history):
            calls.append(f"epoch{epoch}")
            return state

        def on_epoch_end(self, epoch, state, history, logs):
            calls.append(f"end{epoch}:{len(history)}")
            self.stop_training = epoch == 1
            return state

        def on_train_end(self, state, history):
            calls.append("done")
            return state

    recorder = Recorder()
    assert not recorder.uses_batch_hook
    _, history = fit(
        linear_state(),
        TRAIN,
        epochs=5,
        loss_fn=linear_loss_fn,
        callbacks=[recorder],
        progress=False,
    )
    assert calls == ["begin", "epoch0", "end0:1", "epoch1", "end1:2", "done"]
    assert len(history) == 2


def test_callbacks_can_replace_the_state():
    zero = LambdaCallback(
        on_epoch_end=lambda e, s, h, logs: s.replace(params=jax.tree.map(jnp.zeros_like, s.params))
    )
    state, _ = fit(
        linear_state(), TRAIN, epochs=1, loss_fn=linear_loss_fn, callbacks=[zero], progress=False
    )
    assert float(jnp.abs(state.params["w"]).sum()) == 0.0 and int(state.step) == 3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"epochs": 1}, "loss_fn= or train_step="),
        ({"epochs": -1, "loss_fn": linear_loss_fn}, "epochs"),
        ({"epochs": 1, "val_data": VAL, "train_step": lambda s, b: (s, {})}, "val_data"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(linear_state(), TRAIN, progress=False, **kwargs)


def test_progress_bar_only_on_a_tty(capsys, monkeypatch):
    fit(linear_state(), TRAIN, epochs=2, val_data=VAL, loss_fn=linear_loss_fn, progress=True)
    err = capsys.readouterr().err  # not a terminal: one plain line per epoch, no bar
    lines = err.splitlines()
    assert len(lines) == 2 and "\r" not in err, err
    assert lines[1].startswith("epoch 2/2  loss ") and "val_loss " in lines[1]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    fit(linear_state(), TRAIN, epochs=1, loss_fn=linear_loss_fn, progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "ex_s=" in err
    fit(linear_state(), TRAIN, epochs=1, loss_fn=linear_loss_fn, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_drives_a_pmap_step():
    n = jax.local_device_count()
    data = [{k: v for k, v in b.items()} for b in batches(make_data(64, seed=2), 32)]
    state, history = fit(
        linear_state(), data, epochs=2, val_data=data, loss_fn=linear_loss_fn, progress=False
    )
    pstate, phistory = fit(
        training.replicate(linear_state()),
        lambda epoch: [training.split_batch(b, n) for b in data],
        epochs=2,
        val_data=lambda epoch: [training.split_batch(b, n) for b in data],
        train_step=training.make_pmap_train_step(linear_loss_fn),
        eval_step=training.make_pmap_eval_step(linear_loss_fn),
        progress=False,
    )
    for k in history.history:
        np.testing.assert_allclose(phistory.history[k], history.history[k], rtol=1e-5)
    chex.assert_trees_all_close(training.unreplicate(pstate.params), state.params, rtol=1e-5)


def test_history_views_json_and_equality():
    h = History()
    h.append({"loss": np.float32(0.5), "accuracy": jnp.asarray(0.75)})
    h.append({"loss": 0.25, "val_loss": math.nan})
    assert h.history == {"loss": [0.5, 0.25], "accuracy": [0.75, h.history["accuracy"][1]]} | {
        "val_loss": h.history["val_loss"]
    }
    assert math.isnan(h.history["accuracy"][1]) and math.isnan(h.history["val_loss"][0])
    assert all(type(v) is float for e in h.epochs for v in e.values())
    back = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back == h and back.epochs is not h.epochs
    other = History.from_dict(h.to_dict())
    other.epochs[0]["loss"] = 0.4
    assert other != h and History() != h and h != {"epochs": h.epochs}


@pytest.mark.parametrize("data", [[], lambda epoch: []])
def test_fit_on_empty_data_is_refused(data):
    state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=0)
    with pytest.raises(ValueError, match="train_data gave no batches in epoch 1"):
        fit(state, data, epochs=2, train_step=lambda s, b: (s, {}), progress=False)
