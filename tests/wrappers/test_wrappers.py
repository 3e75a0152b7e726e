"""Wrappers: inject_hyperparams (+ get/set_hyperparam), apply_if_finite, multi_steps.

Parity with the plain optimizers and with optax, hyperparameters changed without a recompile,
vmapped learning-rate sweeps, NaN steps skipped without poisoning the state, accumulation equal
to one big-batch step, and jit/pmap/checkpoint safety.
"""

from __future__ import annotations

import functools

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_sequence, quadratic
from hypothesis import given
from hypothesis import strategies as st

import dlopt

PARAMS = {"x": jnp.array([0.5, 0.0, -1.0], jnp.float32)}


def schedule(count):
    return 0.1 * 0.5 ** (count // 3).astype(jnp.float32)


def scan_minimize(tx, state, params, steps):
    """``steps`` updates of ``tx`` on the quadratic bowl; returns (params, state)."""

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(quadratic)(p), s, p)
        return (dlopt.apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, state), None, length=steps)[0]


def member(tree, i):
    """Member ``i`` of a batched (vmapped or pmapped) tree."""
    return jax.tree.map(lambda x: x[i], tree)


def replay(tx, grads, params=None):
    """Feeds the gradient trees ``grads`` to ``tx`` one by one; returns the updates and state."""
    params = grads[0] if params is None else params
    state, update = tx.init(params), jax.jit(tx.update)
    outputs = []
    for g in grads:
        u, state = update(g, state, params)
        outputs.append(u)
    return outputs, state


# --- inject_hyperparams -----------------------------------------------------------------------

INJECTED = {
    "sgd": (dlopt.sgd, {"learning_rate": 0.1}),
    "sgd_nesterov": (dlopt.sgd, {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    "sgd_schedule": (dlopt.sgd, {"learning_rate": schedule, "momentum": 0.5}),
    "adam": (dlopt.adam, {"learning_rate": 0.05, "b2": 0.99}),
    "adam_schedule": (dlopt.adam, {"learning_rate": schedule}),
}


@pytest.mark.parametrize("name", INJECTED)
def test_inject_hyperparams_equals_the_plain_optimizer(name):
    factory, kwargs = INJECTED[name]
    plain, injected = factory(**kwargs), dlopt.inject_hyperparams(factory)(**kwargs)
    run = jax.jit(scan_minimize, static_argnums=(0, 3))
    expected, _ = run(plain, plain.init(PARAMS), PARAMS, 8)
    actual, state = run(injected, injected.init(PARAMS), PARAMS, 8)
    # adam: 1 - b2 is formed from a float32 b2 once injected (1 - float32(0.99) is off by 2e-7)
    chex.assert_trees_all_close(actual, expected, rtol=1e-5, atol=1e-7)
    assert int(state.count) == 8
    assert jnp.abs(actual["x"] - PARAMS["x"]).max() > 1e-3  # it did move


def test_inject_hyperparams_equals_optax_state_and_updates():
    grads = gradient_sequence(1, 5)
    ours, our_state = replay(dlopt.inject_hyperparams(dlopt.adam)(schedule, b1=0.8), grads)
    with jax.numpy_dtype_promotion("standard"):
        ref, ref_state = replay(optax.inject_hyperparams(optax.adam)(schedule, b1=0.8), grads)
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(our_state.hyperparams, ref_state.hyperparams, rtol=1e-6)
    assert int(our_state.count) == int(ref_state.count) == 5


def test_hyperparams_change_between_steps_without_recompiling():
    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.1, momentum=0.0)
    grads = {"x": jnp.array([1.0, -2.0, 4.0], jnp.float32)}
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    state = tx.init(PARAMS)
    writes = [
        lambda s: dlopt.set_hyperparam(s, "learning_rate", 0.5),  # a Python float
        lambda s: dlopt.set_hyperparam(s, "learning_rate", np.float64(0.25)),
        lambda s: dlopt.set_hyperparam(s, "momentum", 0.9),
    ]
    # momentum 0 -> 0.9 turns the trace g into g + 0.9 g on the third step
    for write, factor in zip(writes, [0.5, 0.25, 0.25 * 1.9], strict=True):
        state = write(state)
        u, state = update(grads, state, PARAMS)
        chex.assert_trees_all_close(u, {"x": -factor * grads["x"]}, rtol=1e-6)
    state.hyperparams["learning_rate"] = jnp.asarray(0.0, jnp.float32)  # the optax idiom
    u, state = update(grads, state, PARAMS)
    chex.assert_trees_all_equal(u, {"x": jnp.zeros(3, jnp.float32)})


def test_schedules_are_evaluated_on_the_count_and_recorded():
    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=schedule)
    state = tx.init(PARAMS)
    grads = {"x": jnp.ones(3, jnp.float32)}
    update = jax.jit(tx.update)
    for t in range(7):
        state = dlopt.set_hyperparam(state, "learning_rate", 123.0)  # no effect on a schedule
        u, state = update(grads, state)
        chex.assert_trees_all_close(u["x"], -schedule(jnp.asarray(t)) * jnp.ones(3))
        chex.assert_trees_all_close(state.hyperparams["learning_rate"], schedule(jnp.asarray(t)))


@pytest.mark.parametrize("factory", [dlopt.sgd, dlopt.adam], ids=["sgd", "adam"])
def test_vmap_over_learning_rates_equals_separate_runs(factory):
    lrs = jnp.array([0.01, 0.05, 0.2], jnp.float32)
    tx = dlopt.inject_hyperparams(factory)(learning_rate=0.1)

    @jax.jit
    def sweep(lrs):
        def one(lr):
            state = dlopt.set_hyperparam(tx.init(PARAMS), "learning_rate", lr)
            return scan_minimize(tx, state, PARAMS, 10)[0]

        return jax.vmap(one)(lrs)

    @jax.jit
    def separate(lr):
        plain = factory(lr)
        return scan_minimize(plain, plain.init(PARAMS), PARAMS, 10)[0]

    batched = sweep(lrs)
    for i, lr in enumerate(lrs):
        chex.assert_trees_all_close(member(batched, i), separate(lr), rtol=2e-5)
    assert not np.allclose(batched["x"][0], batched["x"][2])


def test_get_and_set_find_every_injected_state_in_a_tree():
    inner = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.1)
    outer = dlopt.inject_hyperparams(dlopt.chain)  # chain takes *transforms: not injectable
    with pytest.raises(ValueError, match="keywords only"):
        outer(inner)
    tx = dlopt.named_chain(
        ("clip", dlopt.clip(1.0)),
        ("a", inner),
        ("b", dlopt.apply_if_finite(dlopt.inject_hyperparams(dlopt.adam)(0.3), 1)),
    )
    state = {"opt": tx.init(PARAMS), "step": jnp.zeros([], jnp.int32)}
    assert float(dlopt.get_hyperparam(state, "learning_rate")) == pytest.approx(0.1)
    assert float(dlopt.get_hyperparam(state, "b1")) == pytest.approx(0.9)
    new = dlopt.set_hyperparam(state, "learning_rate", 0.02)
    assert float(new["opt"]["a"].hyperparams["learning_rate"]) == pytest.approx(0.02)
    assert float(new["opt"]["b"].inner_state.hyperparams["learning_rate"]) == pytest.approx(0.02)
    assert float(state["opt"]["a"].hyperparams["learning_rate"]) == pytest.approx(0.1)  # a copy
    chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
    plain = dlopt.sgd(0.1).init(PARAMS)
    for call in (
        lambda: dlopt.get_hyperparam(state, "momentum"),
        lambda: dlopt.set_hyperparam(state, "momentum", 0.9),
        lambda: dlopt.get_hyperparam(plain, "momentum"),
    ):
        with pytest.raises(ValueError, match="'momentum'"):
            call()


def test_set_hyperparam_on_optax_state_and_replicated_state():
    with jax.numpy_dtype_promotion("standard"):
        optax_state = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1).init(PARAMS)
    assert float(dlopt.set_hyperparam(optax_state, "learning_rate", 0.3).hyperparams[
        "learning_rate"]) == pytest.approx(0.3)  # fmt: skip
    state = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=0.1).init(PARAMS)
    replicated = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    lr = dlopt.set_hyperparam(replicated, "learning_rate", 0.5).hyperparams["learning_rate"]
    chex.assert_trees_all_equal(lr, jnp.full((2,), 0.5, jnp.float32))


def test_bf16_params_keep_float32_hyperparams():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    tx = dlopt.inject_hyperparams(dlopt.adam)(learning_rate=1e-2, b2=0.999)
    state = tx.init(params)
    assert state.hyperparams["b2"].dtype == jnp.float32  # bf16 would round 0.999 to 1.0
    assert float(state.hyperparams["b2"]) == pytest.approx(0.999)
    u, state = jax.jit(tx.update)({"w": jnp.full(4, 0.5, jnp.bfloat16)}, state, params)
    assert u["w"].dtype == jnp.bfloat16
    chex.assert_trees_all_close(u["w"].astype(jnp.float32), jnp.full(4, -1e-2), rtol=1e-2)
    for dtype in (jnp.bfloat16, np.dtype("float16")):
        tx = dlopt.inject_hyperparams(dlopt.sgd, hyperparam_dtype=dtype)(0.5)
        assert tx.init(params).hyperparams["learning_rate"].dtype == dtype


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=-1.0), "learning_rate=-1.0"),
        (lambda: dlopt.inject_hyperparams(dlopt.adam)(1e-3, b1=1.5), "b1=1.5"),
        (lambda: dlopt.inject_hyperparams(dlopt.sgd, static_args="lr"), "static_args"),
        (lambda: dlopt.apply_if_finite(dlopt.sgd(0.1), -1), "max_consecutive_errors=-1"),
        (lambda: dlopt.multi_steps(dlopt.sgd(0.1), 0), "every_k=0"),
    ],
)
def test_bad_arguments_name_themselves(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    ("build", "match"),
    [  # not an int: a TypeError, as every dlopt.core.validation check raises
        (lambda: dlopt.apply_if_finite(dlopt.sgd(0.1), 1.5), "max_consecutive_errors=1.5"),
        (lambda: dlopt.multi_steps(dlopt.sgd(0.1), True), "every_k=True"),
    ],
)
def test_arguments_of_the_wrong_type_name_themselves(build, match):
    with pytest.raises(TypeError, match=match):
        build()


def test_set_schedule_scale_multiplies_a_schedule_and_only_a_schedule():
    tx = dlopt.chain(dlopt.clip(1.0), dlopt.inject_hyperparams(dlopt.sgd)(schedule, momentum=0.5))
    state = tx.init(PARAMS)
    assert dlopt.wrappers.inject.is_scheduled(state, "learning_rate")
    assert not dlopt.wrappers.inject.is_scheduled(state, "momentum")
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    grads = {"x": jnp.ones(3, jnp.float32)}
    for t, scale in enumerate([1.0, 1.0, 0.5, 0.5, 0.25]):
        state = dlopt.set_schedule_scale(state, "learning_rate", scale)
        _, state = update(grads, state)
        used = state[1].hyperparams["learning_rate"]
        chex.assert_trees_all_close(used, scale * schedule(jnp.asarray(t)))
    replicated = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    scaled = dlopt.set_schedule_scale(replicated, "learning_rate", 0.1)
    chex.assert_trees_all_equal(scaled[1].schedule_scales["learning_rate_scale"], jnp.full(2, 0.1))
    with pytest.raises(ValueError, match="no injected schedule named 'momentum'"):
        dlopt.set_schedule_scale(state, "momentum", 0.5)
    with pytest.raises(ValueError, match="'b1'"):
        dlopt.wrappers.inject.is_scheduled(state, "b1")


# --- apply_if_finite --------------------------------------------------------------------------


def poisoned(grads, value):
    return {**grads, "scalar": jnp.asarray(value, jnp.float32)}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_apply_if_finite_skips_counts_and_keeps_training(bad):
    grads = gradient_sequence(2, 4)
    sequence = [grads[0], poisoned(grads[1], bad), grads[2], poisoned(grads[3], bad), grads[3]]
    tx = dlopt.apply_if_finite(dlopt.adam(0.1), max_consecutive_errors=3)
    update = jax.jit(tx.update)
    state = tx.init(grads[0])
    before = state
    finite_updates = []
    for t, g in enumerate(sequence):
        u, state = update(g, state, grads[0])
        if t in (1, 3):  # skipped: zero updates, inner state untouched
            chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
            chex.assert_trees_all_equal(state.inner_state, before.inner_state)
            assert not bool(state.last_finite) and int(state.notfinite_count) == 1
        else:
            finite_updates.append(u)
            chex.assert_tree_all_finite((u, state))
        before = state
    assert int(state.total_notfinite) == 2 and int(state.notfinite_count) == 0
    expected, _ = replay(dlopt.adam(0.1), [grads[0], grads[2], grads[3]], grads[0])
    chex.assert_trees_all_close(finite_updates, expected, rtol=1e-5, atol=1e-7)


def test_apply_if_finite_equals_optax_including_giving_up():
    grads = gradient_sequence(3, 3)
    nan = poisoned(grads[0], np.nan)
    sequence = [grads[0], nan, grads[1], nan, nan, nan, grads[2]]
    ours, our_state = replay(dlopt.apply_if_finite(dlopt.sgd(0.1, momentum=0.9), 2), sequence)
    with jax.numpy_dtype_promotion("standard"):
        ref, ref_state = replay(optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), 2), sequence)
    chex.assert_trees_all_close(ours, ref)  # NaN == NaN here: the 3rd NaN in a row is applied
    assert np.isnan(ours[5]["scalar"]) and np.isnan(ours[6]["scalar"])
    for field in ("notfinite_count", "last_finite", "total_notfinite"):
        assert int(getattr(our_state, field)) == int(getattr(ref_state, field)), field


@functools.cache
def jitted_guard(max_consecutive_errors):
    tx = dlopt.apply_if_finite(dlopt.sgd(1.0), max_consecutive_errors)
    return tx, jax.jit(tx.update)


@given(
    bad=st.lists(st.booleans(), min_size=6, max_size=6),
    max_errors=st.integers(min_value=0, max_value=2),
)
def test_apply_if_finite_counters_follow_the_rule(bad, max_errors):
    tx, update = jitted_guard(max_errors)
    state = tx.init(PARAMS)
    consecutive = total = 0
    for t, is_bad in enumerate(bad):
        g = {"x": jnp.array([1.0, np.nan if is_bad else 2.0, float(t)], jnp.float32)}
        u, state = update(g, state, PARAMS)
        consecutive, total = (consecutive + 1, total + 1) if is_bad else (0, total)
        applied = not is_bad or consecutive > max_errors
        chex.assert_trees_all_equal(u["x"], -g["x"] if applied else jnp.zeros(3))
        assert (int(state.notfinite_count), int(state.total_notfinite)) == (consecutive, total)
        assert bool(state.last_finite) == (not is_bad)


def test_apply_if_finite_and_the_train_steps_guard_skip_and_count_alike():
    """One guard: apply_if_finite around sgd equals the train step's own NaN/Inf guard."""
    from dlopt.training import TrainState, make_train_step

    def loss_fn(params, batch, *, model_state, rng, train):
        del rng, train
        return jnp.mean(jnp.square(batch["x"] @ params["w"] - 1.0)), {}

    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((4, 3)).astype(np.float32)} for _ in range(6)]
    for t in (1, 2, 4):
        batches[t]["x"][0, 0] = np.nan
    params = {"w": jnp.asarray([0.5, -0.5, 1.0], jnp.float32)}

    def train(tx, skip_nonfinite):
        state = TrainState.create(apply_fn=None, params=params, tx=tx, rng=0)
        step = make_train_step(loss_fn, skip_nonfinite=skip_nonfinite, donate=False)
        for batch in batches:
            state, _ = step(state, batch)
        return state

    guarded_step = train(dlopt.sgd(0.1, momentum=0.9), True)
    wrapped = train(dlopt.apply_if_finite(dlopt.sgd(0.1, momentum=0.9), 10), False)
    chex.assert_trees_all_equal(guarded_step.params, wrapped.params)
    chex.assert_trees_all_equal(guarded_step.opt_state, wrapped.opt_state.inner_state)
    assert int(guarded_step.skipped_steps) == int(wrapped.opt_state.total_notfinite) == 3


# --- multi_steps ------------------------------------------------------------------------------


def regression_loss(params, batch):
    x, y = batch
    return jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))


def regression_data(rounds, k, micro):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((rounds, k * micro, 3)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((rounds, k * micro)), jnp.float32)
    return x, y


def train_from(tx, carry, batches):
    """Scans ``tx`` over regression ``batches`` from ``carry = (params, state)``."""

    def body(carry, batch):
        p, s = carry
        u, s = tx.update(jax.grad(regression_loss)(p, batch), s, p)
        return (dlopt.apply_updates(p, u), s), None

    return jax.lax.scan(body, carry, batches)[0]


def train(tx, params, batches):
    return train_from(tx, (params, tx.init(params)), batches)


REGRESSION_PARAMS = {"w": jnp.array([0.1, -0.2, 0.3], jnp.float32), "b": jnp.zeros([], jnp.float32)}


@pytest.mark.parametrize(
    "make",
    [lambda: dlopt.sgd(0.1, momentum=0.9), lambda: dlopt.adam(0.05)],
    ids=["sgd_momentum", "adam"],
)
def test_multi_steps_equals_one_step_on_the_k_times_larger_batch(make):
    rounds, k, micro = 3, 3, 4
    x, y = regression_data(rounds, k, micro)
    big, _ = jax.jit(train, static_argnums=0)(make(), REGRESSION_PARAMS, (x, y))
    small = (x.reshape(rounds * k, micro, 3), y.reshape(rounds * k, micro))
    accumulated, state = jax.jit(train, static_argnums=0)(
        dlopt.multi_steps(make(), k), REGRESSION_PARAMS, small
    )
    chex.assert_trees_all_close(accumulated, big, rtol=1e-5, atol=1e-6)
    assert int(state.gradient_step) == rounds and int(state.mini_step) == 0
    assert jnp.abs(big["w"] - REGRESSION_PARAMS["w"]).max() > 1e-2


@pytest.mark.parametrize("use_grad_mean", [True, False])
def test_multi_steps_equals_optax_multisteps(use_grad_mean):
    grads = gradient_sequence(4, 7)
    tx = dlopt.multi_steps(dlopt.adam(0.1), 3, use_grad_mean=use_grad_mean)
    ours, state = replay(tx, grads)
    with jax.numpy_dtype_promotion("standard"):
        ref, ref_state = replay(optax.MultiSteps(optax.adam(0.1), 3, use_grad_mean), grads)
    chex.assert_trees_all_close(ours, ref, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(state.acc_grads, ref_state.acc_grads, rtol=1e-5, atol=1e-7)
    for t, u in enumerate(ours):  # zero updates between the real steps (t = 2, 5)
        zero = all(bool(jnp.all(leaf == 0)) for leaf in jax.tree.leaves(u))
        assert zero == (t % 3 != 2), t
    assert (int(state.mini_step), int(state.gradient_step)) == (1, 2)


def test_multi_steps_forwards_extra_args_on_the_real_step():
    tx = dlopt.multi_steps(dlopt.chain(dlopt.sgd(1.0), dlopt.reduce_on_plateau(patience=0)), 2)
    grads = {"x": jnp.ones(3, jnp.float32)}
    state, update = tx.init(PARAMS), jax.jit(tx.update)
    for value in [9.0, 1.0, 9.0, 2.0, 9.0, 3.0]:
        u, state = update(grads, state, PARAMS, value=jnp.float32(value))
    # only the k-th values (1, 2, 3) were observed: two bad observations, two reductions
    chex.assert_trees_all_close(u["x"], -0.01 * jnp.ones(3), rtol=1e-6)


# --- every wrapper: pmap, checkpoints (the conformance kit runs them in test_conformance.py) ---

WRAPPED = {
    "inject_hyperparams": lambda: dlopt.inject_hyperparams(dlopt.adam)(0.05, b1=0.8),
    "apply_if_finite": lambda: dlopt.apply_if_finite(dlopt.sgd(0.1, momentum=0.9), 2),
    "multi_steps": lambda: dlopt.multi_steps(dlopt.adam(0.05), 2),
}


@pytest.mark.parametrize("name", WRAPPED)
def test_pmap_with_two_devices_equals_one_device(name):
    tx = WRAPPED[name]()
    x, y = regression_data(4, 1, 8)  # 4 steps of a batch of 8, split over 2 devices
    one_device, _ = jax.jit(train, static_argnums=0)(tx, REGRESSION_PARAMS, (x, y))

    def step(carry, batch):
        p, s = carry
        g = jax.lax.pmean(jax.grad(regression_loss)(p, batch), "devices")
        u, s = tx.update(g, s, p)
        return (dlopt.apply_updates(p, u), s), None

    def run(params, batches):
        return jax.lax.scan(step, (params, tx.init(params)), batches)[0]

    shards = jax.tree.map(lambda a: a.reshape(4, 2, 4, *a.shape[2:]).swapaxes(0, 1), (x, y))
    replicated = jax.tree.map(lambda a: jnp.stack([a, a]), REGRESSION_PARAMS)
    params, state = jax.pmap(run, axis_name="devices", devices=jax.devices()[:2])(
        replicated, shards
    )
    for i in range(2):
        chex.assert_trees_all_close(member(params, i), one_device, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", WRAPPED)
def test_state_survives_a_checkpoint_round_trip(name):
    chex.clear_trace_counter()
    tx = WRAPPED[name]()
    x, y = regression_data(6, 1, 4)
    first, rest = jax.tree.map(lambda a: a[:3], (x, y)), jax.tree.map(lambda a: a[3:], (x, y))
    step = jax.jit(chex.assert_max_traces(lambda c, b: train_from(tx, c, b), n=1))
    carry = step((REGRESSION_PARAMS, tx.init(REGRESSION_PARAMS)), first)
    leaves, treedef = jax.tree.flatten(carry)
    restored = jax.tree.unflatten(treedef, [np.asarray(leaf) for leaf in leaves])
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(restored))
    template = (REGRESSION_PARAMS, tx.init(REGRESSION_PARAMS))
    restored = flax.serialization.from_state_dict(
        template, flax.serialization.msgpack_restore(blob)
    )
    chex.assert_trees_all_equal_structs(restored, carry)
    chex.assert_trees_all_close(step(restored, rest), step(carry, rest))
