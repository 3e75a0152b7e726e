"""dlopt.projections against optax.projections: names, signatures, values on small trees,
and the defining property of each set (the projection lies in it and is idempotent)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from support.signatures import parameters, public_names

import dlopt

X = {"w": jnp.array([2.5, -3.2, 0.1]), "b": jnp.array(0.5)}
A = {"w": jnp.array([1.0, 0.5, -1.0]), "b": jnp.array(2.0)}
V = jnp.array([2.5, -3.2, 0.1, 0.5])  # box bounds given as scalars need a one-array tree
CASES = [
    ("projection_non_negative", (X,)),
    ("projection_box", (V, -1.0, 1.0)),
    ("projection_box", (X, jax.tree.map(lambda x: x - 1, X), jax.tree.map(lambda x: x + 0.5, A))),
    ("projection_hypercube", (V,)),
    ("projection_hypercube", (V, 2.0)),
    ("projection_simplex", (X,)),
    ("projection_simplex", (X, 3.0)),
    ("projection_l1_sphere", (X, 2.0)),
    ("projection_l1_ball", (X,)),
    ("projection_l1_ball", (X, 100.0)),
    ("projection_l2_sphere", (X, 2.0)),
    ("projection_l2_ball", (X,)),
    ("projection_l2_ball", (X, 100.0)),
    ("projection_linf_ball", (X, 0.3)),
    ("projection_vector", (X, A)),
    ("projection_hyperplane", (X, A, 1.0)),
    ("projection_halfspace", (X, A, 1.0)),
    ("projection_halfspace", (X, A, 100.0)),
]


def test_names_and_signatures_are_optax():
    assert public_names(dlopt.projections) - {"annotations", "Any"} == public_names(
        optax.projections
    )
    for name in public_names(optax.projections):
        assert parameters(getattr(dlopt.projections, name)) == parameters(
            getattr(optax.projections, name)
        ), name


@pytest.mark.parametrize(("name", "args"), CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_values_match_optax_and_projecting_twice_changes_nothing(name, args):
    ours = getattr(dlopt.projections, name)
    with jax.numpy_dtype_promotion("standard"):
        theirs = getattr(optax.projections, name)(*args)
    out = ours(*args)
    chex.assert_trees_all_close(out, theirs, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, theirs)
    chex.assert_trees_all_close(ours(out, *args[1:]), out, rtol=1e-5, atol=1e-6)


def test_simplex_jacobian_matches_optax():
    v = jnp.array([0.3, 1.2, -0.4, 0.9])
    with jax.numpy_dtype_promotion("standard"):
        theirs = jax.jacobian(optax.projections.projection_simplex)(v)
    chex.assert_trees_all_close(
        jax.jacobian(dlopt.projections.projection_simplex)(v), theirs, atol=1e-6
    )
