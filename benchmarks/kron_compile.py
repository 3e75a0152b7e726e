"""Compile time of `dlopt.kron`'s update against `dlopt.adamw`'s, on update_step.py's trees.

``python -m benchmarks.kron_compile [--reps 3] [--trees resnet50 transformer12]``: for each
tree, ``jax.jit(tx.update).lower(grads, state, params).compile()`` timed for AdamW and for
Kron (defaults, and with ``merge_small_dims`` + ``partition_grads_into_blocks``), taking
turns (a fresh transform each time, so nothing is cached); prints the median seconds, the
median per-round ratio to AdamW, the leaf count and the number of stacked block groups.
The state is abstract (``jax.eval_shape``): nothing is allocated.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import dlopt
from benchmarks.update_step import make_tree, tree_shapes
from dlopt.optimizers import kron_layout

CONTENDERS = {
    "adamw": lambda: dlopt.adamw(1e-3),
    "kron": lambda: dlopt.kron(1e-3),
    "kron_merge_blocks": lambda: dlopt.kron(1e-3, merge_small_dims=True,
                                            partition_grads_into_blocks=True),
}  # fmt: skip


def compile_seconds(make, params) -> float:
    tx = make()
    state = jax.eval_shape(tx.init, params)
    start = time.perf_counter()
    jax.jit(tx.update).lower(params, state, params).compile()
    return time.perf_counter() - start


def groups(params, **kwargs) -> int:
    leaves = jax.tree.leaves(params)
    args = {"max_size": 8192, "min_ndim": 2, "memory_save_mode": None, "merge": False,
            "target": 2048, "block_size": 256, "partition": False} | kwargs  # fmt: skip
    plans = [kron_layout.plan_leaf(x.shape, scanned=False, **args) for x in leaves]
    return len(kron_layout.Groups.of(plans, [x.dtype for x in leaves]).members)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kron_compile")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--trees", nargs="+", default=["resnet50", "transformer12"])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    args = parser.parse_args(argv)
    contenders = {name: CONTENDERS[name] for name in ["adamw", *args.contenders]}
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
    for tree in args.trees:
        params = make_tree(tree_shapes(tree, 0), 0, 0.1)
        times = {name: [] for name in contenders}
        for _ in range(args.reps):
            for name, make in contenders.items():
                times[name].append(compile_seconds(make, params))
        n_groups = (groups(params), groups(params, merge=True, partition=True))
        print(f"{tree}: {len(jax.tree.leaves(params))} leaves, kron block groups "
              f"{n_groups[0]} (defaults) / {n_groups[1]} (merge + blocks)")  # fmt: skip
        for name, ts in times.items():
            ratio = statistics.median(t / a for t, a in zip(ts, times["adamw"], strict=True))
            print(f"  {name:18s} compile {statistics.median(ts):6.2f} s  x{ratio:.2f} adamw")


if __name__ == "__main__":
    main()
