"""tuning: grid/random search, vmapped trials equal to separate runs, the LR range test."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dlopt
from dlopt.lab import tuning

# ----------------------------------------------------------------------------- search


def quadratic_trial(config):
    """A fake training run: the best learning rate is 0.1, the best batch size 64."""
    lr, bs = config["lr"], config.get("batch_size", 64)
    val_loss = math.log10(lr / 0.1) ** 2 + abs(bs - 64) / 64
    return {"val_loss": val_loss, "val_accuracy": 1.0 / (1.0 + val_loss)}


def test_grid_search_tries_every_combination_and_sorts():
    space = {"lr": [0.01, 0.1, 1.0], "batch_size": [32, 64]}
    result = tuning.grid_search(quadratic_trial, space)
    assert len(result.trials) == 6
    assert {(t["lr"], t["batch_size"]) for t in result.trials} == {
        (lr, bs) for lr in space["lr"] for bs in space["batch_size"]
    }
    losses = [t["val_loss"] for t in result.trials]
    assert losses == sorted(losses)
    assert result.best_config == {"lr": 0.1, "batch_size": 64}
    assert result.best["val_loss"] == 0.0 and result.best["seconds"] >= 0


def test_grid_search_max_mode_and_scalar_returns():
    by_acc = tuning.grid_search(
        quadratic_trial, {"lr": [1.0, 0.1]}, metric="val_accuracy", mode="max"
    )
    assert by_acc.best_config == {"lr": 0.1}
    scalar = tuning.grid_search(lambda c: (c["lr"] - 0.3) ** 2, {"lr": [0.1, 0.3, 0.9]})
    assert scalar.best_config == {"lr": 0.3}


def test_nan_trials_sort_last_and_table_lists_all():
    result = tuning.grid_search(
        lambda c: math.nan if c["lr"] > 1 else c["lr"], {"lr": [10.0, 0.5, 0.2]}
    )
    assert [t["lr"] for t in result.trials] == [0.2, 0.5, 10.0]
    lines = result.table().splitlines()
    assert lines[0].split() == ["lr", "val_loss", "seconds"]
    assert [line.split()[0] for line in lines[2:]] == ["0.2", "0.5", "10"]


def test_search_errors_name_the_problem():
    with pytest.raises(ValueError, match="val_loss"):
        tuning.grid_search(lambda c: {"loss": 1.0}, {"lr": [0.1]})
    with pytest.raises(ValueError, match="mode"):
        tuning.grid_search(quadratic_trial, {"lr": [0.1]}, mode="best")
    with pytest.raises(ValueError, match="num_trials"):
        tuning.random_search(quadratic_trial, {"lr": [0.1]}, num_trials=0)
    with pytest.raises(ValueError, match="low"):
        tuning.log_uniform(0.0, 1.0)
    with pytest.raises(ValueError, match="high"):
        tuning.log_uniform(1.0, 0.1)


def test_random_search_is_seeded_and_samples_each_kind():
    space = {
        "lr": tuning.log_uniform(1e-4, 1.0),
        "momentum": tuning.uniform(0.8, 0.99),
        "batch_size": [32, 64, 128],
        "epochs": 3,
    }
    seen = []
    first = tuning.random_search(
        lambda c: seen.append(c) or quadratic_trial(c), space, num_trials=12, seed=3
    )
    again = tuning.random_search(quadratic_trial, space, num_trials=12, seed=3)
    other = tuning.random_search(quadratic_trial, space, num_trials=12, seed=4)
    assert first.trials[0]["lr"] == again.trials[0]["lr"]
    assert {t["lr"] for t in first.trials} != {t["lr"] for t in other.trials}
    for c in seen:
        assert 1e-4 <= c["lr"] <= 1.0 and 0.8 <= c["momentum"] <= 0.99
        assert c["batch_size"] in (32, 64, 128) and c["epochs"] == 3
    assert first.best_config.keys() == space.keys()


@given(st.floats(1e-8, 1e-1), st.floats(2.0, 1e6))
def test_log_uniform_stays_in_range_and_spreads_over_decades(low, ratio):
    dist = tuning.log_uniform(low, low * ratio)
    rng = np.random.default_rng(0)
    samples = np.array([dist.sample(rng) for _ in range(400)])
    assert np.all(samples >= low * (1 - 1e-9)) and np.all(samples <= low * ratio * (1 + 1e-9))
    # log-uniform: the log of the samples is uniform, so its mean is the middle decade
    middle = math.log(low) + math.log(ratio) / 2
    assert abs(np.mean(np.log(samples)) - middle) < 0.1 * math.log(ratio)


# ----------------------------------------------------------------------------- vmapped trials


def regression_problem(steps=15, seed=0):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=4).astype(np.float32)
    xs = rng.normal(size=(steps, 8, 4)).astype(np.float32)
    batches = [{"x": x, "y": x @ w_true + 0.5} for x in xs]
    params = {"w": jnp.zeros(4, jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def loss_fn(p, batch):
        return jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2)

    return loss_fn, params, batches


def separate_run(tx, loss_fn, params, batches):
    """The plain reference: an ordinary Python loop of optimizer steps."""
    state, losses = tx.init(params), []
    step = jax.jit(lambda p, s, b: (jax.value_and_grad(loss_fn)(p, b), s))
    for batch in batches:
        (loss, grads), _ = step(params, state, batch)
        updates, state = tx.update(grads, state, params)
        params = dlopt.apply_updates(params, updates)
        losses.append(loss)
    return params, jnp.stack(losses)


TRIALS = [
    # optimizer, hyperparameter, values, fixed arguments
    (dlopt.sgd, "learning_rate", [0.01, 0.05, 0.2], {"momentum": 0.9}),
    (dlopt.adam, "learning_rate", [1e-3, 1e-2, 1e-1], {}),
    (dlopt.adamw, "weight_decay", [0.0, 0.1, 1.0], {"learning_rate": 0.05}),
]


@pytest.mark.parametrize(
    "optimizer, name, values, fixed", TRIALS, ids=["sgd-lr", "adam-lr", "adamw-wd"]
)
def test_vmap_trials_equal_separate_runs(optimizer, name, values, fixed):
    loss_fn, params, batches = regression_problem()
    vmapped = tuning.vmap_trials(
        optimizer, loss_fn, params, batches, values, hyperparam=name, **fixed
    )
    sequential = tuning.sequential_trials(
        optimizer, loss_fn, params, batches, values, hyperparam=name, **fixed
    )
    assert vmapped.losses.shape == (3, len(batches))
    chex.assert_trees_all_close(vmapped.params, sequential.params, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(vmapped.losses, sequential.losses, rtol=1e-4, atol=1e-5)
    for i, value in enumerate(values):
        tx = optimizer(**{name: value}, **fixed)
        final, losses = separate_run(tx, loss_fn, params, batches)
        trial = jax.tree.map(lambda x, i=i: x[i], vmapped.params)
        chex.assert_trees_all_close(trial, final, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(vmapped.losses[i], losses, rtol=1e-4, atol=1e-5)
    # the hyperparameter matters: the trials differ
    assert not np.allclose(vmapped.losses[0], vmapped.losses[-1])


def test_time_trials_reports_both_and_the_ratio():
    loss_fn, params, batches = regression_problem(steps=5)
    times = tuning.time_trials(dlopt.sgd, loss_fn, params, batches, [0.01, 0.1], repeats=1)
    assert times["vmapped_s"] > 0 and times["sequential_s"] > 0
    assert times["speedup"] == pytest.approx(times["sequential_s"] / times["vmapped_s"])


# ----------------------------------------------------------------------------- lr_find


def test_lr_find_stops_at_divergence_and_suggests_a_stable_rate():
    loss_fn, params, batches = regression_problem(steps=5)
    x = np.concatenate([b["x"] for b in batches])
    # SGD on this least squares problem diverges above 2 / L, L the Hessian's top eigenvalue
    xa = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1)
    top = float(np.linalg.eigvalsh(2 * xa.T @ xa / len(xa))[-1])
    found = tuning.lr_find(loss_fn, params, batches * 20, min_lr=1e-4, max_lr=10.0)
    n = len(batches) * 20
    assert found.learning_rates.shape == found.losses.shape == found.smoothed.shape == (n,)
    np.testing.assert_allclose(found.learning_rates[[0, -1]], [1e-4, 10.0], rtol=1e-5)
    assert np.all(np.diff(found.learning_rates) > 0)
    assert found.stop < n  # it diverged inside the range ...
    assert found.learning_rates[found.stop] > 1.0 / top  # ... not before the rate gets big
    assert np.all(np.isnan(found.smoothed[found.stop :]))
    assert np.all(np.isfinite(found.smoothed[: found.stop]))
    assert 1e-3 / top < found.suggested_lr < 2.0 / top
    # the suggestion trains: a run at the suggested rate lowers the loss
    _, losses = separate_run(dlopt.sgd(found.suggested_lr), loss_fn, params, batches * 4)
    assert losses[-1] < 0.5 * losses[0]


def test_lr_find_with_another_optimizer_and_no_divergence():
    loss_fn, params, batches = regression_problem(steps=5)
    found = tuning.lr_find(loss_fn, params, batches * 4, dlopt.adam, min_lr=1e-6, max_lr=1e-3)
    assert found.stop == 20 and np.all(np.isfinite(found.smoothed))
    assert 1e-6 <= found.suggested_lr <= 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_lr": 0.0}, "min_lr"),
        ({"min_lr": 1.0, "max_lr": 0.5}, "max_lr"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"diverge_factor": 1.0}, "diverge_factor"),
    ],
)
def test_lr_find_bad_arguments(kwargs, match):
    loss_fn, params, batches = regression_problem(steps=3)
    with pytest.raises(ValueError, match=match):
        tuning.lr_find(loss_fn, params, batches, **kwargs)
