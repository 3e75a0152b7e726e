"""Clipping: parity with optax and torch, the clipping guarantees, zero gradients, bad input.

One `CLIPPERS` table drives the optax parity, conformance, zero-gradient and dtype tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from helpers import random_tree
from hypothesis import given
from hypothesis import strategies as st

import dlopt
from dlopt.testing import check_transformation
from dlopt.transforms.clipping import unitwise_norm

# Leaves of every rank unitwise_norm handles: scalar, vector, dense, multi-head, conv, conv3d.
SHAPES = {
    "scalar": (),
    "bias": (4,),
    "dense": (5, 3),
    "heads": (4, 2, 3),
    "conv": (3, 3, 2, 4),
    "conv3d": (2, 2, 2, 2, 3),
}


class Clipper(NamedTuple):
    name: str
    build: Callable[[Any], Any]  # library (dlopt or optax) -> transform
    needs_params: bool = False


CLIPPERS = [
    Clipper("clip", lambda lib: lib.clip(0.5)),
    Clipper("clip_by_global_norm", lambda lib: lib.clip_by_global_norm(1.0)),
    Clipper("clip_by_block_rms", lambda lib: lib.clip_by_block_rms(0.3)),
    Clipper("adaptive_grad_clip", lambda lib: lib.adaptive_grad_clip(0.05), needs_params=True),
]
IDS = [c.name for c in CLIPPERS]


def _run(tx, grads, params):
    return tx.update(grads, tx.init(params), params)[0]


@pytest.mark.parametrize("clipper", CLIPPERS, ids=IDS)
@pytest.mark.parametrize("scale", [0.01, 3.0])  # below and above the thresholds
def test_matches_optax(clipper, scale):
    params = random_tree(0, SHAPES)
    grads = random_tree(1, SHAPES, scale=scale)
    ours = _run(clipper.build(dlopt), grads, params)
    with jax.numpy_dtype_promotion("standard"):
        theirs = _run(clipper.build(optax), grads, params)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_clipping_engages_in_the_parity_cases():
    """The parity test above would be vacuous if nothing were clipped at scale=3."""
    params, grads = random_tree(0, SHAPES), random_tree(1, SHAPES, scale=3.0)
    for clipper in CLIPPERS:
        clipped = _run(clipper.build(dlopt), grads, params)
        changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), clipped, grads))
        assert any(changed), clipper.name


@pytest.mark.parametrize("clipper", CLIPPERS, ids=IDS)
def test_conformance(clipper):
    check_transformation(clipper.build(dlopt), random_examples=2, check_pmap=False)


@pytest.mark.parametrize("clipper", CLIPPERS, ids=IDS)
def test_zero_gradients_stay_zero_and_finite(clipper):
    params = random_tree(0, SHAPES)
    zeros = jax.tree.map(jnp.zeros_like, params)
    out = _run(clipper.build(dlopt), zeros, params)
    chex.assert_trees_all_equal(out, zeros)


@pytest.mark.parametrize(
    "tx",
    [dlopt.clip_by_global_norm(0.0), dlopt.clip(0.0), dlopt.adaptive_grad_clip(0.0, eps=0.0)],
    ids=["global_norm", "value", "agc"],
)
def test_zero_threshold_zero_gradients_are_finite(tx):
    """``0 / 0`` never happens: zero thresholds on zero gradients (and zero params) give 0."""
    zeros = jax.tree.map(jnp.zeros_like, random_tree(0, SHAPES))
    out = _run(tx, zeros, zeros)
    chex.assert_tree_all_finite(out)
    chex.assert_trees_all_equal(out, zeros)


@pytest.mark.parametrize("clipper", CLIPPERS, ids=IDS)
def test_bf16_updates_stay_bf16(clipper):
    params = random_tree(0, SHAPES, dtype=jnp.bfloat16)
    grads = random_tree(1, SHAPES, dtype=jnp.bfloat16, scale=3.0)
    out = _run(clipper.build(dlopt), grads, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    reference = _run(clipper.build(dlopt), *(jax.tree.map(lambda x: x.astype(jnp.float32), t)
                                             for t in (grads, params)))  # fmt: skip
    chex.assert_trees_all_close(jax.tree.map(lambda x: x.astype(jnp.float32), out), reference,
                                rtol=1e-2, atol=1e-2)  # fmt: skip


# ---------------------------------------------------------------- global norm guarantees

_global_clip = jax.jit(lambda g, c: dlopt.clip_by_global_norm(c).update(g, ())[0])


@given(scale=st.floats(1e-3, 1e3), max_norm=st.floats(0.1, 10.0), seed=st.integers(0, 1000))
def test_global_norm_bounded_direction_kept(scale, max_norm, seed):
    grads = random_tree(seed, SHAPES, scale=scale)
    clipped = _global_clip(grads, max_norm)
    norm, clipped_norm = dlopt.numerics.global_norm(grads), dlopt.numerics.global_norm(clipped)
    assert float(clipped_norm) <= max_norm * (1 + 1e-5)
    # Direction kept: clipped == factor * grads with one factor in (0, 1] for all leaves.
    factor = float(clipped_norm / norm)
    assert 0 < factor <= 1 + 1e-6
    chex.assert_trees_all_close(
        clipped, jax.tree.map(lambda g: g * factor, grads), rtol=1e-5, atol=1e-6 * scale
    )
    if float(norm) < max_norm:  # a no-op below the threshold, bit for bit
        chex.assert_trees_all_equal(clipped, grads)
    else:
        np.testing.assert_allclose(float(clipped_norm), max_norm, rtol=1e-5)


# ---------------------------------------------------------------------- torch parity


def _torch_grads(grads):
    tensors = []
    for g in jax.tree.leaves(grads):
        p = torch.nn.Parameter(torch.zeros(np.shape(g)))
        p.grad = torch.tensor(np.asarray(g))
        tensors.append(p)
    return tensors


@pytest.mark.parametrize("scale", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("max_norm", [0.5, 2.0])
def test_global_norm_matches_torch(scale, max_norm):
    grads = random_tree(2, SHAPES, scale=scale)
    tensors = _torch_grads(grads)
    torch_norm = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    ours = jax.tree.leaves(_global_clip(grads, max_norm))
    np.testing.assert_allclose(
        float(dlopt.numerics.global_norm(grads)), float(torch_norm), rtol=1e-6
    )
    # torch divides by (norm + 1e-6): a relative difference of at most 1e-6 / max_norm.
    for a, t in zip(ours, tensors, strict=True):
        np.testing.assert_allclose(np.asarray(a), t.grad.numpy(), rtol=3e-6, atol=1e-7)


@pytest.mark.parametrize("clip_value", [0.0, 0.3, 5.0])
def test_clip_matches_torch_clip_grad_value(clip_value):
    grads = random_tree(3, SHAPES, scale=2.0)
    tensors = _torch_grads(grads)
    torch.nn.utils.clip_grad_value_(tensors, clip_value)
    ours = jax.tree.leaves(_run(dlopt.clip(clip_value), grads, None))
    for a, t in zip(ours, tensors, strict=True):
        np.testing.assert_array_equal(np.asarray(a), t.grad.numpy())


# --------------------------------------------------------------- block rms and AGC


def test_block_rms_is_per_leaf():
    grads = {"big": jnp.full((4,), 10.0), "small": jnp.full((2, 2), 0.1)}
    out = _run(dlopt.clip_by_block_rms(1.0), grads, None)
    chex.assert_trees_all_close(out["big"], jnp.ones(4))  # rms 10 -> rms 1
    chex.assert_trees_all_equal(out["small"], grads["small"])  # untouched by its neighbour


def _np_unit_norms(x, axes):
    return np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True))


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((), None), ((4,), None), ((5, 3), 0), ((4, 2, 3), 0), ((3, 3, 2, 4), (0, 1, 2)),
     ((2, 2, 2, 2, 3), (0, 1, 2, 3))],
)  # fmt: skip
def test_unitwise_norm_reduces_fan_in_axes(shape, axes):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = np.broadcast_to(_np_unit_norms(x, axes), shape)
    np.testing.assert_allclose(unitwise_norm(jnp.asarray(x)), expected, rtol=1e-6)


def test_agc_bounds_each_unit():
    """After AGC every unit's update norm is <= clipping * max(|w_unit|, eps)."""
    params = random_tree(4, SHAPES)
    params["bias"] = jnp.zeros(4)  # zero-initialised: the eps floor keeps it from freezing
    grads = random_tree(5, SHAPES, scale=10.0)
    clipping, eps = 0.02, 1e-3
    out = _run(dlopt.adaptive_grad_clip(clipping, eps), grads, params)
    for u, p in zip(jax.tree.leaves(out), jax.tree.leaves(params), strict=True):
        bound = clipping * np.maximum(np.asarray(unitwise_norm(p)), eps)
        assert np.all(np.asarray(unitwise_norm(u)) <= bound * (1 + 1e-5))
    assert float(jnp.max(jnp.abs(out["bias"]))) > 0


def test_agc_explicit_axis():
    params = {"w": jnp.ones((2, 6))}
    grads = {"w": jnp.concatenate([jnp.full((1, 6), 100.0), jnp.full((1, 6), 1e-3)])}
    out = _run(dlopt.adaptive_grad_clip(0.1, axis=1), grads, params)["w"]  # rows are units
    np.testing.assert_allclose(jnp.linalg.norm(out[0]), 0.1 * np.sqrt(6), rtol=1e-5)
    chex.assert_trees_all_equal(out[1], grads["w"][1])


def test_agc_needs_params():
    tx = dlopt.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.ones(2)}, tx.init(None))


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda: dlopt.clip(-1.0), "max_delta"),
        (lambda: dlopt.clip_by_global_norm(float("nan")), "max_norm"),
        (lambda: dlopt.clip_by_block_rms(0.0), "threshold"),
        (lambda: dlopt.adaptive_grad_clip(-0.1), "clipping"),
        (lambda: dlopt.adaptive_grad_clip(0.1, eps=-1.0), "eps"),
    ],
)
def test_bad_hyperparameters_name_themselves(make, arg):
    with pytest.raises(ValueError, match=f"{arg}="):
        make()


def test_clip_inside_chain_with_traced_threshold():
    """Thresholds may be traced (vmapped sweeps): one compile, one result per threshold."""
    grads = {"w": jnp.array([3.0, 4.0])}
    sweep = jax.vmap(lambda c: dlopt.chain(dlopt.clip_by_global_norm(c)).update(grads, ((),))[0])
    out = sweep(jnp.array([1.0, 10.0]))["w"]
    np.testing.assert_allclose(out, [[0.6, 0.8], [3.0, 4.0]], rtol=1e-6)
