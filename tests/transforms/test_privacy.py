"""DP-SGD: per-example clipping, the noisy aggregate and dpsgd against optax (same keys)."""

from __future__ import annotations

import chex
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlopt

RNG = np.random.default_rng(0)
PER_EXAMPLE = {  # 6 examples
    "w": jnp.asarray(RNG.standard_normal((6, 4, 3)), jnp.float32),
    "b": jnp.asarray(RNG.standard_normal((6, 3)), jnp.float32),
}
PARAMS = jax.tree.map(lambda g: jnp.zeros(g.shape[1:], g.dtype), PER_EXAMPLE)
CLIPS = [0.0, 0.5, 1.0, 100.0, jnp.inf]


@pytest.mark.parametrize("clip", CLIPS)
def test_per_example_global_norm_clip_matches_optax_and_the_definition(clip):
    summed, count = dlopt.per_example_global_norm_clip(PER_EXAMPLE, clip)
    theirs, their_count = optax.per_example_global_norm_clip(PER_EXAMPLE, clip)
    chex.assert_trees_all_close(summed, theirs, rtol=1e-6, atol=1e-6)
    assert int(count) == int(their_count)
    norms = np.sqrt(sum(np.sum(np.reshape(g, (6, -1)) ** 2, 1) for g in PER_EXAMPLE.values()))
    factor = np.minimum(1.0, np.divide(clip, norms))
    expected = {k: np.tensordot(factor, g, axes=1) for k, g in PER_EXAMPLE.items()}
    chex.assert_trees_all_close(summed, expected, rtol=1e-5, atol=1e-6)
    assert int(count) == int(np.sum(factor < 1.0))


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("clip", [0.5, 2.0])
def test_per_example_layer_norm_clip_matches_optax(clip, uniform):
    ours = dlopt.per_example_layer_norm_clip(PER_EXAMPLE, clip, uniform)
    theirs = optax.per_example_layer_norm_clip(PER_EXAMPLE, clip, uniform)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_zero_norm_examples_keep_their_zero_gradient():
    grads = [jnp.array([[0.0, 0.0], [3.0, 4.0]])]
    summed, count = dlopt.per_example_global_norm_clip(grads, 1.0)
    np.testing.assert_allclose(summed[0], [0.6, 0.8], rtol=1e-6)
    assert int(count) == 1


def test_per_example_clips_need_a_shared_batch_axis():
    bad = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    for fn in (dlopt.per_example_global_norm_clip, dlopt.per_example_layer_norm_clip):
        with pytest.raises(ValueError, match="batch dimension"):
            fn(bad, 1.0)


@pytest.mark.parametrize("key", [3, jax.random.key(3)], ids=["int", "typed_key"])
def test_aggregate_draws_optax_noise_from_the_same_key(key):
    ours = dlopt.differentially_private_aggregate(1.0, 1.1, key)
    theirs = optax.contrib.differentially_private_aggregate(1.0, 1.1, key)
    state, their_state = ours.init(PARAMS), theirs.init(PARAMS)
    for _ in range(3):
        updates, state = ours.update(PER_EXAMPLE, state)
        their_updates, their_state = theirs.update(PER_EXAMPLE, their_state)
        # the noise is bit-identical; the clipped sum differs by float summation order
        chex.assert_trees_all_close(updates, their_updates, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(state.rng_key, jax.random.key_data(their_state.rng_key))


def test_aggregate_is_the_clipped_mean_plus_gaussian_noise_of_std_sigma_c_over_b():
    clip, sigma, batch = 0.5, 2.0, 6
    tx = dlopt.differentially_private_aggregate(clip, sigma, key=0)
    noiseless = dlopt.differentially_private_aggregate(clip, 0.0, key=0)
    mean = noiseless.update(PER_EXAMPLE, noiseless.init(PARAMS))[0]
    clipped, _ = dlopt.per_example_global_norm_clip(PER_EXAMPLE, clip)
    chex.assert_trees_all_close(mean, jax.tree.map(lambda s: s / batch, clipped), rtol=1e-6)
    step = jax.jit(tx.update)
    state, noise = tx.init(PARAMS), []
    for _ in range(200):
        updates, state = step(PER_EXAMPLE, state)
        noise.append(
            np.ravel(jax.flatten_util.ravel_pytree(jax.tree.map(jnp.subtract, updates, mean))[0])
        )
    np.testing.assert_allclose(np.std(noise), sigma * clip / batch, rtol=0.05)
    assert abs(np.mean(noise)) < 0.01


@pytest.mark.parametrize("momentum, nesterov", [(None, False), (0.9, True)])
def test_dpsgd_matches_optax(momentum, nesterov):
    ours = dlopt.dpsgd(0.1, 1.0, 1.1, seed=7, momentum=momentum, nesterov=nesterov)
    with pytest.warns(DeprecationWarning):  # optax's dpsgd passes its deprecated seed
        theirs = optax.contrib.dpsgd(0.1, 1.0, 1.1, seed=7, momentum=momentum, nesterov=nesterov)
    state, their_state = ours.init(PARAMS), theirs.init(PARAMS)
    assert len(state) == len(their_state) == 3
    for _ in range(3):
        updates, state = ours.update(PER_EXAMPLE, state, PARAMS)
        their_updates, their_state = theirs.update(PER_EXAMPLE, their_state, PARAMS)
        chex.assert_trees_all_close(updates, their_updates, rtol=1e-6, atol=1e-7)


def test_dpsgd_trains_a_linear_model_on_per_example_gradients():
    x = jnp.asarray(RNG.standard_normal((32, 3)), jnp.float32)
    y = x @ jnp.array([1.0, -2.0, 0.5])
    loss = lambda w, xi, yi: (xi @ w - yi) ** 2  # noqa: E731
    tx = dlopt.dpsgd(0.2, l2_norm_clip=1.0, noise_multiplier=0.5, seed=0, momentum=0.5)
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))
    w, state = jnp.zeros(3), tx.init(jnp.zeros(3))
    step = jax.jit(tx.update)
    for _ in range(150):
        updates, state = step(per_example(w, x, y), state, w)
        w = dlopt.apply_updates(w, updates)
    assert float(jnp.mean((x @ w - y) ** 2)) < 0.1 * float(jnp.mean(y**2))


def test_chain_checks_params_against_the_aggregate_not_the_per_example_grads():
    tx = dlopt.chain(dlopt.differentially_private_aggregate(1.0, 0.0, key=0), dlopt.sgd(0.1))
    updates, _ = tx.update(PER_EXAMPLE, tx.init(PARAMS), PARAMS)
    chex.assert_trees_all_equal_shapes(updates, PARAMS)
    with pytest.raises(ValueError, match="differ in shape"):
        tx.update(PER_EXAMPLE, tx.init(PARAMS), {"w": jnp.zeros((4, 2)), "b": jnp.zeros(3)})
    plain = dlopt.chain(dlopt.sgd(0.1))
    with pytest.raises(ValueError, match="differ in shape"):
        plain.update(PER_EXAMPLE, plain.init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"l2_norm_clip": -1.0}, "l2_norm_clip"),
        ({"noise_multiplier": float("nan")}, "noise_multiplier"),
        ({"key": "seed"}, "key"),
        ({"key": 1, "seed": 2}, "seed"),
    ],
)
def test_aggregate_rejects_bad_arguments(kwargs, message):
    arguments = {"l2_norm_clip": 1.0, "noise_multiplier": 1.0} | kwargs
    with pytest.raises((TypeError, ValueError), match=message):
        dlopt.differentially_private_aggregate(**arguments)
