"""dlopt.tree / dlopt.tree_utils against optax.tree / optax.tree_utils: the same names and
signatures, and the same values, dtypes and structures on small trees."""

from __future__ import annotations

import warnings

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from support.signatures import parameters, public_names

import dlopt

X = {"a": jnp.array([1.0, -2.0, 3.0]), "b": (jnp.array([[0.5, -0.25]]), jnp.array(4.0))}
Y = {"a": jnp.array([0.5, 1.0, -1.0]), "b": (jnp.array([[2.0, 1.0]]), jnp.array(-1.0))}
Z = jax.tree.map(lambda x: 2 * x, X)
C = {"z": jnp.array([1 + 2j, -3j], jnp.complex64), "r": jnp.array([1.0, 2.0])}
C2 = {"z": jnp.array([2 - 1j, 1j], jnp.complex64), "r": jnp.array([0.5, -1.0])}
BF = {"w": jnp.array([1.0, 2.0, 3.0], jnp.bfloat16), "v": jnp.array([0.5], jnp.bfloat16)}
INT = {"i": jnp.array([1, 2, 3]), "j": jnp.array(4)}
EMPTY = {"e": jnp.zeros((0,)), "a": jnp.array([1.0, -5.0])}
MOMENTS = jax.tree.map(jnp.abs, Y)

# (name, args, kwargs): optax.tree.<name>(*args, **kwargs) is the reference
CASES = [
    ("add", (X, Y), {}),
    ("add", (X, Y, Z), {}),
    ("sub", (X, Y), {}),
    ("mul", (X, Y), {}),
    ("div", (X, Y), {}),
    ("scale", (0.5, X), {}),
    ("add_scale", (X, 0.5, Y), {}),
    ("add_scale", ({"a": None, "b": jnp.ones(2)}, 2.0, {"a": None, "b": jnp.ones(2)}), {}),
    ("vdot", (X, Y), {}),
    ("vdot", (C, C2), {}),
    ("vdot", (INT, INT), {}),
    ("sum", (X,), {}),
    ("sum", (X,), {"associative_reduction": True}),
    ("sum", (INT,), {}),
    ("max", (X,), {}),
    ("min", (EMPTY,), {}),
    ("max", ({},), {}),
    ("size", (X,), {}),
    ("conj", (C,), {}),
    ("real", (C,), {}),
    ("norm", (X,), {}),
    ("norm", (X,), {"squared": True}),
    ("norm", (C,), {}),
    ("norm", (BF,), {}),
    ("norm", (INT,), {}),
    ("norm", (INT,), {"squared": True}),
    ("norm", (X,), {"ord": 1}),
    ("norm", (X,), {"ord": 1, "squared": True}),
    ("norm", (X,), {"ord": "inf"}),
    ("norm", (C,), {"ord": jnp.inf}),
    ("batch_shape", (X, (2, 3)), {}),
    ("zeros_like", (X,), {}),
    ("zeros_like", (X, jnp.bfloat16), {}),
    ("ones_like", (INT,), {}),
    ("ones_like", (X,), {"dtype": jnp.int32}),
    ("full_like", (X, 3.0), {}),
    ("full_like", (BF, 2, jnp.float32), {}),
    ("clip", (X, -1.0, 1.0), {}),
    ("clip", (X,), {"max_value": 0.0}),
    ("where", (True, X, Y), {}),
    ("where", (jnp.array(False), X, Y), {}),
    ("allclose", (X, X), {}),
    ("allclose", (X, Y), {"atol": 10.0}),
    ("allclose", (X, Z), {}),
    ("cast", (X, jnp.bfloat16), {}),
    ("cast", (X, None), {}),
    ("cast_like", (BF, {"w": jnp.ones(3), "v": jnp.ones(1, jnp.float16)}), {}),
    ("dtype", (X,), {}),
    ("dtype", ({"a": jnp.ones(1, jnp.float16), "b": jnp.ones(1)}, "lowest"), {}),
    ("dtype", ({"a": jnp.ones(1, jnp.float16), "b": jnp.ones(1)}, "highest"), {}),
    ("dtype", ({"a": jnp.ones(1, jnp.int32), "b": jnp.ones(1, jnp.uint32)}, "promote"), {}),
    ("dtype", ({},), {}),
    ("update_moment", (X, MOMENTS, 0.9, 2), {}),
    ("update_moment", ({"a": None, "b": jnp.ones(2)}, {"a": None, "b": jnp.ones(2)}, 0.9, 1), {}),
    ("update_infinity_moment", (X, MOMENTS, 0.9, 1e-8), {}),
    ("update_moment_per_elem_norm", (C, jax.tree.map(jnp.abs, C2), 0.99, 2), {}),
    ("update_moment_per_elem_norm", (X, MOMENTS, 0.99, 1), {}),
    ("bias_correction", (X, 0.9, jnp.asarray(3)), {}),
    ("bias_correction", (BF, 0.999, jnp.asarray(1)), {}),
]


def _check_same(ours, theirs, rtol=1e-6):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        if isinstance(b, jnp.dtype | type):
            assert jnp.dtype(a) == jnp.dtype(b)
            continue
        assert jnp.result_type(a) == jnp.result_type(b), (a, b)
        chex.assert_trees_all_close(a, b, rtol=rtol, atol=rtol)


@pytest.mark.parametrize(("name", "args", "kwargs"), CASES, ids=lambda v: str(v)[:24])
def test_values_dtypes_structures_match_optax(name, args, kwargs):
    with jax.numpy_dtype_promotion("standard"):
        theirs = getattr(optax.tree, name)(*args, **kwargs)
        ours = getattr(dlopt.tree, name)(*args, **kwargs)
    rtol = 1e-2 if name == "norm" and args[0] is BF else 1e-6  # optax sums bf16 in bf16
    _check_same(ours, theirs, rtol)


def test_both_modules_list_optax_names_with_optax_signatures():
    assert public_names(dlopt.tree) - {"arith", "casting", "keys", "moments", "state"} == (
        public_names(optax.tree)
    )
    assert {n for n in dir(dlopt.tree_utils) if n.startswith("tree_")} | {"NamedTupleKey"} == {
        n for n in public_names(optax.tree_utils) if n not in {"functools", "typing"}
    }
    for name in public_names(optax.tree):
        assert parameters(getattr(dlopt.tree, name)) == parameters(getattr(optax.tree, name)), name
        # one definition: tree_utils.tree_x is tree.x
        assert getattr(dlopt.tree_utils, f"tree_{name}") is getattr(dlopt.tree, name)


def test_mixed_dtypes_raise_naming_the_leaf_and_unknown_handler_raises():
    tree = {"a": jnp.ones(1, jnp.float16), "b": jnp.ones(1)}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        dlopt.tree.dtype(tree)
    with pytest.raises(ValueError, match="mixed_dtype_handler"):
        dlopt.tree.dtype(tree, "widest")
    with jax.numpy_dtype_promotion("standard"):  # int32/uint32: as optax, whatever x64 gives
        mixed = {"a": jnp.ones(1, jnp.int32), "b": jnp.ones(1, jnp.uint32)}
        assert dlopt.tree.dtype(mixed, "highest") == optax.tree.dtype(mixed, "highest")
    with pytest.raises(ValueError, match="ord"):
        dlopt.tree.norm(X, ord=3)


def test_random_trees_match_optax_and_unwrap_keys():
    key = jax.random.key(1)
    for sampler in (jax.random.normal, jax.random.uniform):
        ours = dlopt.tree.random_like(key, X, sampler)
        _check_same(ours, optax.tree.random_like(key, X, sampler))
    _check_same(
        dlopt.tree.random_like(key, X, dtype=jnp.bfloat16),
        optax.tree.random_like(key, X, dtype=jnp.bfloat16),
    )
    keys = dlopt.tree.split_key_like(key, X)
    chex.assert_trees_all_equal(
        dlopt.tree.unwrap_random_key_data(keys),
        optax.tree.unwrap_random_key_data(optax.tree.split_key_like(key, X)),
    )


def test_deprecated_tree_utils_names_warn_and_compute_the_norms():
    with pytest.warns(DeprecationWarning, match="tree_norm"):
        l1 = dlopt.tree_utils.tree_l1_norm(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert float(l1) == pytest.approx(float(optax.tree_utils.tree_l1_norm(X)))
        assert dlopt.tree_utils.tree_scalar_mul is dlopt.tree.scale
    with pytest.raises(AttributeError):
        dlopt.tree_utils.tree_nonexistent  # noqa: B018


def test_top_level_moment_names_are_the_tree_functions():
    assert dlopt.update_moment is dlopt.tree.update_moment
    assert dlopt.bias_correction is dlopt.tree.bias_correction
    assert dlopt.tree_map_params is dlopt.tree.map_params
    for name in (
        "update_moment",
        "update_infinity_moment",
        "update_moment_per_elem_norm",
        "bias_correction",
        "tree_map_params",
    ):
        assert parameters(getattr(dlopt, name)) == parameters(getattr(optax, name)), name


def test_moments_and_norms_are_jittable_under_strict_promotion():
    step = jax.jit(lambda g, m: dlopt.tree.update_moment(g, m, 0.9, 2))
    chex.assert_trees_all_close(step(X, MOMENTS), optax.tree.update_moment(X, MOMENTS, 0.9, 2))
    assert jax.jit(dlopt.tree.norm)(BF).dtype == jnp.bfloat16
