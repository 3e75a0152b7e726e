"""dlopt and optax/flax compose both ways: each setup trains a small MLP as its optax twin does."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import dlopt

STEPS = 15
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.standard_normal((32, 4)), jnp.float32)
Y = jnp.asarray(np.asarray(X) @ _rng.standard_normal((4, 1)) + 0.5, jnp.float32)


def _mse(pred):
    return jnp.mean(jnp.square(pred - Y))


def _init_mlp(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "hidden": {"w": rng.standard_normal((4, 8)) / 2.0, "b": np.zeros((1, 8))},
        "out": {"w": rng.standard_normal((8, 1)) / 3.0, "b": np.zeros((1, 1))},
    }


def _mlp(params, x):
    h = jnp.tanh(x @ params["hidden"]["w"] + params["hidden"]["b"])
    return h @ params["out"]["w"] + params["out"]["b"]


def train_pytree(tx):
    """``STEPS`` full-batch steps of ``tx`` on the MLP, in one jitted scan: (losses, params)."""
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _init_mlp())

    def body(carry, _):
        params, state = carry
        loss, grads = jax.value_and_grad(lambda p: _mse(_mlp(p, X)))(params)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    (params, _), losses = jax.jit(lambda c: jax.lax.scan(body, c, None, length=STEPS))(
        (params, tx.init(params))
    )
    return np.asarray(losses), params


def _assert_trained_like(ours, reference):
    losses, params = ours
    ref_losses, ref_params = reference
    assert losses[-1] < 0.95 * losses[0], losses
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    chex.assert_trees_all_close(params, ref_params, rtol=1e-5, atol=1e-7)


def test_optax_chain_of_dlopt_adam():
    ours = train_pytree(optax.chain(dlopt.adam(1e-2), optax.clip(1.0)))
    with jax.numpy_dtype_promotion("standard"):
        reference = train_pytree(optax.chain(optax.adam(1e-2), optax.clip(1.0)))
    _assert_trained_like(ours, reference)


def test_dlopt_chain_of_optax_clip():
    ours = train_pytree(dlopt.chain(optax.clip(1.0), dlopt.sgd(0.1)))
    with jax.numpy_dtype_promotion("standard"):
        reference = train_pytree(optax.chain(optax.clip(1.0), optax.sgd(0.1)))
    _assert_trained_like(ours, reference)


def test_issue_learning_rates_lower_the_loss():
    # The issue's exact chains (lr 1e-3): slower, but the loss still goes down.
    for tx in (
        optax.chain(dlopt.adam(1e-3), optax.clip(1.0)),
        dlopt.chain(optax.clip(1.0), dlopt.sgd(0.1)),
    ):
        losses, _ = train_pytree(tx)
        assert losses[-1] < losses[0], losses


# --- flax.nnx.Optimizer


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


@nnx.jit
def _nnx_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: _mse(m(X)))(model)
    optimizer.update(model, grads)
    return loss


def train_nnx(tx):
    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    losses = np.asarray([_nnx_step(model, optimizer) for _ in range(STEPS)])
    assert int(optimizer.step[...]) == STEPS
    return losses, nnx.state(model, nnx.Param)


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_nnx_optimizer_with_dlopt_adamw(lr):
    ours = train_nnx(dlopt.adamw(lr))
    with jax.numpy_dtype_promotion("standard"):
        reference = train_nnx(optax.adamw(lr))
    losses, params = ours
    assert losses[-1] < losses[0], losses
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5)
    chex.assert_trees_all_close(jax.tree.leaves(params), jax.tree.leaves(reference[1]), rtol=1e-5)


# --- flax.training.train_state.TrainState


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(jnp.tanh(nn.Dense(8)(x)))


@jax.jit
def _linen_step(state):
    def loss_fn(params):
        return _mse(state.apply_fn({"params": params}, X))

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


def train_linen(tx):
    model = LinenMLP()
    params = model.init(jax.random.key(0), X)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    losses = []
    for _ in range(STEPS):
        state, loss = _linen_step(state)
        losses.append(float(loss))
    assert int(state.step) == STEPS
    return np.asarray(losses), state.params


@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_linen_train_state_with_dlopt_rmsprop(lr):
    ours = train_linen(dlopt.rmsprop(lr))
    with jax.numpy_dtype_promotion("standard"):
        reference = train_linen(optax.rmsprop(lr))
    losses, params = ours
    assert losses[-1] < losses[0], losses
    np.testing.assert_allclose(losses, reference[0], rtol=1e-5)
    chex.assert_trees_all_close(params, reference[1], rtol=1e-5, atol=1e-7)


def test_nnx_optimizer_forwards_value_to_dlopt_plateau():
    def make_tx():
        return dlopt.chain(dlopt.sgd(1e-2), dlopt.reduce_on_plateau(factor=0.5, patience=0))

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, make_tx(), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, value):
        grads = nnx.grad(lambda m: _mse(m(X)))(model)
        optimizer.update(model, grads, value=value)

    values = [2.0, 1.0, 1.0, 1.0]  # improves, then flat: the plateau rule must see value=
    for v in values:
        step(model, optimizer, jnp.float32(v))
    # The same values through the bare transform give the reference scale.
    tx, params = make_tx(), {"w": jnp.zeros(2)}
    state = tx.init(params)
    for v in values:
        _, state = tx.update({"w": jnp.ones(2)}, state, params, value=jnp.float32(v))
    expected = float(state[1].plateau.scale)
    assert expected < 1.0
    assert float(optimizer.opt_state[1].plateau.scale[...]) == expected
