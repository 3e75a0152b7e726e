"""Whole train steps: dlopt's `make_train_step` vs a hand-written optax + Flax jit step.

Models: the seed's MNIST MLP (4 hidden layers of 100 with BatchNorm and dropout, batch 128 of
784 features), a small CNN (two 3x3 convolutions with BatchNorm, 28x28x1 images, batch 64), a
3x1024 MLP (8 leaves, 2.9M params, batch 256 of 784 features: large leaves) and a deep narrow
residual MLP (194 leaves, 47 Dense 64 + LayerNorm blocks, batch 128: the cost per leaf).
Random inputs with MNIST's shapes (no download). Every step uses Adam, donates its state and
returns the loss. Contenders: ``optax`` (hand-written), ``dlopt`` (`make_train_step` and
`TrainState.create` with their defaults: the NaN guard on, the layout chosen by ``flat=None``,
flat where `dlopt.wrappers.fused.prefers_flat` holds), ``dlopt_tree`` and ``dlopt_flat`` (the
same with ``flat=False`` / ``flat=True``) and ``dlopt_no_guard`` (``skip_nonfinite=False``,
like for like with optax).

`accumulation_memory` compares the compiled memory (``.lower().compile().memory_analysis()``)
of ``make_train_step(accumulation_steps=k)`` on a batch of ``k * b`` rows with a step of
``optax.MultiSteps(adam, k)`` on ``b`` rows (its accumulator lives in the optimizer state).
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


class WideMLP(nn.Module):
    """3 x 1024 ReLU layers, then 10 logits (2.9M params in 8 leaves)."""

    @nn.compact
    def __call__(self, x, train: bool):
        del train
        for _ in range(3):
            x = nn.relu(nn.Dense(1024)(x))
        return nn.Dense(10)(x)


class ResidualMLP(nn.Module):
    """Dense 64, 47 blocks ``x + relu(LayerNorm(Dense 64(x)))``, LayerNorm, 10 logits: a deep
    narrow net of 194 small leaves (0.26M params), where per-leaf overhead dominates."""

    @nn.compact
    def __call__(self, x, train: bool):
        del train
        x = nn.Dense(64)(x)
        for _ in range(47):
            x = x + nn.relu(nn.LayerNorm()(nn.Dense(64)(x)))
        return nn.Dense(10)(nn.LayerNorm()(x))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp_4x100_bn_dropout": (MLP, (128, 784)),
    "cnn_small": (CNN, (64, 28, 28, 1)),
    "mlp_3x1024": (WideMLP, (256, 784)),
    "residual_194": (ResidualMLP, (128, 784)),
}


def _batch(shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, shape[0]), jnp.int32)
    return {"x": x, "y": y}


def _cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _apply(model, params, model_state, x, rng, train):
    """``(logits, new model state)``; the model state is ``{}`` for a model without one."""
    logits, new = model.apply(
        {"params": params, **model_state},
        x,
        train=train,
        rngs={"dropout": rng},
        mutable=list(model_state),
    )
    return logits, dict(new)


def _model_state(variables):
    return {k: v for k, v in variables.items() if k != "params"}


def optax_runner(model, variables, batch, tx=None) -> Runner:
    tx = optax.adam(LR) if tx is None else tx

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(carry, batch):
        params, model_state, opt_state, key, t, _ = carry
        rng = jax.random.fold_in(key, t)

        def loss(p):
            logits, new = _apply(model, p, model_state, batch["x"], rng, True)
            return _cross_entropy(logits, batch["y"]), new

        (value, model_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, model_state, opt_state, key, t + 1, value

    params = variables["params"]
    carry = (
        params,
        _model_state(variables),
        tx.init(params),
        jax.random.key(0),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.float32),
    )
    return Runner(step, carry, batch)


def dlopt_loss_fn(model):
    def loss_fn(params, batch, *, model_state, rng, train):
        logits, new = _apply(model, params, model_state, batch["x"], rng, train)
        return _cross_entropy(logits, batch["y"]), {"model_state": new}

    return loss_fn


def dlopt_state(model, variables, tx, flat: bool | None = None) -> TrainState:
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        rng=0,
        model_state=_model_state(variables),
        flat=flat,
    )


def dlopt_runner(model, variables, batch, tx, *, flat: bool | None = None, **flags) -> Runner:
    """dlopt's `make_train_step` with its defaults (NaN guard on, the default layout) unless
    ``flat`` or ``flags`` say."""
    step = make_train_step(dlopt_loss_fn(model), **flags)
    state = dlopt_state(model, variables, tx, flat)
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
            "dlopt": dlopt_runner(model, copy(variables), batch, dlopt.adam(LR)),
            "dlopt_tree": dlopt_runner(model, copy(variables), batch, dlopt.adam(LR), flat=False),
            "dlopt_flat": dlopt_runner(model, copy(variables), batch, dlopt.adam(LR), flat=True),
            "dlopt_no_guard": dlopt_runner(
                model, copy(variables), batch, dlopt.adam(LR), skip_nonfinite=False
            ),
        }
        with jax.numpy_dtype_promotion("standard"):
            results = interleaved(runners, reps=reps)
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
        leaves = len(jax.tree.leaves(variables["params"]))
        rows.append(
            {"model": name, "leaves": leaves, "params": n, "batch": shape, "results": results}
        )
        log(case_line(f"{name:22s}", results, rate=True))
    return rows


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "argument": m.argument_size_in_bytes,
        "output": m.output_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "alias": m.alias_size_in_bytes,
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def accumulation_memory(
    model_name: str = "mlp_3x1024", k: int = 4, *, dtype: Any = jnp.float32
) -> dict[str, Any]:
    """Compiled memory (bytes) of gradient accumulation over ``k`` micro-batches: dlopt's step
    on ``k * b`` rows (accumulator: a float32 temporary) vs an ``optax.MultiSteps(adam, k)``
    step on ``b`` rows (accumulator: in the optimizer state). ``b`` is the model's batch / k;
    ``total = argument + output + temp - alias`` (donated buffers counted once)."""
    make_model, shape = MODELS[model_name]
    model = make_model()
    big, micro = _batch(shape), _batch((shape[0] // k, *shape[1:]))
    variables = model.init(jax.random.key(0), micro["x"], train=False)
    variables = {
        **variables,
        "params": jax.tree.map(lambda p: p.astype(dtype), variables["params"]),
    }
    big = {**big, "x": big["x"].astype(dtype)}
    micro = {**micro, "x": micro["x"].astype(dtype)}
    step = make_train_step(dlopt_loss_fn(model), accumulation_steps=k)
    state = dlopt_state(model, variables, dlopt.adam(LR))
    runner = optax_runner(model, variables, micro, tx=optax.MultiSteps(optax.adam(LR), k))
    with jax.numpy_dtype_promotion("standard"):
        ours = _memory(step.lower(state, big).compile())
        theirs = _memory(runner.step.lower(runner.carry, micro).compile())
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    return {
        "model": model_name,
        "params": n,
        "dtype": jnp.dtype(dtype).name,
        "k": k,
        "batch": shape[0],
        "dlopt": ours,
        "optax_multisteps": theirs,
    }


if __name__ == "__main__":  # python -m benchmarks.train_step [--quick]
    import sys

    quick = "--quick" in sys.argv
    names = ["mlp_3x1024", "residual_194"]
    run(names, reps=5 if quick else 25)
    print("gradient accumulation, compiled memory in MB (total = arg + out + temp - alias):")
    for name in names:
        for dt in (jnp.float32, jnp.bfloat16):
            row = accumulation_memory(name, 4, dtype=dt)
            cells = "  ".join(
                f"{who} total {m['total'] / 1e6:.2f} (temp {m['temp'] / 1e6:.2f}, "
                f"arg {m['argument'] / 1e6:.2f})"
                for who, m in (
                    ("dlopt", row["dlopt"]),
                    ("optax.MultiSteps", row["optax_multisteps"]),
                )
            )
            print(f"  {name:14s} {row['dtype']:8s} k={row['k']}  {cells}")
