"""Compile time of ``jax.jit(tx.update).lower(...).compile()``: distributed_shampoo vs adamw.

On the update-step benchmark's trees (benchmarks/update_step.py: ``resnet50``,
``transformer12``), abstract params (nothing allocated), the two contenders interleaved
``--repeats`` times; prints each median and the ratio. The issue 22 target is <= 3x AdamW.

    python -m benchmarks.shampoo_compile --trees resnet50 transformer12 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import dlopt
from benchmarks.update_step import tree_shapes

CONTENDERS = {
    "adamw": lambda: dlopt.adamw(1e-3, weight_decay=1e-4),
    "distributed_shampoo": lambda: dlopt.distributed_shampoo(1e-3),
    "distributed_shampoo_k10": lambda: dlopt.distributed_shampoo(
        1e-3, preconditioning_compute_steps=10
    ),
}


def compile_seconds(tx, params) -> float:
    state = jax.eval_shape(tx.init, params)
    start = time.perf_counter()
    jax.jit(tx.update).lower(params, state, params).compile()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", default=["resnet50", "transformer12"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS))
    args = parser.parse_args(argv)
    for name in args.trees:
        shapes = tree_shapes(name, 0)
        params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
        times: dict[str, list[float]] = {c: [] for c in args.contenders}
        for _ in range(args.repeats):
            for contender in args.contenders:
                jax.clear_caches()
                times[contender].append(compile_seconds(CONTENDERS[contender](), params))
        base = statistics.median(times["adamw"])
        for contender, values in times.items():
            median = statistics.median(values)
            print(f"{name:14s} {contender:24s} median {median:7.2f} s  ratio {median / base:5.2f}")


if __name__ == "__main__":
    main()
