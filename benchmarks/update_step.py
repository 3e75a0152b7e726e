"""The optimizer update step, dlopt vs optax: ``update + apply_updates``, jitted, donated.

Trees (parameter layouts, filled with small random values):

* ``resnet50``: the 161 leaves of a ResNet-50 (conv kernels, BatchNorm scale/bias, the head),
  25.6M parameters;
* ``transformer12``: a 12-layer pre-LN transformer (width 256, MLP 1024, vocabulary 8192),
  198 leaves, 11.6M parameters (the width is scaled down for CPU; the leaf count is real);
* ``tiny1000``: 1000 per-channel leaves of 256 (scales and biases), 256k parameters;
* ``large``: 4 leaves of ``large_size / 4`` (16M parameters by default; ``--large-size``).

Contenders per optimizer: ``optax``, ``dlopt`` (the plain rule), ``fused`` (`dlopt.fused`,
pytree in and out, packing at the edges every step) and ``fused_flat`` (the plain rule on
params and gradients held flat as `dlopt.core.flat.Buffers`, a flat `TrainState`'s layout,
nothing re-packed per step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dlopt
from benchmarks.report import case_line
from benchmarks.timing import Runner, interleaved
from dlopt.core.flat import flatten

LR = 1e-3

# name -> (dlopt builder, optax builder); both take the learning rate.
OPTIMIZERS: dict[str, tuple[Callable[[float], Any], Callable[[float], Any]]] = {
    "sgd": (lambda lr: dlopt.sgd(lr), lambda lr: optax.sgd(lr)),
    "momentum": (lambda lr: dlopt.sgd(lr, 0.9), lambda lr: optax.sgd(lr, 0.9)),
    "nesterov": (
        lambda lr: dlopt.sgd(lr, 0.9, nesterov=True),
        lambda lr: optax.sgd(lr, 0.9, nesterov=True),
    ),
    "adagrad": (lambda lr: dlopt.adagrad(lr), lambda lr: optax.adagrad(lr)),
    "rmsprop": (lambda lr: dlopt.rmsprop(lr), lambda lr: optax.rmsprop(lr)),
    "adadelta": (lambda lr: dlopt.adadelta(lr), lambda lr: optax.adadelta(lr)),
    "adam": (lambda lr: dlopt.adam(lr), lambda lr: optax.adam(lr)),
    "adamw": (lambda lr: dlopt.adamw(lr), lambda lr: optax.adamw(lr)),
    "nadam": (lambda lr: dlopt.nadam(lr), lambda lr: optax.nadam(lr)),
    "adamax": (lambda lr: dlopt.adamax(lr), lambda lr: optax.adamax(lr)),
    "lion": (lambda lr: dlopt.lion(lr), lambda lr: optax.lion(lr)),
}


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    """The parameter shapes of a ResNet-50 (bottleneck blocks [3, 4, 6, 3]), 161 leaves."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(name, k, cin, cout):
        shapes[f"{name}/kernel"] = (k, k, cin, cout)
        shapes[f"{name}/bn/scale"] = (cout,)
        shapes[f"{name}/bn/bias"] = (cout,)

    conv_bn("stem", 7, 3, 64)
    cin = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)):
        for b in range(blocks):
            name = f"stage{stage}/block{b}"
            conv_bn(f"{name}/conv1", 1, cin, width)
            conv_bn(f"{name}/conv2", 3, width, width)
            conv_bn(f"{name}/conv3", 1, width, 4 * width)
            if b == 0:
                conv_bn(f"{name}/proj", 1, cin, 4 * width)
            cin = 4 * width
    shapes["head/kernel"] = (2048, 1000)
    shapes["head/bias"] = (1000,)
    return shapes


def transformer_shapes(layers=12, width=256, mlp=1024, vocab=8192, seq=512):
    """A pre-LN transformer's parameter shapes: embeddings, per layer attention and MLP."""
    shapes = {"embed": (vocab, width), "pos_embed": (seq, width)}
    for i in range(layers):
        for norm in ("ln1", "ln2"):
            shapes[f"layer{i:02d}/{norm}/scale"] = (width,)
            shapes[f"layer{i:02d}/{norm}/bias"] = (width,)
        for proj in ("q", "k", "v", "o"):
            shapes[f"layer{i:02d}/attn/{proj}/kernel"] = (width, width)
            shapes[f"layer{i:02d}/attn/{proj}/bias"] = (width,)
        shapes[f"layer{i:02d}/mlp/up/kernel"] = (width, mlp)
        shapes[f"layer{i:02d}/mlp/up/bias"] = (mlp,)
        shapes[f"layer{i:02d}/mlp/down/kernel"] = (mlp, width)
        shapes[f"layer{i:02d}/mlp/down/bias"] = (width,)
    shapes["final_ln/scale"] = (width,)
    shapes["final_ln/bias"] = (width,)
    return shapes


def tiny_shapes(leaves=1000, size=256):
    return {f"channel{i:04d}/{'scale' if i % 2 else 'bias'}": (size,) for i in range(leaves)}


def large_shapes(total=16 * 2**20):
    return {f"w{i}": (total // 4,) for i in range(4)}


def tree_shapes(name: str, large_size: int) -> dict[str, tuple[int, ...]]:
    if name == "resnet50":
        return resnet50_shapes()
    if name == "transformer12":
        return transformer_shapes()
    if name.startswith("tiny"):
        return tiny_shapes(int(name.removeprefix("tiny")))
    if name == "large":
        return large_shapes(large_size)
    raise ValueError(f"unknown tree {name!r}")


def make_tree(shapes: dict[str, tuple[int, ...]], seed: int, scale: float) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        k: jnp.asarray(scale * rng.standard_normal(s, dtype=np.float32)) for k, s in shapes.items()
    }


def num_params(tree: Any) -> int:
    return sum(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(tree))


def state_bytes(tx: Any, params: Any) -> int:
    """Bytes of ``tx``'s state for ``params`` (from shapes only, nothing allocated)."""
    state = jax.eval_shape(tx.init, params)
    return sum(int(np.prod(s.shape)) * jnp.dtype(s.dtype).itemsize for s in jax.tree.leaves(state))


def step_fn(tx: Any, apply_updates: Callable[[Any, Any], Any]):
    """``((params, state), grads) -> (params, state)``, jitted with the carry donated."""

    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0,))


def copy(tree):
    return jax.tree.map(jnp.array, tree)


def runners_for(opt: str, params: Any, grads: Any) -> dict[str, Runner]:
    make_dlopt, make_optax = OPTIMIZERS[opt]
    tx_optax, tx_dlopt, tx_fused = make_optax(LR), make_dlopt(LR), dlopt.fused(make_dlopt(LR))
    flat_params, flat_grads = flatten(params), flatten(grads)
    with jax.numpy_dtype_promotion("standard"):
        optax_state = tx_optax.init(params)
    return {
        "optax": Runner(step_fn(tx_optax, optax.apply_updates), (copy(params), optax_state), grads),
        "dlopt": Runner(
            step_fn(tx_dlopt, dlopt.apply_updates), (copy(params), tx_dlopt.init(params)), grads
        ),
        "fused": Runner(
            step_fn(tx_fused, dlopt.apply_updates), (copy(params), tx_fused.init(params)), grads
        ),
        "fused_flat": Runner(  # the plain rule over the flat buffers (a flat TrainState's)
            step_fn(tx_dlopt, dlopt.apply_updates),
            (flat_params, tx_dlopt.init(flat_params)),
            flat_grads,
        ),
    }


def run(
    trees: list[str],
    optimizers: list[str],
    *,
    reps: int,
    large_size: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Times every optimizer on every tree; one row per (tree, optimizer)."""
    rows = []
    for tree in trees:
        shapes = tree_shapes(tree, large_size)
        params, grads = make_tree(shapes, 0, 0.1), make_tree(shapes, 1, 0.01)
        n = num_params(params)
        for opt in optimizers:
            with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
                results = interleaved(runners_for(opt, params, grads), reps=reps)
            make_dlopt, make_optax = OPTIMIZERS[opt]
            row = {
                "tree": tree,
                "optimizer": opt,
                "leaves": len(shapes),
                "params": n,
                "state_bytes": {
                    "optax": state_bytes(make_optax(LR), params),
                    "dlopt": state_bytes(make_dlopt(LR), params),
                },
                "results": results,
            }
            rows.append(row)
            log(case_line(f"{tree:13s} {opt:9s}", results))
        del params, grads
    return rows
