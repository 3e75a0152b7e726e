"""`cautious` (the rule on hand-made examples, around dlopt and optax transforms) and the small
elementwise transforms (centralize, normalize_by_update_norm, zero_nans, freeze,
keep_params_nonnegative) against optax."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import quadratic, random_tree

import dlopt


def fixed(update):
    """A transform that returns ``update`` whatever the gradient (to drive the mask)."""
    return dlopt.stateless(lambda g, p: update)


G = {"a": jnp.array([1.0, -2.0, 3.0, -4.0]), "b": jnp.array([[0.5, -0.5], [1.0, 1.0]])}
U = {"a": jnp.array([-0.5, -1.0, 2.0, 0.0]), "b": jnp.array([[-1.0, 1.0], [-2.0, 3.0]])}


def test_cautious_keeps_descent_components_and_rescales_per_leaf():
    tx = dlopt.cautious(fixed(U))
    out, _ = tx.update(G, tx.init(G))
    # a: u * g = [-0.5, 2, 6, 0] -> only the first is a descent step; mean(mask) = 1/4
    np.testing.assert_allclose(out["a"], [-0.5 / (0.25 + 1e-8), 0.0, 0.0, 0.0], rtol=1e-6)
    # b: u * g = [-0.5, -0.5, -2, 3] -> three of four kept; mean(mask) = 3/4
    expected_b = np.array([[-1.0, 1.0], [-2.0, 0.0]]) / (0.75 + 1e-8)
    np.testing.assert_allclose(out["b"], expected_b, rtol=1e-6)


def test_cautious_on_directions_keeps_the_agreeing_sign():
    direction = jax.tree.map(jnp.negative, U)  # a direction is negated later: -step
    tx = dlopt.cautious(fixed(direction), updates_are_steps=False)
    out, _ = tx.update(G, tx.init(G))
    steps, _ = dlopt.cautious(fixed(U)).update(G, dlopt.EmptyState())
    chex.assert_trees_all_close(out, jax.tree.map(jnp.negative, steps))


def test_cautious_drops_everything_without_nan_and_uses_real_alignment_for_complex():
    tx = dlopt.cautious(fixed({"a": jnp.array([1.0, 2.0])}), eps=0.0)
    out, _ = tx.update({"a": jnp.array([1.0, 1.0])}, dlopt.EmptyState())  # both steps go uphill
    chex.assert_trees_all_equal(out, {"a": jnp.zeros(2)})
    g = jnp.array([1 + 1j, 1 - 1j, 2j])
    u = jnp.array([-1 + 0.5j, -1 - 2j, 1.0 + 0j])  # Re(u conj g) = -0.5, 1, 0
    out, _ = dlopt.cautious(fixed(u)).update(g, dlopt.EmptyState())
    np.testing.assert_allclose(out, [u[0] / (1 / 3 + 1e-8), 0, 0], rtol=1e-6)


def test_cautious_around_optax_adam_equals_the_rule_applied_by_hand():
    params = random_tree(0)
    grads = random_tree(1)
    theirs = optax.adam(1e-2)
    with jax.numpy_dtype_promotion("standard"):
        ours = dlopt.cautious(theirs)
        state = ours.init(params)
        for _ in range(3):  # a few steps, so that the momentum disagrees with some gradients
            grads = jax.tree.map(lambda g, p: -g + 0.3 * p, grads, params)
            raw, _ = theirs.update(grads, state, params)
            out, state = ours.update(grads, state, params)
            params = dlopt.apply_updates(params, out)
    # the wrapped state is optax's own, and the last step is the rule applied to adam's step
    assert isinstance(state[0], optax.ScaleByAdamState)

    def by_hand(u, g):
        mask = (np.asarray(u) * np.asarray(g) < 0).astype(np.float32)
        return np.asarray(u) * mask / (mask.mean() + 1e-8)

    for o, u, g in zip(*map(jax.tree.leaves, (out, raw, grads)), strict=True):
        np.testing.assert_allclose(o, by_hand(u, g), rtol=1e-6)
    fractions = [float(np.mean(np.asarray(o) == 0)) for o in jax.tree.leaves(out)]
    assert 0 < max(fractions)  # something was dropped


@pytest.mark.parametrize("library", ["dlopt", "optax"])
def test_cautious_adam_is_the_same_around_either_library_and_inside_optax_chains(library):
    params, steps = {"x": jnp.zeros(3)}, 30
    lib = {"dlopt": dlopt, "optax": optax}[library]
    tx = optax.chain(optax.clip_by_global_norm(10.0), dlopt.cautious(lib.adam(0.1)))
    reference = dlopt.chain(dlopt.clip_by_global_norm(10.0), dlopt.cautious(dlopt.adam(0.1)))

    def run(tx):
        p, s = params, tx.init(params)
        for _ in range(steps):
            u, s = tx.update(jax.grad(quadratic)(p), s, p)
            p = dlopt.apply_updates(p, u)
        return p

    with jax.numpy_dtype_promotion("standard"):
        ours = run(tx)
    chex.assert_trees_all_close(ours, run(reference), rtol=1e-6, atol=1e-6)
    assert float(quadratic(ours)) < float(quadratic(params))


def test_cautious_validates_its_arguments():
    with pytest.raises(ValueError, match="eps"):
        dlopt.cautious(dlopt.sgd(0.1), eps=-1.0)
    with pytest.raises(TypeError, match="tx"):
        dlopt.cautious("adam")
    with pytest.raises(TypeError, match="updates_are_steps"):
        dlopt.cautious(dlopt.sgd(0.1), updates_are_steps=1)


# --- the elementwise transforms, one step against optax


TREE = {"m": (4, 5), "cube": (2, 3, 4), "v": (5,), "s": ()}


def one_step(dlopt_tx, optax_tx, updates, params=None):
    ours = dlopt_tx.update(updates, dlopt_tx.init(params or updates), params)
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax_tx.update(updates, optax_tx.init(params or updates), params)
    return ours, theirs


ELEMENTWISE = {
    "centralize": lambda lib: lib.centralize(),
    "normalize_default": lambda lib: lib.normalize_by_update_norm(),
    "normalize_scaled": lambda lib: lib.normalize_by_update_norm(scale_factor=-0.3, eps=0.1),
    "zero_nans": lambda lib: lib.zero_nans(),
    "freeze_tree": lambda lib: lib.freeze({"m": True, "cube": False, "v": True, "s": False}),
    "freeze_none": lambda lib: lib.freeze(False),
    "normalize": lambda lib: lib.contrib.normalize() if lib is optax else lib.normalize(),
}


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_transforms_equal_optax(name):
    make = ELEMENTWISE[name]
    updates = random_tree(4, TREE)
    if name == "zero_nans":
        updates["v"] = updates["v"].at[1].set(jnp.nan)
    (ours, our_state), (theirs, their_state) = one_step(make(dlopt), make(optax), updates)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(jax.tree.leaves(our_state), jax.tree.leaves(their_state))


def test_zero_nans_zeroes_and_records_nans_like_optax():
    updates = {"a": jnp.array([1.0, jnp.nan]), "b": jnp.array([2.0])}
    (ours, state), (theirs, their_state) = one_step(dlopt.zero_nans(), optax.zero_nans(), updates)
    chex.assert_trees_all_equal(ours, theirs)
    chex.assert_trees_all_equal(state.found_nan, their_state.found_nan)
    assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"])


def test_keep_params_nonnegative_equals_optax_and_needs_params():
    params = {"w": jnp.array([0.5, 2.0, 0.0, -1.0]), "b": jnp.array([[1.0]])}
    updates = {"w": jnp.array([-1.0, -1.0, 0.3, 0.5]), "b": jnp.array([[-0.5]])}
    (ours, _), (theirs, _) = one_step(
        dlopt.keep_params_nonnegative(), optax.keep_params_nonnegative(), updates, params
    )
    chex.assert_trees_all_equal(ours, theirs)
    np.testing.assert_allclose(ours["w"], [-0.5, -1.0, 0.3, 1.0])
    with pytest.raises(ValueError, match="params"):
        dlopt.keep_params_nonnegative().update(updates, dlopt.EmptyState())


def test_freeze_takes_a_bool_a_tree_or_a_callable():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    matrices = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    for mask in (matrices, {"w": True, "b": False}):
        tx = dlopt.freeze(mask)
        out, _ = tx.update(params, tx.init(params), params)
        chex.assert_trees_all_equal(out, {"w": jnp.zeros((2, 2)), "b": jnp.ones(2)})
    tx = dlopt.freeze(True)
    out, _ = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_equal(out, jax.tree.map(jnp.zeros_like, params))
    with pytest.raises(TypeError, match="mask"):
        dlopt.freeze(None)


def test_normalizing_a_zero_update_gives_zero_where_optax_gives_nan():
    zeros = {"a": jnp.zeros(3)}
    tx = dlopt.normalize_by_update_norm(eps=0.0)
    chex.assert_trees_all_equal(tx.update(zeros, ())[0], zeros)
    assert np.isnan(optax.normalize_by_update_norm(eps=0.0).update(zeros, ())[0]["a"]).all()
    scaled = dlopt.normalize_by_update_norm(scale_factor=0.0).update({"a": jnp.ones(3)}, ())[0]
    chex.assert_trees_all_equal(scaled, zeros)


def test_centralize_keeps_the_params_dtype_and_leaves_vectors_alone():
    params = {"m": jnp.ones((2, 3), jnp.bfloat16), "v": jnp.ones(3)}
    grads = {"m": jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 3.0]]), "v": jnp.array([1.0, 2.0, 3.0])}
    out, _ = dlopt.centralize().update(grads, dlopt.EmptyState(), params)
    assert out["m"].dtype == jnp.bfloat16
    np.testing.assert_allclose(out["m"].astype(jnp.float32), [[-1, 0, 1], [-1, -1, 2]])
    chex.assert_trees_all_equal(out["v"], grads["v"])
