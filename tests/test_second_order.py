"""dlopt.second_order against optax.second_order (deprecated there, kept for its users) and
the closed-form curvature of a quadratic."""

from __future__ import annotations

import warnings

import chex
import jax.numpy as jnp
import optax
from support.signatures import parameters

import dlopt

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.1]]), "b": jnp.array([0.3, -0.2])}
X = jnp.array([[1.0, 2.0], [-1.0, 0.5], [0.3, 0.3]])
Y = jnp.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])


def loss(params, inputs, targets):
    return jnp.mean(
        jnp.sum((jnp.tanh(inputs @ params["w"] + params["b"][None]) - targets) ** 2, -1)
    )


def test_values_and_signatures_match_optax():
    v = jnp.arange(6.0) / 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        expected = {
            "hvp": optax.second_order.hvp(loss, v, PARAMS, X, Y),
            "hessian_diag": optax.second_order.hessian_diag(loss, PARAMS, X, Y),
            "fisher_diag": optax.second_order.fisher_diag(loss, PARAMS, X, Y),
        }
        for name in expected:
            ours = getattr(dlopt.second_order, name)
            assert parameters(ours) == parameters(getattr(optax.second_order, name)), name
    chex.assert_trees_all_close(dlopt.second_order.hvp(loss, v, PARAMS, X, Y), expected["hvp"])
    for name in ("hessian_diag", "fisher_diag"):
        got = getattr(dlopt.second_order, name)(loss, PARAMS, X, Y)
        chex.assert_trees_all_close(got, expected[name], rtol=1e-5, atol=1e-6)


def test_hessian_diag_of_a_quadratic_is_its_diagonal():
    h = jnp.array([1.0, 3.0, 5.0])
    quad = lambda p, x, y: 0.5 * jnp.sum(h * p**2) + jnp.sum(p * x)  # noqa: E731
    chex.assert_trees_all_close(dlopt.second_order.hessian_diag(quad, jnp.ones(3), 0.0, 0.0), h)
