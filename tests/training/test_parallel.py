"""pmap, mesh-jit and ZeRO-1 mesh steps give the one-device numbers (8 fake CPU devices)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from support.training import MLP, N_DEV, data_batches, make_data, make_loss_fn, make_state, run

import dlopt
from dlopt import training
from dlopt.training import TrainState
from dlopt.training.layout import to_tree


@functools.cache
def reference(per_example_dropout: bool):
    """One device, global batches, 20 steps: (params, batch_stats, losses)."""
    model = MLP(per_example_dropout=per_example_dropout)
    step = training.make_train_step(make_loss_fn(model))
    state, losses = run(step, make_state(per_example_dropout=per_example_dropout), lambda b: b)
    return jax.device_get((state.params, state.model_state)), losses


def assert_matches_reference(state, losses, per_example_dropout=True):
    (params, model_state), ref_losses = reference(per_example_dropout)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        jax.device_get((state.params, state.model_state)),
        (params, model_state),
    )
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)


def test_reference_actually_trains_and_uses_dropout():
    (params, _), losses = reference(True)
    assert losses[-4:].mean() < losses[:4].mean()
    # dropout on: two different train-mode keys give different losses
    state = make_state()
    loss_fn = make_loss_fn(MLP())
    batch = data_batches()[0]
    a, b = (
        loss_fn(state.params, batch, model_state=state.model_state, rng=key, train=True)[0]
        for key in (jax.random.key(1), jax.random.key(2))
    )
    assert float(a) != float(b)


def test_pmap_matches_one_device():
    assert jax.local_device_count() == N_DEV
    model = MLP(axis_name="batch")
    step = training.make_pmap_train_step(
        make_loss_fn(model), axis_name="batch", per_device_rng=False
    )
    state = training.replicate(make_state())
    state, losses = run(step, state, lambda b: training.split_batch(b, N_DEV))
    assert state.params["Dense_0"]["kernel"].shape[0] == N_DEV
    assert_matches_reference(training.unreplicate(state), losses)


def test_pmap_eval_matches_one_device():
    state = make_state()
    batch = data_batches()[0]
    want = training.make_eval_step(make_loss_fn(MLP()))(state, batch)
    got = training.make_pmap_eval_step(make_loss_fn(MLP(axis_name="batch")))(
        training.replicate(state), training.split_batch(batch, N_DEV)
    )
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), got, want)


@pytest.mark.parametrize(
    "shard_opt_state,per_example_dropout",
    [(False, True), (True, True), (False, False)],
    ids=["replicated", "zero1", "flax-dropout"],
)
def test_mesh_matches_one_device(shard_opt_state, per_example_dropout):
    mesh = training.make_mesh(N_DEV)
    step = training.make_mesh_train_step(
        make_loss_fn(MLP(per_example_dropout=per_example_dropout)),
        mesh=mesh,
        shard_opt_state=shard_opt_state,
    )
    state = training.shard_state(
        make_state(per_example_dropout=per_example_dropout), mesh, shard_opt_state=shard_opt_state
    )
    state, losses = run(step, state, lambda b: training.shard_batch(b, mesh))
    specs = [x.sharding.spec for x in jax.tree.leaves(state.opt_state)]
    assert any(s != P() for s in specs) == shard_opt_state
    assert all(x.sharding.spec == P() for x in jax.tree.leaves(state.params))
    assert_matches_reference(state, losses, per_example_dropout)


def test_state_sharding_zero1_specs():
    state = to_tree(make_state())  # the per-leaf rules of the tree layout
    mesh = training.make_mesh(N_DEV)
    shardings = training.state_sharding(state, mesh, shard_opt_state=True)
    trace = shardings.opt_state[0].trace
    assert trace["Dense_0"]["kernel"].spec == P(None, "data")  # (4, 16): dim 1 divides by 8
    assert trace["Dense_1"]["bias"].spec == P()  # (1,): nothing divides, replicated
    assert shardings.params["Dense_0"]["kernel"].spec == P()


def linear_loss_fn(params, batch, *, model_state, rng, train):
    """Masked logistic regression: no BatchNorm, so padded rows cannot leak in."""
    del rng, train
    logits = batch["x"] @ params["w"] + params["b"]
    losses = jnp.logaddexp(0.0, logits) - logits * batch["y"]
    mask = batch["mask"]
    return jnp.sum(losses * mask) / jnp.sum(mask), {"model_state": model_state}


def test_padded_batch_with_mask_matches_unpadded():
    """A last batch of 20 rows, padded to 32 with a mask, gives the 20-row step's numbers."""
    data = make_data(20, seed=3)
    padded = training.pad_batch(data, 32)
    data["mask"] = np.ones(20, np.float32)
    np.testing.assert_array_equal(padded["mask"], np.repeat([1.0, 0.0], [20, 12]))
    assert padded["x"].shape == (32, 4) and not padded["x"][20:].any()
    params = {"w": jnp.linspace(-1.0, 1.0, 4), "b": jnp.zeros(())}
    state = TrainState.create(apply_fn=None, params=params, tx=dlopt.sgd(0.5), rng=0)
    want, want_m = training.make_train_step(linear_loss_fn, donate=False)(state, data)
    mesh = training.make_mesh(N_DEV)
    mesh_step = training.make_mesh_train_step(linear_loss_fn, mesh=mesh, donate=False)
    got, got_m = mesh_step(training.shard_state(state, mesh), training.shard_batch(padded, mesh))
    assert float(got_m["num_examples"]) == 20.0
    np.testing.assert_allclose(float(got_m["loss"]), float(want_m["loss"]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got.params, want.params)
    assert float(jnp.abs(got.params["w"] - params["w"]).max()) > 1e-3  # it did move
    pmap_step = training.make_pmap_train_step(linear_loss_fn, donate=False)
    got, _ = pmap_step(training.replicate(state), training.split_batch(padded, N_DEV))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
        training.unreplicate(got.params),
        want.params,
    )
    # eval: shards 5..7 hold padding only (their masked mean is 0/0) and weigh nothing
    want_eval = training.make_eval_step(linear_loss_fn)(state, data)
    got_eval = training.make_pmap_eval_step(linear_loss_fn)(
        training.replicate(state), training.split_batch(padded, N_DEV)
    )
    np.testing.assert_allclose(float(got_eval["loss"]), float(want_eval["loss"]), rtol=1e-6)
    assert float(got_eval["num_examples"]) == 20.0
    with pytest.raises(ValueError, match="divide"):
        training.split_batch(data, N_DEV)
    with pytest.raises(ValueError, match="pad_batch"):
        training.shard_batch(data, mesh)


def running_mean_loss_fn(params, batch, *, model_state, rng, train):
    """A masked mean loss and a BatchNorm-like running mean of x over the valid rows.

    On a device whose rows are all padding the batch mean is 0/0 = NaN: it must weigh nothing.
    """
    del rng
    mask = batch["mask"]
    n = jnp.sum(mask)
    losses = jnp.square(batch["x"] @ params["w"] - batch["y"])
    if not train:
        return jnp.sum(losses * mask) / n
    batch_mean = jnp.sum(batch["x"] * mask[:, None], axis=0) / n
    mean = 0.9 * model_state["stats"]["mean"] + 0.1 * batch_mean
    return jnp.sum(losses * mask) / n, {"model_state": {"stats": {"mean": mean}}}


def test_pmap_and_mesh_average_model_state_with_the_example_weights():
    """18 real rows padded to 32 over 8 devices: device 4 holds 2 real rows, 5-7 none."""
    data = make_data(18, seed=4)
    padded = training.pad_batch({"x": data["x"], "y": data["y"]}, 32)
    state = TrainState.create(
        apply_fn=None,
        params={"w": jnp.zeros(4)},
        tx=dlopt.sgd(0.1),
        rng=0,
        model_state={"stats": {"mean": jnp.ones(4)}},
    )
    want = 0.9 * 1.0 + 0.1 * data["x"].mean(axis=0)  # the running mean over the 18 real rows
    options = training.StepOptions(donate=False)
    mesh = training.make_mesh(N_DEV)
    mesh_step = training.make_mesh_train_step(running_mean_loss_fn, mesh=mesh, options=options)
    got_mesh, _ = mesh_step(training.shard_state(state, mesh), training.shard_batch(padded, mesh))
    pmap_step = training.make_pmap_train_step(running_mean_loss_fn, options=options)
    got_pmap, _ = pmap_step(training.replicate(state), training.split_batch(padded, N_DEV))
    got_pmap = training.unreplicate(got_pmap)
    for got in (got_mesh, got_pmap):
        np.testing.assert_allclose(got.model_state["stats"]["mean"], want, rtol=1e-6)
    np.testing.assert_allclose(got_pmap.params["w"], got_mesh.params["w"], rtol=1e-6)
    assert int(got_pmap.skipped_steps) == 0


def dropout_loss_fn(params, batch, *, model_state, rng, train):
    """loss = mean over rows of w . mask_row, a Bernoulli(1/2) mask per row: grad = mean mask.

    The masks also come back as model state, to compare what each shard drew."""
    del train
    mask = jax.random.bernoulli(rng, 0.5, (batch["x"].shape[0], 64)).astype(jnp.float32)
    return jnp.mean(mask @ params["w"]), {"model_state": {"mask": mask}}


def dropout_state(rows):
    return TrainState.create(
        apply_fn=None,
        params={"w": jnp.zeros(64)},
        tx=dlopt.sgd(1.0),
        rng=3,
        model_state={"mask": jnp.zeros((rows, 64))},
    )


@pytest.mark.parametrize("per_device_rng", [True, False])
def test_pmap_replicas_draw_independent_dropout_masks(per_device_rng):
    # one row per device: the averaged gradient is the mean of the 8 devices' masks, all 0/1
    # when the replicas share a mask (correlated noise), fractional when they do not.
    step = training.make_pmap_train_step(
        dropout_loss_fn, per_device_rng=per_device_rng, donate=False
    )
    batch = training.split_batch({"x": np.zeros((N_DEV, 1), np.float32)}, N_DEV)
    new, _ = step(training.replicate(dropout_state(1)), batch)
    mean_mask = -np.asarray(training.unreplicate(new.params)["w"])  # sgd(1): w = -grad
    fractional = (mean_mask > 0) & (mean_mask < 1)
    assert fractional.any() == per_device_rng
    masks = np.asarray(new.model_state["mask"])[:, 0]  # each device's averaged mask
    assert np.all((masks == 0) | (masks == 1)) != per_device_rng


def test_mesh_step_masks_differ_across_the_batch_shards():
    mesh = training.make_mesh(N_DEV)
    rows = 2 * N_DEV
    batch = {"x": np.zeros((rows, 1), np.float32)}
    step = training.make_mesh_train_step(dropout_loss_fn, mesh=mesh, donate=False)
    new, _ = step(
        training.shard_state(dropout_state(rows), mesh), training.shard_batch(batch, mesh)
    )
    shards = np.asarray(new.model_state["mask"]).reshape(N_DEV, -1)  # one row per shard's rows
    assert len({s.tobytes() for s in shards}) == N_DEV
    one_device, _ = training.make_train_step(dropout_loss_fn, donate=False)(
        dropout_state(rows), batch
    )  # the mesh step draws what one device draws for the global batch
    np.testing.assert_array_equal(new.model_state["mask"], one_device.model_state["mask"])
