"""dlopt.microbatching against optax.microbatching: signatures, and the same results for each
accumulation, for micro_vmap and for micro_grad."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import optax
import pytest
from support.signatures import parameters, public_names

import dlopt

X = jnp.arange(24.0).reshape(8, 3) / 10


def fun(x, w):
    return {"sum": jnp.sum(x * w), "rows": x * w, "mean": jnp.mean(x, axis=0)}


def test_names_and_signatures_are_optax():
    ours, theirs = dlopt.microbatching, optax.microbatching
    assert public_names(theirs) <= public_names(ours)
    for name in ("microbatch", "micro_vmap", "micro_grad", "reshape_batch_axis"):
        assert parameters(getattr(ours, name)) == parameters(getattr(theirs, name)), name
    assert [m.name for m in ours.AccumulationType] == [m.name for m in theirs.AccumulationType]
    assert dlopt.microbatch is ours.microbatch


@pytest.mark.parametrize("kind", ["SUM", "MEAN", "RUNNING_MEAN", "CONCAT"])
def test_microbatch_matches_optax(kind):
    outs = []
    for lib in (dlopt, optax):
        acc = getattr(lib.microbatching.AccumulationType, kind)
        strategy = {"sum": acc, "rows": lib.microbatching.AccumulationType.CONCAT, "mean": acc}
        outs.append(lib.microbatching.microbatch(fun, 0, 2, strategy)(X, 2.0))
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-6)
    chex.assert_trees_all_close(outs[0]["rows"], X * 2.0)  # CONCAT gives back the batch order


def test_micro_vmap_and_micro_grad_match_optax():
    def loss(w, x, y):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    w, x, y = jnp.array([0.5, -1.0, 0.2]), X, jnp.arange(8.0)
    outs = []
    for lib in (dlopt, optax):
        mb = lib.microbatching
        vm = mb.micro_vmap(lambda r: r**2, microbatch_size=4)(x)
        grads, aux = mb.micro_grad(
            loss,
            batch_argnums=(1, 2),
            microbatch_size=4,
            accumulator=mb.AccumulationType.MEAN,
            transform_fn=lambda g: (g, g**2),
            metrics_fn=jnp.linalg.norm,
        )(w, x, y)
        outs.append((vm, grads, aux.values, aux.metrics))
    chex.assert_trees_all_close(outs[0], outs[1], rtol=1e-5)
    chex.assert_trees_all_close(outs[0][0], x**2)


def test_bad_batch_sizes_raise():
    with pytest.raises(ValueError, match="divisible"):
        dlopt.microbatch(fun, 0, 3)(X, 1.0)
    with pytest.raises(ValueError, match="floating"):
        mean = dlopt.microbatching.AccumulationType.MEAN
        dlopt.microbatch(lambda x: x, 0, 2, mean)(jnp.arange(4))
