"""Whole train steps: dlopt's `make_train_step` vs a hand-written optax + Flax jit step.

Models: the seed's MNIST MLP (4 hidden layers of 100 with BatchNorm and dropout, batch 128 of
784 features) and a small CNN (two 3x3 convolutions with BatchNorm, 28x28x1 images, batch 64).
Random inputs with MNIST's shapes (no download). Both steps use Adam, donate their state and
return the loss. Contenders: ``optax`` (hand-written), ``dlopt`` (``skip_nonfinite=False``,
like for like), ``dlopt_guarded`` (the default step, which also skips non-finite updates) and
``dlopt_fused`` (``dlopt.fused(adam)``, no guard).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import dlopt
from benchmarks.report import case_line
from benchmarks.timing import Runner, interleaved
from dlopt.training import TrainState, make_train_step

LR = 1e-3


class MLP(nn.Module):
    """4 x 100 ReLU layers, each with BatchNorm and dropout 0.2, then 10 logits."""

    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(4):
            x = nn.Dense(100)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
            x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(10)(x)


class CNN(nn.Module):
    """conv 32 - BN - pool - conv 64 - BN - pool - dense 128 - dropout - 10 logits."""

    @nn.compact
    def __call__(self, x, train: bool):
        for features in (32, 64):
            x = nn.Conv(features, (3, 3))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
        x = nn.Dropout(0.2, deterministic=not train)(x)
        return nn.Dense(10)(x)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp_4x100_bn_dropout": (MLP, (128, 784)),
    "cnn_small": (CNN, (64, 28, 28, 1)),
}


def _batch(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)
    return {"x": x, "y": y}


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def optax_runner(model, variables, batch) -> Runner:
    tx = optax.adam(LR)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(carry, batch):
        params, batch_stats, opt_state, key, t, _ = carry
        rng = jax.random.fold_in(key, t)

        def loss(p):
            logits, new = model.apply(
                {"params": p, "batch_stats": batch_stats},
                batch["x"],
                train=True,
                rngs={"dropout": rng},
                mutable=["batch_stats"],
            )
            return _cross_entropy(logits, batch["y"]), new["batch_stats"]

        (value, batch_stats), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, batch_stats, opt_state, key, t + 1, value

    params = variables["params"]
    carry = (
        params,
        variables["batch_stats"],
        tx.init(params),
        jax.random.key(0),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.float32),
    )
    return Runner(step, carry, batch)


def dlopt_runner(model, variables, batch, tx, skip_nonfinite: bool) -> Runner:
    def loss_fn(params, batch, *, model_state, rng, train):
        logits, new = model.apply(
            {"params": params, **model_state},
            batch["x"],
            train=train,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        return _cross_entropy(logits, batch["y"]), {"model_state": new}

    step = make_train_step(loss_fn, skip_nonfinite=skip_nonfinite)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        rng=0,
        model_state={"batch_stats": variables["batch_stats"]},
    )
    return Runner(lambda carry, b: step(carry[0], b), (state, None), batch)


def run(
    models: list[str], *, reps: int, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        make_model, shape = MODELS[name]
        model, batch = make_model(), _batch(shape)
        variables = model.init(jax.random.key(0), batch["x"], train=False)
        copy = lambda v: jax.tree.map(jnp.array, v)  # noqa: E731  (each runner donates its own)
        runners = {
            "optax": optax_runner(model, copy(variables), batch),
            "dlopt": dlopt_runner(model, copy(variables), batch, dlopt.adam(LR), False),
            "dlopt_guarded": dlopt_runner(model, copy(variables), batch, dlopt.adam(LR), True),
            "dlopt_fused": dlopt_runner(
                model, copy(variables), batch, dlopt.fused(dlopt.adam(LR)), False
            ),
        }
        with jax.numpy_dtype_promotion("standard"):
            results = interleaved(runners, reps=reps)
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
        rows.append({"model": name, "params": n, "batch": shape, "results": results})
        log(case_line(f"{name:22s}", results, rate=True))
    return rows
