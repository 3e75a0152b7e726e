"""Speed of `dlopt.quantized` against float32 Adam: interleaved, ratio of medians.

Two timings on the update benchmark's ``large`` tree (4 leaves, 4M parameters): the donated
``update + apply_updates`` step, and a train step of a small model over the same params
(gradients computed inside the step). Run ``python -m benchmarks.quantized_speed [--reps N]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import dlopt
from benchmarks import update_step
from benchmarks.timing import Runner, interleaved


def variants() -> dict:
    return {
        "float32": dlopt.adam(1e-3),
        "8-bit": dlopt.quantized(dlopt.adam(1e-3)),
        "4-bit": dlopt.quantized(dlopt.adam(1e-3), bits=4),
    }


def train_step(tx):
    def step(carry, x):
        params, state = carry

        def loss(p):
            return sum(jnp.sum(jnp.tanh(x @ w.reshape(1024, -1)) ** 2) for w in p.values())

        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return dlopt.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0,))


def main(reps: int = 9) -> None:
    shapes = update_step.large_shapes(4 * 2**20)
    params = update_step.make_tree(shapes, 0, 0.1)
    grads = update_step.make_tree(shapes, 1, 0.01)
    x = jax.random.normal(jax.random.key(0), (32, 1024))
    for label, make_step, arg in (
        ("update", lambda tx: update_step.step_fn(tx, dlopt.apply_updates), grads),
        ("train step", train_step, x),
    ):
        runners = {
            name: Runner(make_step(tx), (update_step.copy(params), tx.init(params)), arg)
            for name, tx in variants().items()
        }
        for name, row in interleaved(runners, reps=reps, warmup=2).items():
            print(f"{label:10s} {name:8s} {row['median_s'] * 1e3:8.1f} ms  x{row['ratio']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    main(parser.parse_args().reps)
