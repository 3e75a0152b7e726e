"""skip_step_on_spikes: a spike is skipped and leaves the state as it was, normal steps are
the inner optimizer's, warm-up, NaN, level shifts, bitwise resume, and the train step's count
(``TrainState.skipped_steps`` and the History's ``"skipped_steps"``)."""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlopt
from dlopt.core.rolling import window_init, window_push, window_stats
from dlopt.training import TrainState, fit, make_train_step

PARAMS = {"w": jnp.array([[0.5, -0.2], [0.1, 0.3]], jnp.float32), "b": jnp.zeros(2)}
INNER = dlopt.adamw(1e-2, weight_decay=1e-2)


def noisy_run(steps, seed=0):
    """Losses around 1 and gradients of norm around 1: a steady history."""
    rng = np.random.default_rng(seed)
    losses = (1.0 + 0.05 * rng.standard_normal(steps)).astype(np.float32)
    grads = [
        jax.tree.map(
            lambda p: jnp.asarray(0.5 + 0.05 * rng.standard_normal(p.shape), jnp.float32), PARAMS
        )
        for _ in range(steps)
    ]
    return list(losses), grads


def replay(tx, losses, grads, state=None):
    update = jax.jit(tx.update)
    state = tx.init(PARAMS) if state is None else state
    outs = []
    for loss, g in zip(losses, grads, strict=True):
        u, state = update(g, state, PARAMS, loss=None if loss is None else jnp.float32(loss))
        outs.append(u)
    return outs, state


def test_rolling_window_matches_numpy():
    w = window_init(4, 2)
    rows = np.arange(12, dtype=np.float32).reshape(6, 2) ** 1.5
    keep = [True, True, False, True, True, True]
    kept = []
    for row, k in zip(rows, keep, strict=True):
        w = window_push(w, jnp.asarray(row), jnp.asarray(k))
        kept += [row] if k else []
    last = np.stack(kept[-4:])
    mean, std = window_stats(w)
    np.testing.assert_allclose(mean, last.mean(0), rtol=1e-6)
    np.testing.assert_allclose(std, last.std(0, ddof=1), rtol=1e-5)
    assert int(w.count) == 4


def test_normal_steps_are_the_inner_optimizers():
    losses, grads = noisy_run(12)
    ours, state = replay(dlopt.skip_step_on_spikes(INNER, interval=8), losses, grads)
    theirs, inner_state = replay(dlopt.with_extra_args_support(INNER), losses, grads)
    chex.assert_trees_all_equal(ours, theirs)
    chex.assert_trees_all_equal(state.inner_state, inner_state)
    assert int(state.total_skipped) == 0 and not bool(state.step_skipped)


@pytest.mark.parametrize("what", ["loss", "grad_norm"])
def test_a_spike_is_skipped_and_the_state_is_bit_identical(what):
    tx = dlopt.skip_step_on_spikes(INNER, interval=8, scaling_factor=6.0)
    losses, grads = noisy_run(9)
    _, before = replay(tx, losses[:8], grads[:8])
    loss, g = losses[8], grads[8]
    if what == "loss":
        loss = 10.0
    else:
        g = jax.tree.map(lambda x: 20.0 * x, g)
    (u,), after = replay(tx, [loss], [g], state=before)
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, PARAMS))
    chex.assert_trees_all_equal(after.inner_state, before.inner_state)
    chex.assert_trees_all_equal(after.history, before.history)  # a spike is not recorded
    assert bool(after.step_skipped) and int(after.total_skipped) == 1
    assert int(after.consecutive) == 1
    # the next normal step is applied as if the spike had never come
    (u2,), _ = replay(tx, [losses[0]], [grads[0]], state=after)
    (want,), _ = replay(tx, [losses[0]], [grads[0]], state=before)
    chex.assert_trees_all_equal(u2, want)


def test_warm_up_applies_everything_until_the_window_holds_min_history():
    tx = dlopt.skip_step_on_spikes(INNER, interval=8)  # min_history 4
    losses, grads = noisy_run(5)
    losses[3] = 50.0  # the 4th value: only 3 in the window, so it is applied (and recorded)
    outs, state = replay(tx, losses[:4], grads[:4])
    assert int(state.total_skipped) == 0 and int(state.history.count) == 4
    assert float(jnp.abs(outs[3]["w"]).sum()) > 0


def test_without_loss_the_gradient_norm_alone_is_watched():
    tx = dlopt.skip_step_on_spikes(INNER, interval=8)
    losses, grads = noisy_run(10)
    _, state = replay(tx, [None] * 8, grads[:8])
    _, state = replay(tx, [None], [grads[8]], state=state)
    assert int(state.total_skipped) == 0
    _, state = replay(tx, [None], [jax.tree.map(lambda x: 30.0 * x, grads[9])], state=state)
    assert int(state.total_skipped) == 1


@pytest.mark.parametrize("bad", ["nan_loss", "inf_loss", "nan_grad"])
def test_non_finite_steps_are_skipped_even_in_warm_up_and_never_recorded(bad):
    tx = dlopt.skip_step_on_spikes(INNER, interval=8)
    losses, grads = noisy_run(2)
    _, before = replay(tx, losses[:1], grads[:1])
    loss, g = losses[1], grads[1]
    if bad == "nan_grad":
        g = {**g, "b": g["b"].at[0].set(jnp.nan)}
    else:
        loss = np.nan if bad == "nan_loss" else np.inf
    (u,), after = replay(tx, [loss], [g], state=before)
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, PARAMS))
    chex.assert_trees_all_equal(after.inner_state, before.inner_state)
    chex.assert_trees_all_equal(after.history, before.history)
    assert int(after.total_skipped) == 1 and int(after.consecutive) == 0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(after))


def test_a_level_shift_is_accepted_after_max_consecutive_skips():
    tx = dlopt.skip_step_on_spikes(INNER, interval=8, max_consecutive_skips=2)
    losses, grads = noisy_run(14)
    shifted = losses[:8] + [10.0 + 0.1 * i for i in range(6)]  # a new normal from step 8
    outs, state = replay(tx, shifted, grads)
    skipped = [not bool(jnp.any(u["b"] != 0)) for u in outs]
    # two skips, the third applied and the window restarted from it (warm-up: 4 values)
    assert skipped == [False] * 8 + [True, True, False, False, False, False]
    assert int(state.total_skipped) == 2 and int(state.history.count) == 4


def test_never_giving_up_keeps_skipping():
    tx = dlopt.skip_step_on_spikes(INNER, interval=8, max_consecutive_skips=None)
    losses, grads = noisy_run(12)
    _, state = replay(tx, losses[:8] + [10.0] * 4, grads)
    assert int(state.total_skipped) == 4 and int(state.consecutive) == 4


def test_checkpoint_resume_is_bitwise():
    tx = dlopt.skip_step_on_spikes(INNER, interval=4)
    losses, grads = noisy_run(10)
    losses[6] = 40.0  # one skip in the second half
    _, half = replay(tx, losses[:5], grads[:5])
    straight = replay(tx, losses[5:], grads[5:], state=half)
    restored = flax.serialization.from_bytes(tx.init(PARAMS), flax.serialization.to_bytes(half))
    resumed = replay(tx, losses[5:], grads[5:], state=restored)
    chex.assert_trees_all_equal(resumed, straight)
    assert int(straight[1].total_skipped) == 1


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="min_history"):
        dlopt.skip_step_on_spikes(INNER, interval=8, min_history=9)
    with pytest.raises(ValueError, match="loss= must be a scalar"):
        tx = dlopt.skip_step_on_spikes(INNER)
        tx.update(PARAMS, tx.init(PARAMS), PARAMS, loss=jnp.ones(3))


# --- in a train step: one count of skipped steps --------------------------------------------


def loss_fn(params, batch, *, model_state, rng, train):
    del model_state, rng, train
    return jnp.mean(jnp.square(batch["x"] @ params["w"] - batch["y"]))


def batches(n, spikes=()):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        x = rng.standard_normal((8, 3)).astype(np.float32)
        y = (x @ np.array([1.0, -1.0, 0.5], np.float32)).astype(np.float32)
        if i in spikes:
            y = y + 100.0  # a corrupted batch: a loss spike
        out.append({"x": x, "y": y})
    return out


def test_the_train_step_counts_spike_skips_in_skipped_steps_and_the_history():
    tx = dlopt.skip_step_on_spikes(dlopt.sgd(0.05), interval=6)
    data = batches(8, spikes=(6,))
    state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=tx, rng=0)
    step = make_train_step(loss_fn, pass_loss=True, donate=False)
    for b in data[:6]:
        state, _ = step(state, b)
    held, _ = step(state, data[6])
    chex.assert_trees_all_equal(held.params, state.params)
    chex.assert_trees_all_equal(held.opt_state.inner_state, state.opt_state.inner_state)
    assert int(held.skipped_steps) == 1 and int(held.step) == 7
    # fit: the epoch's skips in the History, next to the loss
    fresh = TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=tx, rng=0)
    out, history = fit(fresh, data, epochs=2, train_step=step, progress=False)
    assert history.history["skipped_steps"] == [1.0, 1.0]  # the corrupted batch, each epoch
    assert int(out.skipped_steps) == 2 == int(out.opt_state.total_skipped)


def test_the_zero1_mesh_step_skips_like_one_device():
    from dlopt import training

    tx = dlopt.skip_step_on_spikes(dlopt.adam(0.05), interval=8)
    data = batches(12, spikes=(9,))
    params = {"w": jnp.zeros(8), "b": jnp.zeros(())}

    def wide_loss_fn(params, batch, *, model_state, rng, train):
        x = jnp.concatenate([batch["x"], batch["x"] ** 2, batch["x"][:, :2]], axis=1)
        return loss_fn({"w": params["w"]}, {"x": x, "y": batch["y"] - params["b"]},
                       model_state=model_state, rng=rng, train=train)  # fmt: skip

    def run(step, state, place):
        for b in data:
            state, _ = step(state, place(b))
        return state

    def fresh():  # the steps donate their input state
        return TrainState.create(apply_fn=None, params=params, tx=tx, rng=0)

    one = run(make_train_step(wide_loss_fn, pass_loss=True), fresh(), lambda b: b)
    mesh = training.make_mesh(8)
    step = training.make_mesh_train_step(
        wide_loss_fn, mesh=mesh, shard_opt_state=True, pass_loss=True
    )
    sharded = training.shard_state(fresh(), mesh, shard_opt_state=True)
    many = run(step, sharded, lambda b: training.shard_batch(b, mesh))
    assert int(one.skipped_steps) == int(many.skipped_steps) == 1
    assert any(
        x.sharding.spec != jax.sharding.PartitionSpec() for x in jax.tree.leaves(many.opt_state)
    )
    chex.assert_trees_all_close(jax.device_get(many.params), one.params, rtol=1e-5, atol=1e-6)
