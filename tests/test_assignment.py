"""dlopt.assignment against optax.assignment and scipy's linear_sum_assignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from support.signatures import parameters

import dlopt

SHAPES = [(0, 3), (1, 1), (4, 3), (3, 5), (5, 5), (6, 2)]


@pytest.mark.parametrize("name", ["hungarian_algorithm", "base_hungarian_algorithm"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_optax_and_scipy(name, shape):
    ours, theirs = getattr(dlopt.assignment, name), getattr(optax.assignment, name)
    assert parameters(ours) == parameters(theirs)
    cost = jnp.asarray(np.random.default_rng(sum(shape)).normal(size=shape), jnp.float32)
    i, j = ours(cost)
    i_ref, j_ref = theirs(cost)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_array_equal(j, j_ref)
    rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(cost))
    assert float(cost[i, j].sum()) == pytest.approx(float(cost[rows, cols].sum()), abs=1e-5)


def test_jits_and_vmaps_over_a_batch_of_square_costs():
    costs = jax.random.normal(jax.random.key(0), (3, 4, 4))
    i, j = jax.jit(jax.vmap(dlopt.assignment.hungarian_algorithm))(costs)
    for b in range(3):
        rows, cols = scipy.optimize.linear_sum_assignment(np.asarray(costs[b]))
        best = float(costs[b][rows, cols].sum())
        assert float(costs[b][i[b], j[b]].sum()) == pytest.approx(best, abs=1e-5)
