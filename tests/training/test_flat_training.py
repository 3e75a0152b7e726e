"""The flat layout (`TrainState.create`'s default where it is faster) trains exactly like the
tree layout: one device, pmap, an 8-device mesh with ZeRO-1; checkpoints, callbacks and
averages too; the same ``tx`` (a mask over the params tree) in both."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from support.training import MLP, N_DEV, STEPS, data_batches, make_loss_fn, run

import dlopt
from dlopt import training
from dlopt.core.flat import Buffers
from dlopt.training import TrainState
from dlopt.training.checkpoint import ModelCheckpoint, restore
from dlopt.training.layout import to_flat, to_tree


def labels(params):
    return jax.tree.map(lambda x: "decay" if x.ndim > 1 else "no_decay", params)


def make_tx():
    """Clipping, a warmup-cosine schedule injected into AdamW, decay on kernels only (a
    callable mask over the params tree, the same in both layouts)."""
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    schedule = dlopt.warmup_cosine_decay_schedule(0.0, 0.05, 5, STEPS)
    return dlopt.chain(
        dlopt.clip_by_global_norm(0.5),
        dlopt.inject_hyperparams(dlopt.adamw, static_args=("mask",))(
            learning_rate=schedule, weight_decay=0.1, mask=mask
        ),
    )


def make_model(**kwargs) -> MLP:
    """Dense - BatchNorm - relu - dropout - Dense, without the bias BatchNorm would cancel."""
    return MLP(bias_before_norm=False, **kwargs)


def make_state(flat: bool, tx=None, **model_kwargs) -> TrainState:
    model = make_model(**model_kwargs)
    variables = model.init(jax.random.key(0), jnp.ones((2, 4)), jnp.arange(2), train=False)
    extra = {"flat": True, "group_by": labels} if flat else {"flat": False}
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=make_tx() if tx is None else tx,
        rng=0,
        model_state={"batch_stats": variables["batch_stats"]},
        **extra,
    )


def data_of(state):
    """A state's data fields (its static tx and apply_fn left out)."""
    if isinstance(state, TrainState):
        return (state.step, state.stored_params, state.opt_state, state.model_state, state.rng)
    return state


def assert_close(got, want, tol=1e-6):
    got, want = data_of(got), data_of(want)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol),
        jax.device_get(got),
        jax.device_get(want),
    )


def run_pmap(flat: bool):
    step = training.make_pmap_train_step(
        make_loss_fn(make_model(axis_name="batch")), per_device_rng=False, accumulation_steps=2
    )
    state = training.replicate(make_state(flat, axis_name="batch"))
    state, losses = run(step, state, lambda b: training.split_batch(b, N_DEV))
    return training.unreplicate(state), losses


def run_mesh(flat: bool):
    mesh = training.make_mesh(N_DEV)
    step = training.make_mesh_train_step(
        make_loss_fn(make_model()), mesh=mesh, shard_opt_state=True, accumulation_steps=2
    )
    state = training.shard_state(make_state(flat), mesh, shard_opt_state=True)
    return run(step, state, lambda b: training.shard_batch(b, mesh))


def run_one(flat: bool):
    step = training.make_train_step(make_loss_fn(make_model()), accumulation_steps=2)
    return run(step, make_state(flat), lambda b: b)


@functools.cache
def tree_reference(where: str = "one"):
    """The tree layout, 2 micro-batches per step: (params, model state, losses)."""
    state, losses = {"one": run_one, "pmap": run_pmap, "mesh": run_mesh}[where](False)
    return jax.device_get((state.params, state.model_state)), losses


def assert_matches_tree(state, losses, where="one"):
    (params, model_state), want = tree_reference(where)
    assert_close((state.params, state.model_state), (params, model_state))
    np.testing.assert_allclose(losses, want, rtol=1e-6, atol=1e-6)


def test_flat_state_stores_buffers_and_reads_as_the_tree():
    flat, tree = make_state(True), make_state(False)
    assert flat.is_flat and not tree.is_flat
    assert isinstance(flat.stored_params, Buffers) and flat.layout is flat.stored_params.layout
    assert tree.layout is None
    assert set(flat.stored_params.buffers) == {"decay", "no_decay"}
    for buffer in jax.tree.leaves(flat.stored_params):
        assert buffer.ndim == 1 and buffer.size % jax.device_count() == 0  # padded to 8
    assert jax.tree.structure(flat.params) == jax.tree.structure(tree.params)
    assert_close(flat.params, tree.params, tol=0)
    assert flat.variables["params"]["Dense_0"]["kernel"].shape == (4, 16)
    # replace(params=tree) packs the tree into the flat layout
    doubled = flat.replace(params=jax.tree.map(lambda x: 2 * x, tree.params))
    assert doubled.is_flat
    assert_close(doubled.params, jax.tree.map(lambda x: 2 * x, tree.params), tol=0)


def test_flat_matches_tree_on_one_device():
    reference_params, _ = tree_reference()[0]
    assert "bias" not in reference_params["Dense_0"]
    state, losses = run_one(True)
    assert state.is_flat and int(state.step) == STEPS
    assert losses[-4:].mean() < losses[:4].mean()
    assert_matches_tree(state, losses)


def test_flat_decay_mask_really_masks():
    """The no_decay buffer (biases, BatchNorm scales) gets no weight decay: with zero
    gradients only the kernels shrink."""
    state = make_state(True)
    zeros = jax.tree.map(jnp.zeros_like, state.stored_params)
    new = state.apply_gradients(zeros)
    new = new.apply_gradients(zeros)  # (the warmup's learning rate is 0 at step 0)
    for name, leaf in new.params["BatchNorm_0"].items():
        np.testing.assert_array_equal(leaf, state.params["BatchNorm_0"][name])
    assert float(jnp.abs(new.params["Dense_0"]["kernel"]).sum()) < float(
        jnp.abs(state.params["Dense_0"]["kernel"]).sum()
    )
    np.testing.assert_array_equal(new.params["Dense_1"]["bias"], state.params["Dense_1"]["bias"])


def test_flat_matches_tree_under_pmap():
    state, losses = run_pmap(True)
    assert state.is_flat
    assert_matches_tree(state, losses, "pmap")


def test_flat_matches_tree_on_a_mesh_with_zero1_even_shards():
    state, losses = run_mesh(True)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim == 1]
    assert moments and all(x.sharding.spec == P("data") for x in moments)
    for x in moments:  # ZeRO-1: every device holds an equal 1/8 of each buffer
        assert {s.data.shape[0] for s in x.addressable_shards} == {x.shape[0] // N_DEV}
    assert_matches_tree(state, losses, "mesh")


def test_layout_conversion_round_trips_the_optimizer_state():
    tx = dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adam(1e-2))
    tree, flat = make_state(False, tx), make_state(True, tx)
    step = training.make_train_step(make_loss_fn(make_model()), donate=False)
    for batch in data_batches()[:3]:
        tree, _ = step(tree, batch)
        flat, _ = step(flat, batch)
    back = to_tree(flat)
    assert jax.tree.structure(data_of(back)) == jax.tree.structure(data_of(tree))
    assert_close(back, tree)
    again = to_flat(tree, like=flat)
    assert jax.tree.structure(data_of(again)) == jax.tree.structure(data_of(flat))
    assert_close(again, flat)


def test_layouts_read_each_others_checkpoints(tmp_path):
    tx = dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adam(1e-2))
    step = training.make_train_step(make_loss_fn(make_model()), donate=False)
    runs = {}
    for flat in (False, True):
        state = make_state(flat, tx)
        for batch in data_batches()[:2]:
            state, _ = step(state, batch)
        ModelCheckpoint(tmp_path / str(flat), save_best_only=False).save(
            1, state, training.History()
        )
        runs[flat] = state
    for saved, target in ((False, True), (True, False)):
        restored, _ = restore(tmp_path / str(saved), target=make_state(target, tx))
        assert restored.is_flat == target
        assert jax.tree.structure(data_of(restored)) == jax.tree.structure(data_of(runs[target]))
        assert_close(restored, runs[target])
        # and it trains on exactly like the run that saved it
        a, _ = step(restored, data_batches()[2])
        b, _ = step(runs[target], data_batches()[2])
        assert_close(a.params, b.params)
    plain, _ = restore(tmp_path / "True")  # no target: the tree, under "params"
    assert_close(plain["params"], runs[False].params)


def test_flat_checkpoint_with_masks_restores_in_both_layouts(tmp_path):
    step = training.make_train_step(make_loss_fn(make_model()), donate=False)
    state, _ = step(make_state(True), data_batches()[0])
    tree, _ = step(make_state(False), data_batches()[0])
    ModelCheckpoint(tmp_path, save_best_only=False).save(1, state, training.History())
    restored, _ = restore(tmp_path, target=make_state(True))
    assert_close(restored, state, tol=0)
    as_tree, _ = restore(tmp_path, target=make_state(False))
    assert_close(as_tree, tree)
    assert_close(to_tree(state), tree)


def test_a_mask_the_layout_cannot_run_is_refused_with_flat_true():
    with pytest.raises(ValueError, match="flat=False"):
        make_state(True, tx=dlopt.masked(dlopt.sgd(0.1), lambda p: jax.tree.map(jnp.isnan, p)))


def test_fit_with_early_stopping_and_model_ema_on_a_flat_state():
    data = data_batches()
    results = {}
    for flat in (False, True):
        tx = dlopt.adam(5e-2)
        early = training.EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
        ema = training.ModelEMA(decay=0.9)
        state, history = training.fit(
            make_state(flat, tx),
            data[:3],
            epochs=6,
            val_data=data[3:],
            loss_fn=make_loss_fn(make_model()),
            callbacks=[ema, early],
        )
        assert state.is_flat == flat
        results[flat] = (state, history)
    (tree, tree_history), (flat, flat_history) = results[False], results[True]
    np.testing.assert_allclose(
        flat_history.history["val_loss"], tree_history.history["val_loss"], rtol=1e-5
    )
    assert_close(flat.params, tree.params, tol=1e-5)
    assert isinstance(flat.averages.params, Buffers)
    assert_close(flat.averages.params.unflatten(), tree.averages.params, tol=1e-5)
