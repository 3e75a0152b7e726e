"""The top-level numerics and linear-algebra names against optax's: safe norms and counters,
global_norm, power_iteration, matrix_inverse_pth_root, nnls."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from support.signatures import parameters

import dlopt

NAMES = [
    "safe_norm", "safe_root_mean_squares", "safe_increment", "safe_int32_increment",
    "power_iteration", "matrix_inverse_pth_root", "nnls", "multi_normal", "microbatch",
]  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_signatures_are_optax(name):
    assert parameters(getattr(dlopt, name)) == parameters(getattr(optax, name))


def test_global_norm_keeps_optax_parameter_and_float32_accumulation():
    assert [p[0] for p in parameters(dlopt.global_norm)] == ["updates"]
    tree = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}
    with pytest.warns(DeprecationWarning):
        expected = optax.global_norm(tree)
    chex.assert_trees_all_close(dlopt.global_norm(tree), expected)


@pytest.mark.parametrize("x", [jnp.zeros(3), jnp.array([3.0, -4.0, 0.0])], ids=["zero", "x"])
def test_safe_norms_and_their_gradients_match_optax(x):
    for ours, theirs, args in (
        (dlopt.safe_norm, optax.safe_norm, (1e-3,)),
        (dlopt.safe_norm, optax.safe_norm, (0.5, 1)),
        (dlopt.safe_root_mean_squares, optax.safe_root_mean_squares, (1e-3,)),
    ):
        got = jax.value_and_grad(lambda v, f=ours, a=args: f(v, *a))(x)
        expected = jax.value_and_grad(lambda v, f=theirs, a=args: f(v, *a))(x)
        chex.assert_trees_all_close(got, expected)
        chex.assert_tree_all_finite(got)


def test_safe_increment_saturates_ints_and_floats_and_rejects_bools():
    for count in (jnp.asarray(1, jnp.int32), jnp.asarray(2**31 - 1, jnp.int32),
                  jnp.asarray(jnp.finfo(jnp.float32).max)):  # fmt: skip
        chex.assert_trees_all_equal(dlopt.safe_increment(count), optax.safe_increment(count))
    with pytest.raises(ValueError, match="count"):
        dlopt.safe_increment(jnp.asarray(True))


def test_power_iteration_and_inverse_root_match_optax():
    m = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    psd = jnp.asarray(m @ m.T + np.eye(4, dtype=np.float32))
    chex.assert_trees_all_close(
        dlopt.power_iteration(psd), optax.power_iteration(psd), rtol=1e-4, atol=1e-5
    )
    v0 = {"a": jnp.ones(2), "b": jnp.ones(2)}

    def mvp(v):
        return {"a": 2.0 * v["a"], "b": 5.0 * v["b"]}

    eig, _ = dlopt.power_iteration(mvp, v0=v0)
    assert float(eig) == pytest.approx(5.0, rel=1e-4)
    with pytest.raises(ValueError, match="v0"):
        dlopt.power_iteration(mvp)
    root, _ = dlopt.matrix_inverse_pth_root(psd, 2)
    chex.assert_trees_all_close(root, optax.matrix_inverse_pth_root(psd, 2)[0], rtol=1e-4)


def test_nnls_matches_optax_and_is_non_negative():
    a = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32))
    b = jnp.asarray(np.random.default_rng(2).normal(size=(6, 2)).astype(np.float32))
    x = dlopt.nnls(a, b, 200)
    chex.assert_trees_all_close(x, optax.nnls(a, b, 200), rtol=1e-5, atol=1e-6)
    assert bool(jnp.all(x >= 0))
