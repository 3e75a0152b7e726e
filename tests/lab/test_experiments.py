"""experiments: the demo/examples data (through dlopt.data), epoch batches, MLP and loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt import data as data_lib
from dlopt.lab.experiments import classifier_loss, epoch_batches, load_dataset, mlp


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_load_dataset_splits_stratified_70_15_15_and_standardizes_on_train(digits):
    (xt, yt), (xv, yv), (xs, ys) = digits["train"], digits["val"], digits["test"]
    assert (len(yt), len(yv), len(ys)) == (1257, 270, 270)  # ceil(0.15 * 1797) each
    assert xt.shape == (1257, 64) and xt.dtype == np.float32 and yt.dtype == np.int32
    assert xv.shape == xs.shape == (270, 64) and xv.dtype == xs.dtype == np.float32
    # every class keeps its share of the 1,797 digits in val and test (within one example)
    share = np.bincount(data_lib.load("digits")["label"]) / 1797
    for y in (yv, ys):
        np.testing.assert_allclose(np.bincount(y, minlength=10), 270 * share, atol=1)
    varying = xt.std(0) > 0
    np.testing.assert_allclose(xt.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(xt.std(0)[varying], 1.0, rtol=1e-4)
    # the three splits together hold every example of every class once
    np.testing.assert_array_equal(np.bincount(np.concatenate([yt, yv, ys])), 1797 * share)
    assert digits["source"].startswith("scikit-learn digits")


def test_load_dataset_limit_caps_train_and_refits_the_scaler(digits):
    small = load_dataset("digits", limit=100, seed=0)
    assert len(small["train"][1]) == 100 and len(small["test"][1]) == 270
    np.testing.assert_allclose(small["train"][0].mean(0), 0.0, atol=1e-5)
    np.testing.assert_array_equal(small["test"][1], digits["test"][1])  # same split
    other_seed = load_dataset("digits", limit=100, seed=1)
    assert not np.array_equal(other_seed["test"][1], digits["test"][1])


def test_load_dataset_rejects_unknown_names():
    with pytest.raises(ValueError, match="name='cifar'"):
        load_dataset("cifar")


def test_epoch_batches_reshuffle_per_epoch_and_drop_the_remainder():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    batches_of = epoch_batches(x, y, 4, seed=3)
    first, again, second = list(batches_of(0)), list(batches_of(0)), list(batches_of(1))
    assert [len(b["y"]) for b in first] == [4, 4]  # 10 = 4 + 4 + 2, the 2 dropped
    for b, c in zip(first, again, strict=True):
        np.testing.assert_array_equal(b["y"], c["y"])
    order = lambda bs: np.concatenate([b["y"] for b in bs])  # noqa: E731
    assert not np.array_equal(order(first), order(second))
    expected = np.random.default_rng([3, 0]).permutation(10)[:8]
    np.testing.assert_array_equal(order(first), expected)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in first])[:, 0], expected)


def test_epoch_batches_fewer_examples_than_a_batch_give_one_short_batch():
    x, y = np.zeros((3, 2), np.float32), np.arange(3)
    (batch,) = list(epoch_batches(x, y, 8)(0))
    assert sorted(batch["y"].tolist()) == [0, 1, 2]


def test_epoch_batches_augment_each_batch_with_a_seeded_generator():
    x, y = np.zeros((8, 2), np.float32), np.arange(8)
    noise = lambda xb, rng: xb + rng.normal(size=xb.shape).astype(np.float32)  # noqa: E731
    batches_of = epoch_batches(x, y, 4, augment=noise)
    a, b = list(batches_of(0)), list(batches_of(0))
    assert all(np.abs(batch["x"]).min() > 0 for batch in a)
    np.testing.assert_array_equal(a[1]["x"], b[1]["x"])  # reproducible
    assert not np.array_equal(a[0]["x"], a[1]["x"])  # fresh draws per batch


@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_classifier_loss_is_cross_entropy_plus_the_l2_penalty(l2):
    model = mlp((4,), num_classes=3, batch_norm=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32)
    variables = model.init(jax.random.key(0), x)
    params, model_state = variables.pop("params"), dict(variables)
    loss, aux = classifier_loss(model, l2=l2)(
        params, {"x": x, "y": y}, model_state=model_state, rng=jax.random.key(1), train=True
    )
    logits, _ = model.apply(
        {"params": params, **model_state}, x, train=True, mutable=["batch_stats"]
    )
    logp = jax.nn.log_softmax(logits)
    xent = -jnp.mean(logp[jnp.arange(6), y])
    kernels = sum(jnp.sum(jnp.square(p["kernel"])) for p in params.values() if "kernel" in p)
    np.testing.assert_allclose(loss, xent + 0.5 * l2 * kernels, rtol=1e-5)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    np.testing.assert_allclose(aux["metrics"]["accuracy"], accuracy)
    assert ("cross_entropy" in aux["metrics"]) == bool(l2)
    # train mode updates the BatchNorm running statistics
    old, new = model_state["batch_stats"], aux["model_state"]["batch_stats"]
    assert not np.allclose(jax.tree.leaves(old)[0], jax.tree.leaves(new)[0])


def test_train_classifier_survives_a_diverged_run_and_counts_the_classes():
    import dlopt
    from dlopt.lab.experiments import train_classifier

    digits = load_dataset("digits", limit=300, seed=0)
    data = {
        k: (digits[k][0][digits[k][1] < 2], digits[k][1][digits[k][1] < 2])
        for k in ("train", "val", "test")
    }
    result = train_classifier(dlopt.sgd(1e12), data, model=mlp([8], num_classes=2), epochs=2)
    assert result["best_epoch"] == 1 and result["epochs"] == 2  # epochs counted from 1
    assert 0.0 <= result["test_f1"] <= 1.0  # macro F1 over the 2 classes, not 10


def test_prefers_flat_counts_small_leaves():
    from dlopt.wrappers.fused import prefers_flat

    assert prefers_flat({"w": jnp.ones((64, 128)), "b": jnp.ones(128)})  # the demo's kind
    assert not prefers_flat({"w": jnp.ones((64, 128))})  # nothing to pack together
    assert not prefers_flat({f"big{i}": jnp.ones((1 << 16,)) for i in range(40)})


def test_train_classifier_flat_and_tree_give_the_same_run(digits):
    import dlopt
    from dlopt.lab.experiments import train_classifier

    runs = [
        train_classifier(
            dlopt.adamw(1e-2), digits, model=mlp([16]), epochs=2, patience=None, flat=flat
        )
        for flat in (False, True)
    ]
    tree, flat = (r["history"].history for r in runs)
    np.testing.assert_allclose(flat["loss"], tree["loss"], rtol=1e-5)
    np.testing.assert_allclose(flat["val_loss"], tree["val_loss"], rtol=1e-5)
    assert runs[0]["test_accuracy"] == runs[1]["test_accuracy"] > 0.5


def test_train_classifier_counts_epochs_from_1_and_tests_the_best_weights():
    import dlopt
    from dlopt.lab.experiments import train_classifier

    data = load_dataset("digits", limit=300, seed=0)
    model, snapshots = mlp([16]), []

    def keep(epoch, state, history, logs):
        snapshots.append(jax.tree.map(np.asarray, (state.params, state.model_state)))
        return state

    # too high a learning rate: val_loss is lowest at the 2nd of 6 epochs, no early stop
    result = train_classifier(
        dlopt.sgd(1.0, momentum=0.9), data, model=model, epochs=6, patience=10, on_epoch=keep
    )
    val_loss = result["history"].history["val_loss"]
    assert result["best_epoch"] == int(np.argmin(val_loss)) + 1 == 2 and result["epochs"] == 6
    params, model_state = snapshots[result["best_epoch"] - 1]
    logits = model.apply({"params": params, **model_state}, data["test"][0], train=False)
    accuracy = float(np.mean(np.argmax(logits, -1) == data["test"][1]))
    assert result["test_accuracy"] == pytest.approx(accuracy)
