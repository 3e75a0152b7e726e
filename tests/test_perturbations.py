"""dlopt.perturbations against optax.perturbations, and multi_normal against optax's."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from support.signatures import parameters

import dlopt


def test_signatures_are_optax():
    ours, theirs = dlopt.perturbations, optax.perturbations
    assert parameters(ours.make_perturbed_fun) == parameters(theirs.make_perturbed_fun)
    for cls in ("Normal", "Gumbel"):
        for method in ("sample", "log_prob"):
            assert parameters(getattr(getattr(ours, cls), method)) == parameters(
                getattr(getattr(theirs, cls), method)
            )
    assert parameters(dlopt.multi_normal) == parameters(optax.multi_normal)


@pytest.mark.parametrize("noise", ["Gumbel", "Normal"])
@pytest.mark.parametrize("use_baseline", [True, False])
def test_values_and_gradients_match_optax_with_the_same_key(noise, use_baseline):
    def f(x):
        return {"relu": jnp.sum(jnp.maximum(x["a"], 0.0)), "sq": x["b"] ** 2}

    x = {"a": jnp.array([0.0, -0.5, 1.0]), "b": jnp.array(0.3)}
    key = jax.random.key(0)
    results = []
    for lib in (dlopt, optax):
        dist = getattr(lib.perturbations, noise)()
        fn = lib.perturbations.make_perturbed_fun(f, 64, 0.2, dist, use_baseline)
        value = fn(key, x)
        grad = jax.grad(lambda x, fn=fn: fn(key, x)["relu"])(x)
        results.append((value, grad))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_log_probs_match_optax():
    z = jnp.linspace(-2.0, 2.0, 5)
    for cls in ("Gumbel", "Normal"):
        chex.assert_trees_all_close(
            getattr(dlopt.perturbations, cls)().log_prob(z),
            getattr(optax.perturbations, cls)().log_prob(z),
        )


def test_multi_normal_matches_optax():
    loc, log_scale = jnp.array([0.5, -1.0]), jnp.array([0.1, -0.3])
    ours, theirs = dlopt.multi_normal(loc, log_scale), optax.multi_normal(loc, log_scale)
    key = jax.random.key(3)
    x = jnp.array([[0.0, 0.0], [1.0, -1.0]])
    with jax.numpy_rank_promotion("allow"):  # optax broadcasts (4, 2) against (2,)
        expected = theirs.sample((4,), key), theirs.log_prob(x)
    chex.assert_trees_all_close((ours.sample((4,), key), ours.log_prob(x)), expected, rtol=1e-6)
    chex.assert_trees_all_close(ours.params, theirs.params)
    chex.assert_trees_all_close(ours.log_scale, theirs.log_scale)
