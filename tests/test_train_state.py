"""TrainState; also the tiny models and loss functions the training tests share."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlopt
from dlopt.training import TrainState

# --- shared by test_steps / test_parallel / test_loop / test_callbacks / test_distributed


class ExampleDropout(nn.Module):
    """Dropout whose mask is keyed by each example's id, so any batch layout draws the same."""

    rate: float

    @nn.compact
    def __call__(self, x, index, *, train: bool):
        if not train:
            return x
        key = self.make_rng("dropout")
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - self.rate, x.shape[1:]))(keys)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class MLP(nn.Module):
    """Dense 16 -> BatchNorm -> relu -> dropout -> Dense 1 (a logit)."""

    axis_name: str | None = None
    per_example_dropout: bool = True
    # a bias before BatchNorm is cancelled by it: its gradient is round-off, which Adam turns
    # into full steps, so its value then depends on the summation order (the device count)
    bias_before_norm: bool = True

    @nn.compact
    def __call__(self, x, index, *, train: bool):
        x = nn.Dense(16, use_bias=self.bias_before_norm)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(x)
        x = nn.relu(x)
        if self.per_example_dropout:
            x = ExampleDropout(0.25)(x, index, train=train)
        else:
            x = nn.Dropout(0.25, deterministic=not train)(x)
        return nn.Dense(1)(x)[:, 0]


def make_loss_fn(model: nn.Module):
    """Masked binary cross-entropy with an accuracy metric, in dlopt's loss_fn contract."""

    def loss_fn(params, batch, *, model_state, rng, train):
        variables = {"params": params, **model_state}
        if train:
            logits, updates = model.apply(
                variables,
                batch["x"],
                batch["index"],
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
        else:
            logits, updates = model.apply(variables, batch["x"], batch["index"], train=False), {}
        y = batch["y"]
        losses = jnp.maximum(logits, 0.0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        correct = ((logits > 0).astype(jnp.float32) == y).astype(jnp.float32)
        mask = batch.get("mask", jnp.ones_like(y))
        n = jnp.maximum(jnp.sum(mask), 1.0)
        metrics = {"accuracy": jnp.sum(correct * mask) / n}
        return jnp.sum(losses * mask) / n, {"model_state": dict(updates), "metrics": metrics}

    return loss_fn


def make_data(n: int, seed: int = 0, features: int = 4):
    """A linearly separable-ish binary problem, with example ids for the dropout."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w = np.arange(1, features + 1, dtype=np.float32)
    y = (x @ w + 0.3 * rng.standard_normal(n) > 0).astype(np.float32)
    return {"x": x, "y": y, "index": np.arange(n, dtype=np.int32)}


def make_state(tx=None, seed: int = 0, features: int = 4, **model_kwargs):
    model = MLP(**model_kwargs)
    variables = model.init(
        jax.random.key(seed), jnp.ones((2, features)), jnp.arange(2), train=False
    )
    params = variables["params"]
    model_state = {"batch_stats": variables["batch_stats"]}
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx if tx is not None else dlopt.sgd(0.1, momentum=0.9),
        rng=seed,
        model_state=model_state,
    )


def batches(data, batch_size: int):
    n = len(data["y"])
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


# --- TrainState tests


def test_create_fields():
    state = make_state()
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert state.skipped_steps.dtype == jnp.int32 and int(state.skipped_steps) == 0
    assert state.rng.dtype == jnp.uint32
    assert set(state.model_state) == {"batch_stats"}
    assert set(state.variables) == {"params", "batch_stats"}
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b),
        state.opt_state,
        state.tx.init(state.stored_params),  # the default layout: flat here
    )


@pytest.mark.parametrize(
    "rng",
    [3, jax.random.key(3), jax.random.key_data(jax.random.key(3))],
    ids=["int", "typed-key", "raw"],
)
def test_rng_forms_agree(rng):
    state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=rng)
    np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(3)))
    np.testing.assert_array_equal(jax.random.key_data(state.key), state.rng)


def test_bad_rng_raises():
    with pytest.raises(ValueError, match="rng"):
        TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=1.5)


def test_is_pytree_with_static_tx():
    state = make_state()
    leaves, treedef = jax.tree.flatten(state)
    # step, rng, skipped_steps and every params/opt/model leaf; tx and apply_fn are static
    expected = 3 + sum(
        len(jax.tree.leaves(t)) for t in (state.stored_params, state.opt_state, state.model_state)
    )
    assert len(leaves) == expected
    back = jax.tree.unflatten(treedef, leaves)
    assert back.tx is state.tx and back.apply_fn is state.apply_fn


def test_apply_gradients_is_one_sgd_step():
    params = {"w": jnp.array([1.0, -2.0])}
    state = TrainState.create(apply_fn=None, params=params, tx=dlopt.sgd(0.5), rng=0)
    state = state.apply_gradients({"w": jnp.array([2.0, 4.0])})
    np.testing.assert_allclose(state.params["w"], [0.0, -4.0])
    assert int(state.step) == 1
