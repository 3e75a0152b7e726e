"""The contract (dlopt/base.py) and the pytree helpers it stands on (dlopt/tree.py)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_tree
from hypothesis import given
from hypothesis import strategies as st

import dlopt
from dlopt.core import numerics
from dlopt.core import tree as tree_lib
from dlopt.core.base import EmptyState, takes_extra_args

PARAMS = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": [jnp.array([0.5, -0.5]), None]}
GRADS = {"w": jnp.array([[0.1, -0.2], [0.3, 0.0]]), "b": [jnp.array([1.0, 2.0]), None]}


# --- identity and stateless


def test_identity_returns_updates_unchanged():
    tx = dlopt.identity()
    state = tx.init(PARAMS)
    updates, new_state = tx.update(GRADS, state, PARAMS)
    assert state == EmptyState() and new_state == EmptyState()
    chex.assert_trees_all_equal(updates, GRADS)


def test_stateless_applies_function_with_params():
    seen = []

    def f(updates, params):
        seen.append(params)
        return jax.tree.map(lambda u, p: u * p, updates, params)

    tx = dlopt.stateless(f)
    updates, state = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    assert state == EmptyState() and seen[0] is PARAMS
    chex.assert_trees_all_close(updates, jax.tree.map(lambda u, p: u * p, GRADS, PARAMS))


def test_transforms_are_optax_compatible_named_tuples():
    tx = dlopt.sgd(0.1)
    init, update = tx  # a plain NamedTuple pair, like optax's
    assert (init, update) == (tx.init, tx.update)
    assert isinstance(dlopt.chain(tx), dlopt.GradientTransformationExtraArgs)
    assert issubclass(dlopt.GradientTransformationExtraArgs, dlopt.GradientTransformation)
    assert tx._fields == optax.GradientTransformation._fields


# --- apply_updates


@pytest.mark.parametrize(
    "p_dtype, u_dtype",
    [
        (jnp.float32, jnp.float32),
        (jnp.float32, jnp.bfloat16),
        (jnp.bfloat16, jnp.float32),
        (jnp.float16, jnp.float32),
    ],
)
def test_apply_updates_keeps_param_dtype(p_dtype, u_dtype):
    params = {"w": jnp.array([1.0, 2.0, 3.0], p_dtype)}
    updates = {"w": jnp.array([0.5, -0.25, 1e-3], u_dtype)}
    new = dlopt.apply_updates(params, updates)
    assert new["w"].dtype == p_dtype
    expected = params["w"] + updates["w"].astype(p_dtype)  # the update is cast, then added
    chex.assert_trees_all_equal(new["w"], expected)


def test_apply_updates_bf16_under_jit_and_none_leaves():
    params = {"w": jnp.ones((2, 2), jnp.bfloat16), "skip": None}
    updates = {"w": jnp.full((2, 2), 0.5, jnp.float32), "skip": None}
    new = jax.jit(dlopt.apply_updates)(params, updates)
    assert new["skip"] is None and new["w"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(new["w"], np.float32), 1.5)


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"w": jnp.zeros((2, 2))}, r"params has \['b'\]\[0\] that updates lacks"),
        ({**GRADS, "extra": jnp.zeros(1)}, r"updates has \['extra'\] that params lacks"),
        ({**GRADS, "w": jnp.zeros((2, 3))}, r"differ in shape at \['w'\]: \(2, 2\) vs \(2, 3\)"),
        ([jnp.zeros(2)], "params is a tuple and updates a list"),
    ],
    ids=["missing", "extra", "shape", "container"],
)
def test_apply_updates_mismatched_trees_name_the_path(updates, message):
    params = (jnp.zeros(2),) if isinstance(updates, list) else PARAMS  # same paths, other node
    with pytest.raises(ValueError, match=message):
        dlopt.apply_updates(params, updates)


# --- extra arguments


def _plain_update(updates, state, params=None):
    return jax.tree.map(lambda u: 2.0 * u, updates), state


def _kwargs_update(updates, state, params=None, **extra_args):
    value = extra_args.get("value", 1.0)
    return jax.tree.map(lambda u: u * jnp.asarray(value, u.dtype), updates), state


def _kwonly_update(updates, state, params=None, *, value=1.0):
    return _kwargs_update(updates, state, params, value=value)


def test_extra_args_are_decided_by_the_marker_not_the_signature():
    init = dlopt.identity().init
    assert takes_extra_args(dlopt.GradientTransformationExtraArgs(init, _plain_update))
    assert not takes_extra_args(dlopt.GradientTransformation(init, _kwargs_update))
    assert takes_extra_args(optax.GradientTransformationExtraArgs(init, _kwargs_update))
    assert not takes_extra_args(optax.GradientTransformation(init, _kwargs_update))
    assert takes_extra_args(dlopt.chain(dlopt.sgd(0.1)))
    assert takes_extra_args(dlopt.reduce_on_plateau())


def test_an_unmarked_transform_gets_no_extra_args_whatever_its_signature():
    tx = dlopt.with_extra_args_support(
        dlopt.GradientTransformation(dlopt.identity().init, _kwargs_update)
    )
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS, value=10.0)
    chex.assert_trees_all_close(updates, GRADS)


def test_with_extra_args_support_drops_args_for_plain_transforms():
    tx = dlopt.with_extra_args_support(
        dlopt.GradientTransformation(dlopt.identity().init, _plain_update)
    )
    assert isinstance(tx, dlopt.GradientTransformationExtraArgs)
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS, value=10.0, other="ignored")
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: 2.0 * g, GRADS))


@pytest.mark.parametrize("update", [_kwargs_update, _kwonly_update])
def test_with_extra_args_support_forwards_args_to_transforms_that_take_them(update):
    inner = dlopt.GradientTransformationExtraArgs(dlopt.identity().init, update)
    tx = dlopt.with_extra_args_support(inner)
    assert tx is inner
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS, value=3.0)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda g: 3.0 * g, GRADS))


# --- tree helpers


@pytest.mark.parametrize(
    "start, expected",
    [(0, 1), (41, 42), (tree_lib.INT32_MAX - 1, tree_lib.INT32_MAX), (tree_lib.INT32_MAX,) * 2],
)
def test_safe_increment_saturates_at_int32_max(start, expected):
    count = jnp.asarray(start, jnp.int32)
    for fn in (tree_lib.safe_increment, jax.jit(tree_lib.safe_increment)):
        out = fn(count)
        assert out.dtype == jnp.int32 and int(out) == expected


def test_safe_increment_keeps_other_integer_dtypes():
    out = tree_lib.safe_increment(jnp.asarray(127, jnp.int8))
    assert out.dtype == jnp.int8 and int(out) == 127


@given(st.integers(0, 2**16), st.floats(1e-3, 1e3))
def test_global_norm_matches_numpy(seed, scale):
    tree = random_tree(seed, scale=scale)
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
    expected = np.sqrt(sum(np.sum(x**2) for x in leaves))
    np.testing.assert_allclose(float(numerics.global_norm(tree)), expected, rtol=1e-5)


def test_global_norm_mixed_dtypes_empty_and_none():
    tree = {
        "a": jnp.full((4,), 3.0, jnp.bfloat16),
        "b": jnp.full((16,), 1.0, jnp.float32),
        "c": None,
    }
    norm = numerics.global_norm(tree)
    assert norm.dtype == jnp.float32
    np.testing.assert_allclose(float(norm), np.sqrt(4 * 9.0 + 16), rtol=1e-6)
    assert float(numerics.global_norm({})) == 0.0


def test_map_unzip_returns_a_tree_per_output():
    a = {"x": jnp.array([1.0, 2.0]), "y": [jnp.array(3.0), None]}
    b = {"x": jnp.array([10.0, 20.0]), "y": [jnp.array(30.0), None]}
    sums, prods = tree_lib.map_unzip(lambda p, q: (p + q, p * q), a, b)
    chex.assert_trees_all_close(sums, jax.tree.map(jnp.add, a, b))
    chex.assert_trees_all_close(prods, jax.tree.map(jnp.multiply, a, b))
    assert sums["y"][1] is None and prods["y"][1] is None
    assert tree_lib.map_unzip(lambda p: (p, p), {}) == ()


@pytest.mark.parametrize(
    "a, b, message",
    [
        ({"w": jnp.zeros(2), "v": jnp.zeros(1)}, {"w": jnp.zeros(2)}, r"params has \['v'\]"),
        ({"w": jnp.zeros(2)}, {"w": jnp.zeros(2), "v": 1.0}, r"grads has \['v'\] that params"),
        (
            {"v": {"deep": [jnp.zeros((2, 1))]}},
            {"v": {"deep": [jnp.zeros((1, 2))]}},
            r"differ in shape at \['v'\]\['deep'\]\[0\]: \(2, 1\) vs \(1, 2\)",
        ),
    ],
    ids=["missing", "extra", "shape"],
)
def test_check_matching_trees_names_the_path(a, b, message):
    with pytest.raises(ValueError, match=message):
        tree_lib.check_matching_trees(a, b, "params", "grads")
    tree_lib.check_matching_trees(a, a, "params", "grads")  # equal trees pass


def test_check_float_params_names_the_integer_leaf():
    tree_lib.check_float_params({"w": jnp.zeros(2), "h": jnp.zeros(2, jnp.bfloat16)})
    with pytest.raises(TypeError, match=r"params\['layers'\]\[1\] has dtype int32"):
        tree_lib.check_float_params({"layers": [jnp.zeros(2), jnp.zeros(2, jnp.int32)]})
    with pytest.raises(TypeError, match="floating point"):
        tree_lib.moments_like({"step": jnp.zeros((), jnp.int32)})


def test_moments_and_scalar_like():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    mu = tree_lib.moments_like(params, jnp.float32)
    assert mu["w"].dtype == jnp.float32 and float(jnp.sum(mu["w"])) == 0.0
    assert tree_lib.scalar_like(0.5, jnp.zeros(2, jnp.bfloat16)).dtype == jnp.bfloat16


def test_apply_updates_to_none_params_and_decay_of_none_updates():
    assert dlopt.apply_updates(None, jnp.ones(3)) is None
    weights = (jnp.ones(2), {"a": jnp.ones(2)})
    tx = dlopt.add_decayed_weights(0.1)
    updates, _ = tx.update(None, tx.init(weights), weights)
    assert updates is None
