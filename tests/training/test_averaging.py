"""ModelEMA, SWA and update_bn: a numpy EMA, torch's AveragedModel and update_bn as references;
validation on the average; bitwise resume through BackupAndRestore."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from support.checkpoint import EVAL_STEP, TRAIN_STEP, loss_fn, make_data, make_state

import dlopt
from dlopt import training
from dlopt.training import (
    SWA,
    LambdaCallback,
    ModelEMA,
    TrainState,
    evaluate,
    fit,
    make_train_step,
    swap_averages,
    update_bn,
)
from dlopt.training.backup import BackupAndRestore

F32 = np.float32


def injected_state(lr=0.05):
    """test_checkpoint's Net (BatchNorm 0.9, dropout) under Adam with an injected rate."""
    state = make_state()
    tx = dlopt.inject_hyperparams(dlopt.adam)(learning_rate=lr)
    return state.replace(tx=tx, opt_state=tx.init(state.params))


PLAIN_STEP = make_train_step(loss_fn)


def host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run(state, callbacks, epochs=6, train_step=PLAIN_STEP):
    train, val = make_data()
    return fit(state, train, epochs=epochs, val_data=val, train_step=train_step,
               eval_step=EVAL_STEP, callbacks=callbacks, progress=False)  # fmt: skip


# ------------------------------------------------------------------ ModelEMA vs a numpy EMA


def numpy_ema(init, sequence, decay, every, warmup):
    """Keras's EMA (a copy at the first update) or TF's warmup, over ``(step, params)``."""
    average, count = [a.copy() for a in init], 0
    for step, params in sequence:
        if step % every:
            continue
        c = F32(count)
        if warmup:
            ramp = (F32(1) + c) / (F32(10) + c)
            below = ramp < F32(decay)
            keep = ramp if below else F32(decay)
            new = F32(9) / (F32(10) + c) if below else F32(1 - decay)
        else:
            keep, new = (F32(0), F32(1)) if count == 0 else (F32(decay), F32(1 - decay))
        average = [keep * a + new * p for a, p in zip(average, params, strict=True)]
        count += 1
    return average, count


@pytest.mark.parametrize(
    "decay, every, warmup", [(0.9, 1, False), (0.8, 3, False), (0.99, 1, True)]
)
def test_model_ema_equals_a_numpy_ema_of_the_params(decay, every, warmup):
    ema = ModelEMA(decay, every=every, warmup=warmup)
    state = ema.prepare_state(make_state())
    init = host(state.params)
    train, _ = make_data()
    batches = train(0) + train(1)
    batches[4] = {**batches[4], "x": np.full_like(batches[4]["x"], np.nan)}  # a skipped step
    sequence = []
    for batch in batches:
        state, _ = TRAIN_STEP(state, batch)
        sequence.append((int(state.step), host(state.params), int(state.skipped_steps)))
    assert sequence[4][2] == 1  # the NaN batch was skipped ...
    applied = [(s, p) for i, (s, p, _) in enumerate(sequence) if i != 4]  # ... and not averaged
    expected, count = numpy_ema(init, applied, decay, every, warmup)
    assert int(state.averages.count) == count > 2
    got = host(swap_averages(state).params)  # the average as the tree
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-7)
    assert not np.allclose(got[0], host(state.params)[0])  # an average, not the last params


# ------------------------------------------------------- SWA vs torch's AveragedModel, swa_lr


class Holder(torch.nn.Module):
    def __init__(self, leaves):
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(x)) for x in leaves])


def test_swa_equals_torch_averaged_model_and_switches_the_learning_rate():
    seen = []
    record = LambdaCallback(on_epoch_end=lambda e, s, h, logs: seen.append(
        (host(s.params), float(dlopt.get_hyperparam(s.opt_state, "learning_rate")))))  # fmt: skip
    swa = SWA(start_epoch=2, swa_lr=0.01)
    state, _ = run(injected_state(), [swa, record])
    assert [lr for _, lr in seen] == pytest.approx([0.05, 0.05] + [0.01] * 4)

    holder = Holder(seen[0][0])
    swa_model = torch.optim.swa_utils.AveragedModel(holder)
    for params, _ in seen[2:]:  # the ends of epochs 2..5
        with torch.no_grad():
            for p, x in zip(holder.ps, params, strict=True):
                p.copy_(torch.tensor(x))
        swa_model.update_parameters(holder)
    assert int(state.averages.count) == int(swa_model.n_averaged) == 4
    expected = [p.detach().numpy() for p in swa_model.module.ps]
    for g, e in zip(host(swap_averages(state).params), expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def test_swa_lr_on_a_schedule_raises():
    state = make_state()
    tx = dlopt.inject_hyperparams(dlopt.sgd)(
        learning_rate=lambda t: 0.1 / (1.0 + t.astype(jnp.float32))
    )
    state = state.replace(tx=tx, opt_state=tx.init(state.params))
    with pytest.raises(ValueError, match="join_schedules"):
        run(state, [SWA(1, swa_lr=0.01)], epochs=1)


# ---------------------------------------------------------------- update_bn vs torch's


class TwoBN(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(4)(x)))
        return nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(2)(x))


def two_bn_loss(params, batch, *, model_state, rng, train):
    del rng
    variables = {"params": params, **model_state}
    if not train:
        return jnp.mean(TwoBN().apply(variables, batch["x"], train=False))
    out, updates = TwoBN().apply(variables, batch["x"], train=True, mutable=["batch_stats"])
    return jnp.mean(out), {"model_state": dict(updates)}


def test_update_bn_equals_torch_update_bn():
    rng = np.random.default_rng(0)
    batches = [{"x": (3 * rng.standard_normal((16, 3)) + 1).astype(F32)} for _ in range(5)]
    variables = TwoBN().init(jax.random.key(0), batches[0]["x"], train=False)
    stats = {"batch_stats": variables["batch_stats"]}
    state = TrainState.create(
        apply_fn=None, params=variables["params"], tx=dlopt.sgd(0.1), rng=0, model_state=stats
    )
    new = update_bn(state, batches, two_bn_loss, momentum=0.9)

    p = jax.tree.map(np.asarray, variables["params"])
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                              torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))  # fmt: skip
    with torch.no_grad():
        for i, (dense, bn) in enumerate([(0, 1), (3, 4)]):
            net[dense].weight.copy_(torch.tensor(p[f"Dense_{i}"]["kernel"].T))
            net[dense].bias.copy_(torch.tensor(p[f"Dense_{i}"]["bias"]))
            net[bn].weight.copy_(torch.tensor(p[f"BatchNorm_{i}"]["scale"]))
            net[bn].bias.copy_(torch.tensor(p[f"BatchNorm_{i}"]["bias"]))
    net[1].running_mean.fill_(5.0)  # stale statistics: update_bn resets them
    torch.optim.swa_utils.update_bn([torch.from_numpy(b["x"]) for b in batches], net)

    stats = new.model_state["batch_stats"]
    b = 16  # flax keeps the biased batch variance, torch the unbiased: a factor b / (b - 1)
    for i, bn in enumerate([1, 4]):
        np.testing.assert_allclose(stats[f"BatchNorm_{i}"]["mean"],
                                   net[bn].running_mean.numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(np.asarray(stats[f"BatchNorm_{i}"]["var"]) * b / (b - 1),
                                   net[bn].running_var.numpy(), rtol=1e-5)  # fmt: skip
    chex.assert_trees_all_equal(new.params, state.params)  # only the statistics change
    with pytest.raises(ValueError, match=r"BatchNorm_0.*momentum ~0.9"):
        update_bn(state, batches, two_bn_loss)  # the default momentum 0.99 is not the model's
    with pytest.raises(ValueError, match="no batches"):
        update_bn(state, [], two_bn_loss, momentum=0.9)


# --------------------------------------------------------------- validation on the average


def test_eval_on_average_validates_the_averaged_params():
    _, val = make_data()
    for eval_on_average in (False, True):
        state, history = run(make_state(), [ModelEMA(0.8, eval_on_average=eval_on_average)],
                             epochs=2, train_step=TRAIN_STEP)  # fmt: skip
        on = state.replace(params=state.averages.params) if eval_on_average else state
        assert history.history["val_loss"][-1] == evaluate(on, val, EVAL_STEP)["loss"]
        assert state.averages.rule is None  # no in-step updates once fit is over


def test_swa_eval_recomputes_batchnorm_statistics_with_bn_data():
    train, val = make_data()
    swa = SWA(1, eval_on_average=True, bn_data=train, loss_fn=loss_fn, bn_momentum=0.9)
    state, history = run(injected_state(), [swa], epochs=3)
    final = update_bn(swap_averages(state), train(2), loss_fn, momentum=0.9)
    assert history.history["val_loss"][-1] == evaluate(final, val, EVAL_STEP)["loss"]
    chex.assert_trees_all_equal(host(swap_averages(swap_averages(state))), host(state))


# --------------------------------------------------------------------- parallel steps


def linear_loss(params, batch, *, model_state, rng, train):
    del model_state, rng, train
    return jnp.mean(jnp.square(batch["x"] @ params["w"] + params["b"] - batch["y"]))


def test_model_ema_in_pmap_and_mesh_steps_matches_the_jit_step():
    ema = ModelEMA(0.9)
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((8, 3)).astype(F32),
                "y": rng.standard_normal(8).astype(F32)} for _ in range(3)]  # fmt: skip
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}

    def fresh():
        state = TrainState.create(apply_fn=None, params=params, tx=dlopt.sgd(0.1), rng=0)
        return ema.prepare_state(state)

    jit_state = fresh()
    jit_step = make_train_step(linear_loss)
    pmap_step = training.make_pmap_train_step(linear_loss)
    pmap_state = training.replicate(fresh(), jax.devices()[:2])
    mesh = training.make_mesh(2)
    mesh_step = training.make_mesh_train_step(linear_loss, mesh=mesh)
    mesh_state = training.shard_state(fresh(), mesh)
    for batch in batches:
        jit_state, _ = jit_step(jit_state, batch)
        pmap_state, _ = pmap_step(pmap_state, training.split_batch(batch, 2))
        mesh_state, _ = mesh_step(mesh_state, training.shard_batch(batch, mesh))
    assert not np.allclose(swap_averages(jit_state).params["w"], jit_state.params["w"])
    for other in (training.unreplicate(pmap_state), mesh_state):
        assert int(other.averages.count) == 3
        chex.assert_trees_all_close(
            swap_averages(other).params, swap_averages(jit_state).params, rtol=1e-6, atol=1e-7
        )


# ------------------------------------------------------------ resume through a backup


class Crash(Exception):
    pass


def crash_at(epoch):
    def on_epoch_end(e, s, h, logs):
        if e == epoch:
            raise Crash

    return LambdaCallback(on_epoch_end=on_epoch_end)


POLICY = dlopt.dynamic_loss_scale(initial_scale=2.0**4, growth_interval=3)
SCALED_STEP = make_train_step(loss_fn, loss_as_value=True, loss_scale=POLICY)


def ema_run():
    return (make_state().replace(loss_scale=POLICY.init()), SCALED_STEP,
            ModelEMA(0.9, every=2, warmup=True, eval_on_average=True))  # fmt: skip


def swa_run():
    train, _ = make_data()
    swa = SWA(1, swa_lr=0.01, eval_on_average=True, bn_data=lambda e: train(e)[:2],
              loss_fn=loss_fn, bn_momentum=0.9)  # fmt: skip
    return injected_state(), PLAIN_STEP, swa


@pytest.mark.parametrize("make_run", [ema_run, swa_run], ids=["ema+loss_scale", "swa"])
def test_crash_and_rerun_resumes_the_average_bitwise(tmp_path, make_run):
    state, step, averaging = make_run()
    straight, history = run(state, [LambdaCallback(), averaging], epochs=4, train_step=step)
    assert int(straight.averages.count) > 1
    if straight.loss_scale is not None:
        assert float(straight.loss_scale.scale) > POLICY.init().scale  # it grew

    directory = str(tmp_path / "backup")
    state, step, averaging = make_run()
    with pytest.raises(Crash):
        run(state, [crash_at(2), averaging, BackupAndRestore(directory)], 4, step)
    state, step, averaging = make_run()  # a fresh process would build all of it anew
    backup = BackupAndRestore(directory)
    resumed, resumed_history = run(state, [LambdaCallback(), averaging, backup], 4, step)
    assert backup.resumed and backup.resumed_epoch == 2
    assert resumed_history == history
    chex.assert_trees_all_equal(host(resumed), host(straight))  # averages, loss scale included


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ModelEMA(decay=1.5), "decay"),
        (lambda: ModelEMA(every=0), "every"),
        (lambda: ModelEMA(warmup=1), "warmup"),
        (lambda: ModelEMA(eval_on_average="yes"), "eval_on_average"),
        (lambda: SWA(-1), "start_epoch"),
        (lambda: SWA(0, swa_lr=-0.1), "swa_lr"),
        (lambda: SWA(0, swa_lr="0.1"), "swa_lr"),
        (lambda: SWA(0, bn_data=[{}]), "loss_fn"),
        (lambda: SWA(0, bn_momentum=1.0), "bn_momentum"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_two_averaging_callbacks_raise():
    with pytest.raises(ValueError, match="one averaging callback"):
        run(make_state(), [ModelEMA(), SWA(0)], epochs=1)
