"""dynamic_loss_scale: Keras's growth/backoff counting, float16 overflow skips the step with the
state untouched, loss-scaled steps equal plain ones, the pmap and mesh steps take it too, the
policy is given once (to the step or to fit)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.exports import exported_transform_factories

import dlopt
from dlopt import training
from dlopt.training import StepOptions, TrainState, make_train_step


def loss_fn(params, batch, *, model_state, rng, train):
    del model_state, rng, train
    return jnp.mean(jnp.square(batch["x"] @ params["w"] + params["b"] - batch["y"]))


def make_state(dtype, policy=None):
    params = {"w": jnp.linspace(-0.5, 0.5, 3, dtype=dtype), "b": jnp.zeros((), dtype)}
    tx = dlopt.adam(1e-2)
    return TrainState.create(apply_fn=None, params=params, tx=tx, rng=0, loss_scale=policy)


def batch(dtype, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((8, 3))).astype(dtype)
    return {"x": x, "y": rng.standard_normal(8).astype(dtype)}


def host(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ------------------------------------------------------------------------- the policy


def test_adjust_grows_after_growth_interval_finite_steps_and_halves_on_overflow():
    policy = dlopt.dynamic_loss_scale(initial_scale=8.0, growth_interval=3)
    state, scales, good = policy.init(), [], []
    for finite in [True, True, True, False, True, True, True, True]:
        state = policy.adjust(state, jnp.array(finite))
        scales.append(float(state.scale))
        good.append(int(state.good_steps))
    assert scales == [8, 8, 16, 8, 8, 8, 16, 16]  # Keras: grow at counter == N - 1
    assert good == [1, 2, 0, 0, 1, 2, 0, 1]


def test_adjust_keeps_the_scale_within_min_scale_and_float32():
    low = dlopt.dynamic_loss_scale(initial_scale=2.0, min_scale=1.0)
    state = low.init()
    for _ in range(3):
        state = low.adjust(state, jnp.array(False))
    assert float(state.scale) == 1.0
    high = dlopt.dynamic_loss_scale(initial_scale=3e38, growth_interval=1)
    assert float(high.adjust(high.init(), jnp.array(True)).scale) == pytest.approx(3e38)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_scale_and_unscale_keep_dtypes(dtype):
    policy = dlopt.dynamic_loss_scale(initial_scale=4.0)
    state = policy.init()
    assert policy.scale_loss(jnp.ones((), dtype), state).dtype == jnp.float32
    grads = {"a": jnp.full((2,), 8.0, dtype), "none": None}
    out = policy.unscale(grads, state)
    assert out["none"] is None and out["a"].dtype == dtype
    np.testing.assert_array_equal(np.asarray(out["a"], np.float32), [2.0, 2.0])


# ------------------------------------------------------------------- in the train step


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_a_loss_scaled_step_equals_a_plain_step(dtype):
    # a power-of-two scale is exact in both directions (no overflow, no new underflow)
    policy = dlopt.dynamic_loss_scale(initial_scale=2.0**4, growth_interval=100)
    plain, scaled = make_state(dtype), make_state(dtype, policy)
    plain_step, scaled_step = make_train_step(loss_fn), make_train_step(loss_fn, loss_scale=policy)
    for seed in range(3):
        plain, plain_metrics = plain_step(plain, batch(dtype, seed=seed))
        scaled, scaled_metrics = scaled_step(scaled, batch(dtype, seed=seed))
        assert scaled_metrics["loss"] == plain_metrics["loss"]  # the unscaled loss
    assert scaled.params["w"].dtype == dtype
    chex.assert_trees_all_equal(host((scaled.params, scaled.opt_state)),
                                host((plain.params, plain.opt_state)))  # fmt: skip
    assert int(scaled.loss_scale.good_steps) == 3 and int(scaled.skipped_steps) == 0


@pytest.mark.parametrize("skip_nonfinite", [True, False])
def test_float16_overflow_skips_the_step_and_halves_the_scale(skip_nonfinite):
    policy = dlopt.dynamic_loss_scale()  # 2**15: the scaled backward pass overflows float16
    step = make_train_step(loss_fn, loss_scale=policy, skip_nonfinite=skip_nonfinite)
    state, _ = step(make_state(jnp.float16, policy), batch(jnp.float16))
    assert float(state.loss_scale.scale) == 2.0**15 and int(state.loss_scale.good_steps) == 1
    before = host((state.params, state.opt_state, state.model_state))

    state, metrics = step(state, batch(jnp.float16, scale=100.0, seed=1))
    assert np.isfinite(float(metrics["loss"]))  # the loss itself is fine in float16 ...
    assert float(state.loss_scale.scale) == 2.0**14  # ... its scaled gradients are not
    assert int(state.loss_scale.good_steps) == 0
    assert int(state.skipped_steps) == 1 and int(state.step) == 2
    chex.assert_trees_all_equal(host((state.params, state.opt_state, state.model_state)), before)

    state, _ = step(state, batch(jnp.float16, seed=2))  # training goes on at the new scale
    assert int(state.skipped_steps) == 1 and float(state.loss_scale.scale) == 2.0**14
    assert not np.array_equal(np.asarray(state.params["w"]), before[-1])


def test_the_scale_grows_after_growth_interval_good_steps_in_the_step():
    policy = dlopt.dynamic_loss_scale(initial_scale=2.0**4, growth_interval=3)
    step = make_train_step(loss_fn, loss_scale=policy)
    state, scales = make_state(jnp.float16, policy), []
    for seed in range(7):
        state, _ = step(state, batch(jnp.float16, seed=seed))
        scales.append(float(state.loss_scale.scale))
    assert scales == [16, 16, 32, 32, 32, 64, 64]


def test_pmap_and_mesh_steps_take_the_loss_scale():
    policy = dlopt.dynamic_loss_scale(initial_scale=2.0**120, growth_interval=2)
    batches = [batch(np.float32, seed=0), batch(np.float32, 1e19, 1), batch(np.float32, seed=2)]
    jit_state = make_state(jnp.float32, policy)
    jit_step = make_train_step(loss_fn, loss_scale=policy)
    pmap_step = training.make_pmap_train_step(loss_fn, loss_scale=policy)
    # the pmap and mesh states hold no loss-scale state: the steps start it from the policy
    pmap_state = training.replicate(make_state(jnp.float32), jax.devices()[:2])
    mesh = training.make_mesh(2)
    mesh_step = training.make_mesh_train_step(loss_fn, mesh=mesh, loss_scale=policy)
    mesh_state = training.shard_state(make_state(jnp.float32), mesh)
    for b in batches:  # the second one overflows float32 at this scale
        jit_state, _ = jit_step(jit_state, b)
        pmap_state, _ = pmap_step(pmap_state, training.split_batch(b, 2))
        mesh_state, _ = mesh_step(mesh_state, training.shard_batch(b, mesh))
    assert int(jit_state.skipped_steps) == 1 and float(jit_state.loss_scale.scale) == 2.0**119
    for other in (training.unreplicate(pmap_state), mesh_state):
        chex.assert_trees_all_equal(other.loss_scale, jit_state.loss_scale)
        assert int(other.skipped_steps) == 1
        chex.assert_trees_all_close(other.params, jit_state.params, rtol=1e-6)


def test_the_policy_is_given_once_the_step_or_fit_starts_its_state():
    policy = dlopt.dynamic_loss_scale(initial_scale=2.0**120, growth_interval=2)
    batches = [batch(np.float32, seed=0), batch(np.float32, 1e19, 1), batch(np.float32, seed=2)]
    step = make_train_step(loss_fn, loss_scale=policy, donate=False)
    twice, once = make_state(jnp.float32, policy), make_state(jnp.float32)
    assert once.loss_scale is None
    for b in batches:
        twice, _ = step(twice, b)
        once, _ = step(once, b)
    assert int(twice.skipped_steps) == 1 and float(twice.loss_scale.scale) == 2.0**119
    chex.assert_trees_all_equal(host(once), host(twice))
    options = StepOptions(loss_scale=policy, donate=False)
    fitted, _ = training.fit(
        make_state(jnp.float32), batches, epochs=1, loss_fn=loss_fn, options=options,
        progress=False,
    )  # fmt: skip
    chex.assert_trees_all_equal(host(fitted), host(twice))
    with pytest.raises(ValueError, match="options="):
        training.fit(once, batches, epochs=1, train_step=step, options=options, progress=False)
    with pytest.raises(ValueError, match="loss_scale must be"):
        StepOptions(loss_scale=2.0**15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_scale": 0.0}, "initial_scale"),
        ({"initial_scale": float("nan")}, "initial_scale"),
        ({"growth_interval": 0}, "growth_interval"),
        ({"growth_interval": 2.5}, "growth_interval"),
        ({"factor": 0.5}, "factor"),
        ({"factor": "2"}, "factor"),
        ({"min_scale": 0.0}, "min_scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        dlopt.dynamic_loss_scale(**kwargs)


def test_a_policy_not_a_transform():
    assert "dynamic_loss_scale" not in exported_transform_factories()  # no conformance entry
    assert isinstance(dlopt.dynamic_loss_scale(), dlopt.DynamicLossScale)
