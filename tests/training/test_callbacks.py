"""EarlyStopping, ReduceLROnPlateau, TerminateOnNaN, LambdaCallback, and the CallbackList
that dispatches them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import dlopt
from dlopt import training
from dlopt.training import (
    Callback,
    CallbackList,
    EarlyStopping,
    LambdaCallback,
    ReduceLROnPlateau,
    TerminateOnNaN,
    TrainState,
    fit,
)


def scalar_state(w=0.0, opt_state=None):
    state = TrainState.create(apply_fn=None, params={"w": jnp.asarray(w)}, tx=dlopt.sgd(0.1), rng=0)
    return state if opt_state is None else state.replace(opt_state=opt_state)


def drive(cb, values, monitor="val_loss"):
    """Feeds one monitored value per epoch; returns (stop epoch or None, final state)."""
    state = cb.on_train_begin(scalar_state(), None)
    for epoch, v in enumerate(values):
        state = cb.on_epoch_end(
            epoch, state.replace(params={"w": jnp.asarray(float(epoch))}), None, {monitor: v}
        )
        if cb.stop_training:
            return epoch, state
    return None, state


# (kwargs, values, stop epoch, best epoch), worked by hand from Keras's rules
EARLY_STOPPING = [
    ({"patience": 2}, [1.0, 0.9, 0.95, 0.96, 0.97], 3, 1),
    ({"patience": 0}, [1.0, 0.9, 0.95], 2, 1),
    ({"patience": 1, "min_delta": 0.2}, [1.0, 0.9, 0.85, 0.6], 1, 0),
    ({"patience": 1, "mode": "max", "monitor": "val_accuracy"}, [0.5, 0.6, 0.6, 0.55], 2, 1),
    ({"patience": 1, "mode": "auto", "monitor": "val_accuracy"}, [0.5, 0.6, 0.6, 0.55], 2, 1),
    ({"patience": 2, "baseline": 0.5}, [1.0, 0.9, 0.8], 1, 1),
    ({"patience": 2, "baseline": 0.95}, [1.0, 0.9, 0.92, 0.93, 0.94], 3, 1),
    ({"patience": 1, "start_from_epoch": 2}, [5.0, 4.0, 3.0, 3.0, 3.0], 3, 2),
    ({"patience": 1}, [1.0, math.nan, 0.5], 1, 0),
    ({"patience": 3}, [1.0, 0.9, 0.8, 0.7], None, 3),
]


@pytest.mark.parametrize("kwargs,values,stop,best", EARLY_STOPPING)
def test_early_stopping_rules(kwargs, values, stop, best):
    cb = EarlyStopping(**kwargs)
    stopped, state = drive(cb, values, kwargs.get("monitor", "val_loss"))
    assert stopped == stop and cb.best_epoch == best
    assert cb.stopped_epoch == (stop or 0)
    # restore_best: the params of the best epoch come back on a stop
    assert float(state.params["w"]) == (best if stop is not None else len(values) - 1)


def test_early_stopping_without_restore_keeps_the_last_weights():
    cb = EarlyStopping(patience=1, restore_best=False)
    stopped, state = drive(cb, [1.0, 2.0, 3.0])
    assert stopped == 1 and float(state.params["w"]) == 1.0 and cb.best_weights is None


def test_early_stopping_in_fit_restores_donated_weights():
    """A donating step deletes old buffers; the best weights survive as a copy."""
    losses = jnp.asarray([3.0, 1.0, 2.0, 4.0, 5.0])

    @jax.jit
    def step(state, batch):
        del batch
        new = state.replace(params={"w": state.params["w"] + 1.0}, step=state.step + 1)
        return new, {"loss": losses[state.step], "num_examples": jnp.float32(1.0)}

    donating = jax.jit(step, donate_argnums=0)
    cb = EarlyStopping(monitor="loss", patience=1)
    state, history = fit(
        scalar_state(),
        [{"x": np.zeros(1)}],
        epochs=5,
        train_step=donating,
        callbacks=[cb],
        progress=False,
    )
    assert history.history["loss"] == [3.0, 1.0, 2.0]
    assert float(state.params["w"]) == 2.0 and int(state.step) == 3


def test_early_stopping_missing_monitor_warns_and_bad_args_raise():
    cb = EarlyStopping(monitor="val_loss")
    cb.on_train_begin(None, None)
    with pytest.warns(UserWarning, match="val_loss"):
        cb.on_epoch_end(0, scalar_state(), None, {"loss": 1.0})
    for kwargs, name in [
        ({"patience": -1}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"mode": "up"}, "mode"),
    ]:
        with pytest.raises(ValueError, match=name):
            EarlyStopping(**kwargs)


def fake_hyperparams(monkeypatch):
    """A stand-in for inject_hyperparams' accessors on a dict opt_state."""
    where = "dlopt.training.callbacks"
    monkeypatch.setattr(f"{where}.get_hyperparam", lambda s, name: s[name])
    monkeypatch.setattr(f"{where}.set_hyperparam", lambda s, n, v: {**s, n: v})
    monkeypatch.setattr(f"{where}.is_scheduled", lambda s, name: False)


PLATEAU = [
    ({"factor": 0.5, "patience": 1}, [1.0, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6, 0.6]),
    (
        {"factor": 0.1, "patience": 0, "cooldown": 2, "min_lr": 0.005},
        [3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0],
    ),
    (
        {"factor": 0.5, "patience": 1, "threshold": 0.1, "threshold_mode": "abs"},
        [1.0, 0.95, 0.85, 0.84, 0.83],
    ),
    ({"factor": 0.5, "patience": 1, "threshold": 0.1}, [1.0, 0.95, 0.85, 0.84, 0.83, 0.5]),
    ({"factor": 0.5, "patience": 1, "mode": "max"}, [0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3]),
]


@pytest.mark.parametrize("kwargs,values", PLATEAU)
def test_reduce_lr_on_plateau_matches_torch(kwargs, values, monkeypatch):
    fake_hyperparams(monkeypatch)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    cb = ReduceLROnPlateau(monitor="val_loss", **kwargs)
    state = cb.on_train_begin(scalar_state(opt_state={"learning_rate": jnp.float32(0.5)}), None)
    got, want = [], []
    for epoch, v in enumerate(values):
        state = cb.on_epoch_end(epoch, state, None, {"val_loss": v})
        sched.step(v)
        got.append(float(state.opt_state["learning_rate"]))
        want.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert len(set(want)) > 1  # each case reduces at least once
    assert state.opt_state["learning_rate"].dtype == jnp.float32


def test_reduce_lr_on_plateau_drives_an_injected_learning_rate_in_fit():
    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.5)
    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())}, tx=tx, rng=0)

    @jax.jit
    def step(state, batch):
        del batch
        lr = dlopt.get_hyperparam(state.opt_state, "learning_rate")
        new = state.apply_gradients({"w": jnp.ones(())})
        one = jnp.float32(1.0)
        return new, {"loss": one, "lr": lr.astype(jnp.float32), "num_examples": one}

    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_lr=0.2)
    state, history = fit(state, [{}], epochs=5, train_step=step, callbacks=[cb], progress=False)
    # flat loss: bad epochs 1, 2 -> halve after epoch 2; bad 1, 2 again -> max(0.125, 0.2)
    assert history.history["lr"] == [0.5, 0.5, 0.5, 0.25, 0.25]
    assert float(dlopt.get_hyperparam(state.opt_state, "learning_rate")) == pytest.approx(0.2)
    assert float(state.params["w"]) == pytest.approx(-2.0)
    assert cb.initial_lr == 0.5 and step._cache_size() == 1


def test_reduce_lr_on_plateau_keeps_a_replicated_layout():
    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.5)
    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())}, tx=tx, rng=0)
    state = training.replicate(state)
    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0)
    state = cb.on_train_begin(state, None)
    for epoch in range(2):
        state = cb.on_epoch_end(epoch, state, None, {"loss": 1.0})
    lr = dlopt.get_hyperparam(state.opt_state, "learning_rate")
    n = jax.local_device_count()
    assert lr.shape == (n,) and lr.dtype == jnp.float32 and len(lr.sharding.device_set) == n
    np.testing.assert_allclose(lr, np.full(n, 0.25))


def test_reduce_lr_on_plateau_validates():
    for kwargs, name in [
        ({"factor": 1.5}, "factor"),
        ({"patience": -1}, "patience"),
        ({"threshold_mode": "x"}, "threshold_mode"),
        ({"min_lr": -1.0}, "min_lr"),
    ]:
        with pytest.raises(ValueError, match=name):
            ReduceLROnPlateau(**kwargs)


def test_terminate_on_nan_stops_after_the_bad_batch():
    losses = jnp.asarray([1.0, 0.5, jnp.nan, 0.2, 0.1, 0.1])

    @jax.jit
    def step(state, batch):
        del batch
        return state.replace(step=state.step + 1), {
            "loss": losses[state.step],
            "num_examples": jnp.float32(1.0),
        }

    cb = TerminateOnNaN()
    assert cb.uses_batch_hook
    data = [{"x": np.zeros(1)}] * 3
    state, history = fit(
        scalar_state(), data, epochs=2, train_step=step, callbacks=[cb], progress=False
    )
    assert cb.stopped_batch == 2 and int(state.step) == 3 and len(history) == 1
    assert math.isnan(history.history["loss"][0])


def test_lambda_callback_hooks_and_state_replacement():
    calls = []
    cb = LambdaCallback(
        on_train_begin=lambda s, h: calls.append("begin"),
        on_epoch_end=lambda e, s, h, logs: s.replace(params={"w": jnp.asarray(42.0)}),
        on_train_end=lambda s, h: calls.append(("end", float(s.params["w"]), len(h))),
    )
    assert not cb.uses_batch_hook
    assert LambdaCallback(on_train_batch_end=lambda b, s, logs: None).uses_batch_hook

    def step(state, batch):
        return state, {"loss": jnp.float32(1.0), "num_examples": jnp.float32(1.0)}

    fit(scalar_state(), [{}], epochs=2, train_step=step, callbacks=[cb], progress=False)
    assert calls == ["begin", ("end", 42.0, 2)]


# --- state_dict / load_state_dict ---------------------------------------------------------


def test_early_stopping_state_round_trip_keeps_counters_and_best_weights():
    cb = EarlyStopping(patience=3)
    state = cb.on_train_begin(scalar_state(), None)
    for epoch, v in enumerate([1.0, 0.5, 0.7]):
        state = cb.on_epoch_end(
            epoch, state.replace(params={"w": jnp.asarray(10.0 + epoch)}), None, {"val_loss": v}
        )
    saved = cb.state_dict()
    assert saved["wait"] == 1 and saved["best"] == 0.5 and saved["best_epoch"] == 1
    fresh = EarlyStopping(patience=3)
    fresh.load_state_dict(jax.tree.map(np.asarray, saved))
    fresh.on_train_begin(scalar_state(), None)  # a loaded state survives on_train_begin
    assert (fresh.wait, fresh.best, fresh.best_epoch) == (1, 0.5, 1)
    assert float(fresh.best_weights[0]["w"]) == 11.0
    # ... and then behaves as the original: two more bad epochs stop it, best weights back
    for cb_ in (cb, fresh):
        s = scalar_state()
        for epoch, v in [(3, 0.8), (4, 0.9)]:
            s = cb_.on_epoch_end(epoch, s, None, {"val_loss": v})
        assert cb_.stopped_epoch == 4 and float(s.params["w"]) == 11.0
    fresh.on_train_begin(scalar_state(), None)  # without a load: a new run starts afresh
    assert fresh.wait == 0 and fresh.best is None and fresh.best_weights is None


def test_reduce_lr_and_terminate_on_nan_state_round_trip(monkeypatch):
    fake_hyperparams(monkeypatch)
    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, cooldown=1, min_lr=0.1)
    state = cb.on_train_begin(scalar_state(opt_state={"learning_rate": jnp.float32(0.8)}), None)
    for epoch, v in enumerate([1.0, 2.0]):
        state = cb.on_epoch_end(epoch, state, None, {"loss": v})
    fresh = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, cooldown=1, min_lr=0.1)
    fresh.load_state_dict(cb.state_dict())
    assert fresh.on_train_begin(state, None) is state
    assert (fresh.initial_lr, fresh.scale) == (cb.initial_lr, 0.5)
    assert fresh.learning_rate == pytest.approx(0.4)
    for epoch, v in [(2, 2.0), (3, 2.0), (4, 2.0)]:
        a = cb.on_epoch_end(epoch, state, None, {"loss": v})
        b = fresh.on_epoch_end(epoch, state, None, {"loss": v})
        assert float(a.opt_state["learning_rate"]) == float(b.opt_state["learning_rate"])
    jax.tree.map(np.testing.assert_array_equal, cb.plateau, fresh.plateau)
    assert fresh.scale == 0.25  # 1.0, 2.0: halved; cooldown; 2.0: halved again; cooldown
    nan = TerminateOnNaN()
    nan.on_train_batch_end(3, state, {"loss": math.nan})
    again = TerminateOnNaN()
    again.load_state_dict(nan.state_dict())
    again.on_train_begin(state, None)
    assert again.stop_training and again.stopped_batch == 3


def test_reduce_lr_on_plateau_scales_a_scheduled_learning_rate():
    schedule = dlopt.exponential_decay(0.5, transition_steps=1, decay_rate=0.9)
    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=schedule)
    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())}, tx=tx, rng=0)

    @jax.jit
    def step(state, batch):
        del batch
        new = state.apply_gradients({"w": jnp.ones(())})
        lr = dlopt.get_hyperparam(new.opt_state, "learning_rate")  # the rate this step used
        one = jnp.float32(1.0)
        return new, {"loss": one, "lr": lr.astype(jnp.float32), "num_examples": one}

    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1)
    state, history = fit(state, [{}] * 2, epochs=5, train_step=step, callbacks=[cb], progress=False)
    # flat loss: bad epochs 1, 2 -> halve after epoch 2; bad 1, 2 again -> quarter after epoch 4
    scales = np.repeat([1.0, 1.0, 1.0, 0.5, 0.5], 2)
    lrs = [float(schedule(t)) * s for t, s in enumerate(scales)]
    got = history.history["lr"]  # epoch means of the per-step rates
    np.testing.assert_allclose(got, np.mean(np.reshape(lrs, (5, 2)), axis=1), rtol=1e-6)
    assert cb.scale == 0.25 and dlopt.wrappers.inject.is_scheduled(state.opt_state, "learning_rate")
    assert float(state.opt_state.schedule_scales["learning_rate_scale"]) == 0.25
    assert step._cache_size() == 1


# --- CallbackList: one dispatcher, one method per hook -----------------------------------------


class Recorder(Callback):
    def __init__(self, name, calls, order=0, batches=False):
        self.name, self.calls, self.epoch_end_order = name, calls, order
        self.batches = batches

    @property
    def uses_batch_hook(self):
        return self.batches

    def on_epoch_begin(self, epoch, state, history):
        self.calls.append(f"{self.name}.begin{epoch}")
        return state + 1

    def on_train_batch_end(self, batch, state, logs):
        self.calls.append(f"{self.name}.batch{batch}")
        return state

    def on_epoch_end(self, epoch, state, history, logs):
        self.calls.append(f"{self.name}.end{epoch}")
        return state * 10


class Bare:  # duck-typed: no hooks but one
    stop_training = False

    def on_epoch_end(self, epoch, state, history, logs):
        return state - 1


def test_callback_list_dispatches_in_order_threads_the_state_and_skips_missing_hooks():
    calls = []
    late, early = Recorder("late", calls, order=1), Recorder("early", calls, batches=True)
    bare = Bare()
    run = CallbackList([late, early, bare])
    assert late.run_callbacks == (late, early, bare) and run.uses_batch_hook
    assert run.on_epoch_begin(0, 0, None) == 2  # both +1, Bare has no such hook
    assert run.on_train_batch_end(3, "s", {}) == "s"  # only the one with uses_batch_hook
    assert run.on_epoch_end(0, 1, None, {}) == (1 * 10 - 1) * 10  # early, bare, then late
    assert calls == ["late.begin0", "early.begin0", "early.batch3", "early.end0", "late.end0"]
    for hook in ("prepare_state", "on_train_begin", "on_train_end"):
        args = ("s",) if hook == "prepare_state" else ("s", None)
        assert getattr(run, hook)(*args) == "s"
    assert run.eval_state(0, "s") == "s" and run.on_epoch_train_end(0, "s", None) == "s"
    assert run.resume("s", None) is None and not run.stop_training
    bare.stop_training = True
    assert run.stop_training


def test_callback_list_resume_refills_history_and_the_last_resume_wins():
    first = training.Resume("a", training.History([{"loss": 1.0}]), 1, False)
    last = training.Resume("b", training.History([{"loss": 1.0}, {"loss": 0.5}]), 2, True)
    seen = []

    class Resuming(Callback):
        def __init__(self, resume):
            self._resume = resume

        def resume(self, state, history):
            seen.append((state, len(history)))
            return self._resume

    history = training.History()
    got = CallbackList([Resuming(first), Resuming(None), Resuming(last)]).resume("s", history)
    assert got is last and history == last.history
    assert seen == [("s", 0), ("a", 1), ("a", 1)]  # each sees the state restored before it
