"""A tiny Flax model with BatchNorm and dropout, its data and compiled steps, shared by the
checkpoint, backup and averaging tests.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import dlopt
from dlopt.training import TrainState, make_eval_step, make_train_step


class Net(nn.Module):
    """Dense 8 -> BatchNorm -> relu -> dropout -> Dense 1 (a logit)."""

    @nn.compact
    def __call__(self, x, *, train: bool):
        x = nn.Dense(8)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
        return nn.Dense(1)(x)[:, 0]


def loss_fn(params, batch, *, model_state, rng, train):
    variables = {"params": params, **model_state}
    if train:
        logits, updates = Net().apply(
            variables, batch["x"], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
    else:
        logits, updates = Net().apply(variables, batch["x"], train=False), model_state
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, batch["y"]))
    accuracy = jnp.mean(((logits > 0) == (batch["y"] > 0.5)).astype(jnp.float32))
    return loss, {"model_state": dict(updates), "metrics": {"accuracy": accuracy}}


def make_tx():
    """Adam on a decaying schedule (a schedule count) behind a plateau scale (plateau state)."""
    schedule = dlopt.exponential_decay(0.05, transition_steps=4, decay_rate=0.7)
    return dlopt.chain(
        dlopt.adam(schedule), dlopt.reduce_on_plateau(factor=0.5, patience=1, accumulation_size=2)
    )


def make_state(seed: int = 0) -> TrainState:
    variables = Net().init(jax.random.key(seed), jnp.ones((2, 3)), train=False)
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    return TrainState.create(
        apply_fn=Net().apply, params=params, tx=make_tx(), rng=seed + 1, model_state=model_state
    )


def make_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) > 0).astype(np.float32)

    def train(epoch):  # reshuffled every epoch, deterministic in the epoch number
        order = np.random.default_rng(100 + epoch).permutation(40)
        return [{"x": x[order[i : i + 8]], "y": y[order[i : i + 8]]} for i in range(0, 40, 8)]

    return train, [{"x": x[40:], "y": y[40:]}]


TRAIN_STEP = make_train_step(loss_fn, loss_as_value=True)  # built once: compiled once
EVAL_STEP = make_eval_step(loss_fn)
