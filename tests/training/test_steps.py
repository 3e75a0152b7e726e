"""make_train_step / make_eval_step: donation, RNG, BatchNorm, value=, accumulation, NaN guard,
and flax.nnx through nnx.split/merge and nnx.Optimizer."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx, struct
from support.training import MLP, make_data, make_loss_fn, make_state

import dlopt
from dlopt.training import TrainState, make_eval_step, make_train_step
from dlopt.training.steps import StepOptions


def linear_loss_fn(params, batch, *, model_state, rng, train):
    del rng, train
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean(jnp.square(pred - batch["y"])), {"model_state": model_state}


def linear_state(tx=None):
    params = {"w": jnp.linspace(-1.0, 1.0, 4), "b": jnp.zeros(())}
    return TrainState.create(
        apply_fn=None, params=params, tx=tx if tx is not None else dlopt.sgd(0.05), rng=0
    )


@functools.cache
def mlp_steps():
    loss_fn = make_loss_fn(MLP())
    return make_train_step(loss_fn), make_eval_step(loss_fn)


def test_state_buffers_are_donated():
    state = linear_state(dlopt.sgd(0.1, momentum=0.9))
    old_leaves = jax.tree.leaves(state)
    new, _ = make_train_step(linear_loss_fn)(state, make_data(8))
    assert all(x.is_deleted() for x in old_leaves)
    assert not any(x.is_deleted() for x in jax.tree.leaves(new))
    kept = linear_state()
    make_train_step(linear_loss_fn, donate=False)(kept, make_data(8))
    assert not any(x.is_deleted() for x in jax.tree.leaves(kept))


def test_train_step_is_sgd_on_the_loss():
    state = linear_state(dlopt.sgd(0.05))
    batch = make_data(8)
    grads = jax.grad(lambda p: linear_loss_fn(p, batch, model_state={}, rng=None, train=True)[0])(
        state.params
    )
    want = jax.tree.map(lambda p, g: p - 0.05 * g, state.params, grads)
    new, metrics = make_train_step(linear_loss_fn, donate=False)(state, batch)
    chex.assert_trees_all_close(new.params, want, rtol=1e-6)
    assert int(new.step) == 1 and float(metrics["num_examples"]) == 8.0


def test_batchnorm_updates_in_train_not_in_eval_and_no_retrace():
    train_step, eval_step = mlp_steps()
    state = make_state()
    init_stats = jax.device_get(state.model_state)
    batches = [make_data(16, seed=s) for s in range(3)]
    metrics = eval_step(state, batches[0])
    assert set(metrics) == {"loss", "accuracy", "num_examples"}
    for b in batches:
        state, metrics = train_step(state, b)
    mean = state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
    assert float(jnp.abs(mean - init_stats["batch_stats"]["BatchNorm_0"]["mean"]).max()) > 1e-3
    before = jax.device_get(state.model_state)
    eval_step(state, batches[0])
    chex.assert_trees_all_equal(jax.device_get(state.model_state), before)
    assert train_step._cache_size() == 1 and eval_step._cache_size() == 1


def test_rng_is_new_every_step_and_derived_from_state():
    seen = []

    def loss_fn(params, batch, *, model_state, rng, train):
        del train
        draw = jax.random.uniform(rng)
        return jnp.sum(params["w"]) * 0.0, {"model_state": model_state, "metrics": {"r": draw}}

    state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=7)
    step = make_train_step(loss_fn)
    for _ in range(3):
        state, m = step(state, {"x": np.zeros((2, 1), np.float32)})
        seen.append(float(m["r"]))
    assert len(set(seen)) == 3
    want = float(jax.random.uniform(jax.random.fold_in(jax.random.key(7), 2)))
    assert seen[2] == want


def test_value_reaches_plateau_transform():
    tx = dlopt.chain(dlopt.sgd(0.1), dlopt.reduce_on_plateau(patience=0, factor=0.5))
    batch = make_data(8)
    state, metrics = make_train_step(linear_loss_fn, loss_as_value=True, donate=False)(
        linear_state(tx), batch
    )
    np.testing.assert_allclose(state.opt_state[1].plateau.best_value, metrics["loss"])
    step = make_train_step(linear_loss_fn)
    state, _ = step(linear_state(tx), batch, value=3.0)
    state, _ = step(state, batch, value=4.0)  # worse: patience 0 -> scale halves
    assert float(state.opt_state[1].plateau.best_value) == 3.0
    assert float(state.opt_state[1].plateau.scale) == 0.5
    with pytest.raises(TypeError, match="value"):
        make_train_step(linear_loss_fn)(linear_state(tx), batch)


@pytest.mark.parametrize("k", [2, 4])
def test_gradient_accumulation_equals_one_big_batch(k):
    tx = dlopt.sgd(0.05, momentum=0.9)
    batches = [make_data(16, seed=s) for s in range(3)]
    big, acc = linear_state(tx), linear_state(tx)
    big_step = make_train_step(linear_loss_fn)
    acc_step = make_train_step(linear_loss_fn, accumulation_steps=k)
    for b in batches:
        big, mb = big_step(big, b)
        acc, ma = acc_step(acc, b)
        np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    chex.assert_trees_all_close(acc.params, big.params, rtol=1e-5)
    assert int(acc.step) == 3


def test_accumulation_threads_batchnorm_and_rejects_bad_sizes():
    step = make_train_step(make_loss_fn(MLP()), accumulation_steps=2, donate=False)
    state, _ = step(make_state(), make_data(16))
    assert float(jnp.abs(state.model_state["batch_stats"]["BatchNorm_0"]["mean"]).max()) > 1e-3
    with pytest.raises(ValueError, match="accumulation_steps=2 must divide"):
        step(make_state(), make_data(15))
    with pytest.raises(ValueError, match="accumulation_steps"):
        make_train_step(linear_loss_fn, accumulation_steps=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_step_is_skipped_and_counted(bad):
    tx = dlopt.sgd(0.05, momentum=0.9)
    good = make_data(8)
    poisoned = {**good, "x": good["x"].copy()}
    poisoned["x"][3, 1] = bad
    step = make_train_step(linear_loss_fn, donate=False)
    state, _ = step(linear_state(tx), good)
    skipped, _ = step(state, poisoned)
    chex.assert_trees_all_equal(
        (skipped.params, skipped.opt_state), (state.params, state.opt_state)
    )
    assert int(skipped.skipped_steps) == 1 and int(skipped.step) == 2
    resumed, _ = step(skipped, good)
    assert int(resumed.skipped_steps) == 1
    chex.assert_tree_all_finite(resumed.params)
    unguarded, _ = make_train_step(linear_loss_fn, skip_nonfinite=False, donate=False)(
        state, poisoned
    )
    assert not np.isfinite(np.asarray(unguarded.params["w"])).all()
    assert int(unguarded.skipped_steps) == 0


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.norm(self.dense(x))))[:, 0]


def nnx_loss(model, batch):
    return jnp.mean(jnp.square(model(batch["x"]) - batch["y"]))


def test_nnx_split_merge_matches_nnx_optimizer():
    batches = [make_data(16, seed=s) for s in range(4)]

    # dlopt TrainState over nnx.split: params trained, the rest (BatchNorm stats) as model_state
    graphdef, params, rest = nnx.split(NnxMLP(nnx.Rngs(0)), nnx.Param, ...)

    def loss_fn(params, batch, *, model_state, rng, train):
        del rng, train
        model = nnx.merge(graphdef, params, model_state, copy=True)
        loss = nnx_loss(model, batch)
        return loss, {"model_state": nnx.state(model, nnx.Not(nnx.Param))}

    state = TrainState.create(
        apply_fn=None, params=params, tx=dlopt.sgd(0.1, momentum=0.9), rng=0, model_state=rest
    )
    step = make_train_step(loss_fn)
    for b in batches:
        state, _ = step(state, b)

    # the same training with nnx.Optimizer driving dlopt.sgd
    model = NnxMLP(nnx.Rngs(0))
    opt = nnx.Optimizer(model, dlopt.sgd(0.1, momentum=0.9), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, opt, batch):
        grads = nnx.grad(nnx_loss)(model, batch)
        opt.update(model, grads)

    for b in batches:
        nnx_step(model, opt, b)
    _, want_params, want_rest = nnx.split(model, nnx.Param, ...)
    chex.assert_trees_all_close(
        jax.tree.leaves(state.params), jax.tree.leaves(want_params), rtol=1e-5, atol=1e-6
    )
    chex.assert_trees_all_close(
        jax.tree.leaves(state.model_state), jax.tree.leaves(want_rest), rtol=1e-5, atol=1e-6
    )
    assert float(jnp.abs(jax.tree.leaves(want_params)[0]).sum()) > 0


# --- one update path, one guard, one accumulator, one options object ---------------------------


@struct.dataclass
class CountingState(TrainState):
    """A TrainState whose apply_gradients also counts: the step must run this one."""

    applied: jax.Array

    def apply_gradients(self, grads, **extra_args):
        new = super().apply_gradients(grads, **extra_args)
        return new.replace(applied=self.applied + 1)


def test_step_updates_through_the_states_apply_gradients():
    base = linear_state(dlopt.sgd(0.05, momentum=0.9))
    state = CountingState(
        **{f.name: getattr(base, f.name) for f in dataclasses.fields(base)},
        applied=jnp.zeros((), jnp.int32),
    )
    good = make_data(8)
    poisoned = {**good, "x": good["x"].copy()}
    poisoned["x"][0, 0] = np.nan
    step = make_train_step(linear_loss_fn, donate=False)
    state1, _ = step(state, good)
    state2, _ = step(state1, poisoned)  # skipped: apply_gradients does not run
    assert type(state1) is CountingState
    assert (int(state1.applied), int(state2.applied)) == (1, 1)
    assert (int(state2.step), int(state2.skipped_steps)) == (2, 1)
    grads = jax.grad(lambda p: linear_loss_fn(p, good, model_state={}, rng=None, train=True)[0])
    want = base.apply_gradients(grads(base.params))
    chex.assert_trees_all_equal((state1.params, state1.opt_state), (want.params, want.opt_state))


def test_nan_guard_is_one_cond_and_keeps_the_donated_buffers_aliased():
    state = linear_state(dlopt.adam(0.1))
    batch = make_data(8)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    for guard in (True, False):
        compiled = make_train_step(linear_loss_fn, skip_nonfinite=guard).lower(state, batch)
        compiled = compiled.compile()
        assert compiled.memory_analysis().alias_size_in_bytes == state_bytes
        assert ("conditional(" in compiled.as_text()) == guard


def test_accumulation_sums_bf16_gradients_in_float32():
    # loss = mean(x @ w): the gradient is the mean row, exact in bf16 for each micro-batch of
    # equal rows (256, 1, 1, 1 in feature 0); their sum 4 * (256 + 1 + 1 + 1) is not (bf16
    # keeps 8 significant bits: 1024 + 4 rounds back to 1024).
    def loss_fn(params, batch, *, model_state, rng, train):
        del rng, train
        return jnp.mean(batch["x"] @ params["w"]), {"model_state": model_state}

    k, rows = 4, 4
    micro_rows = np.array([[256.0, 3.0], [1.0, 5.0], [1.0, 7.0], [1.0, 9.0]])
    x = jnp.asarray(np.repeat(micro_rows, rows, axis=0), jnp.bfloat16)
    params = {"w": jnp.zeros(2, jnp.bfloat16)}
    state = TrainState.create(apply_fn=None, params=params, tx=dlopt.sgd(1.0), rng=0)
    new, _ = make_train_step(loss_fn, accumulation_steps=k, donate=False)(state, {"x": x})
    want = np.asarray(jnp.asarray(micro_rows.mean(axis=0), jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(-new.params["w"], np.float32), want)  # sgd(1): -g
    bf16_sum = functools.reduce(
        lambda a, g: a + g * jnp.bfloat16(rows),
        jnp.asarray(micro_rows, jnp.bfloat16),
        jnp.zeros(2, jnp.bfloat16),
    )
    assert float(bf16_sum[0] / jnp.bfloat16(k * rows)) != want[0]  # a bf16 accumulator
    # multi_steps keeps its running mean in the same float32 accumulator
    assert dlopt.multi_steps(dlopt.sgd(1.0), k).init(params).acc_grads["w"].dtype == jnp.float32


def test_step_options_one_object_keywords_win_and_bad_flags_name_themselves():
    options = StepOptions(accumulation_steps=2, donate=False)
    state = linear_state()
    step = make_train_step(linear_loss_fn, options=options, skip_nonfinite=False)
    new, _ = step(state, make_data(8))
    assert not any(x.is_deleted() for x in jax.tree.leaves(state)) and int(new.step) == 1
    assert StepOptions.merge(options, {"donate": True}) == StepOptions(accumulation_steps=2)
    with pytest.raises(TypeError, match=r"acumulation_steps.*accumulation_steps"):
        make_train_step(linear_loss_fn, acumulation_steps=2)
    for kwargs, error in [
        ({"accumulation_steps": 0}, ValueError),
        ({"accumulation_steps": True}, TypeError),  # wrong types: dlopt.core.validation's
        ({"skip_nonfinite": 1}, TypeError),
        ({"donate": None}, TypeError),
    ]:
        with pytest.raises(error, match=f"{next(iter(kwargs))}="):
            StepOptions(**kwargs)


def test_one_guard_one_count_and_apply_if_finite_under_the_step():
    good = make_data(8)
    poisoned = {**good, "x": good["x"].copy()}
    poisoned["x"][0, 0] = np.nan
    tx = dlopt.apply_if_finite(dlopt.sgd(0.05), max_consecutive_errors=1)
    step = make_train_step(linear_loss_fn, donate=False)
    state, _ = step(linear_state(tx), good)
    state, _ = step(state, poisoned)
    # the step's guard skips the step and counts it; the wrapper only ever sees finite grads
    assert int(state.skipped_steps) == 1 and int(state.opt_state.total_notfinite) == 0
    # with the step's guard off the wrapper is the guard, and its count is the one to read
    fresh = linear_state(tx)
    unguarded, _ = make_train_step(linear_loss_fn, skip_nonfinite=False, donate=False)(
        fresh, poisoned
    )
    assert int(unguarded.skipped_steps) == 0 and int(unguarded.opt_state.total_notfinite) == 1
    chex.assert_trees_all_equal(unguarded.params, fresh.params)  # zero updates
