"""galore, sophia (+ Hutchinson's estimator) and split_real_and_imaginary against optax.contrib.

Each runs the same steps from the same keys and settings as optax's and must land on the
same parameters; each also has to make progress on a small problem.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlopt

RNG = np.random.default_rng(0)
PARAMS = {
    "w": jnp.asarray(RNG.standard_normal((8, 5)), jnp.float32),
    "v": jnp.asarray(RNG.standard_normal((3, 7)), jnp.float32),
    "t": jnp.asarray(RNG.standard_normal((4, 2, 3)), jnp.float32),
    "b": jnp.ones(5, jnp.float32),
}


def loss(params):
    """Non-convex but bounded below along the run: sum of x^2 sin(x) + x^2 / 2."""
    return sum(jnp.sum(x**2 * jnp.sin(x) + 0.5 * x**2) for x in jax.tree.leaves(params))


GRAD = jax.jit(jax.grad(loss))


def run(lib, tx, steps, extra=None):
    """``steps`` jitted updates from PARAMS (optax under standard dtype promotion)."""
    promotion = "strict" if lib is dlopt else "standard"
    with jax.numpy_dtype_promotion(promotion):
        params, state = PARAMS, tx.init(PARAMS)
        step = jax.jit(lambda g, s, p: tx.update(g, s, p, **(extra or {})))
        for _ in range(steps):
            updates, state = step(GRAD(params), state, params)
            params = lib.apply_updates(params, updates)
    return params, state


GALORE = {
    "defaults_small_rank": {"rank": 2, "update_proj_gap": 3},
    "decay_scale": {"rank": 3, "update_proj_gap": 5, "weight_decay": 1e-2, "scale": 0.5},
}


@pytest.mark.parametrize("kwargs", GALORE.values(), ids=GALORE.keys())
def test_galore_matches_optax(kwargs):
    ours, state = run(dlopt, dlopt.galore(0.05, **kwargs), 20)
    theirs, _ = run(optax, optax.contrib.galore(0.05, **kwargs), 20)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert loss(ours) < loss(PARAMS) - 10.0
    projector = state[0].projector
    assert projector["w"].shape == (8, kwargs["rank"])  # (8, 5): the left projector
    assert projector["v"].shape == (7, min(kwargs["rank"], 3))  # (3, 7): the right one
    assert projector["b"].shape == (0, 0)


def test_galore_dimension_numbers_and_base_optimizer_match_optax():
    matrix, tensor = dlopt.GaLoreDimensionNumbers(), dlopt.GaLoreDimensionNumbers(0, (1, 2))
    dims = {"w": matrix, "v": None, "t": tensor, "b": None}
    optax_dims = jax.tree.map(
        lambda d: optax.contrib.GaLoreDimensionNumbers(*d),
        dims,
        is_leaf=lambda x: isinstance(x, dlopt.GaLoreDimensionNumbers),
    )
    lion = dlopt.scale_by_lion()
    ours, state = run(
        dlopt, dlopt.galore(0.05, 2, 4, base_optimizer=lion, weight_dimension_numbers=dims), 20
    )
    theirs, _ = run(
        optax,
        optax.contrib.galore(
            0.05, 2, 4, base_optimizer=optax.scale_by_lion(), weight_dimension_numbers=optax_dims
        ),
        20,
    )
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert state[0].projector["t"].shape == (6, 2)  # t as a (4, 6) matrix: right projector


def test_galore_state_is_low_rank():
    state = dlopt.scale_by_galore(rank=2).init({"w": jnp.zeros((64, 32))})
    assert state.base_optimizer_state.mu["w"].shape == (2, 32)
    assert state.projector["w"].shape == (64, 2)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"rank": 0}, "rank"), ({"update_proj_gap": 0}, "update_proj_gap"), ({"rank": 2.0}, "rank")],
)
def test_galore_rejects_bad_arguments(kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        dlopt.galore(0.1, **kwargs)


def _hutchinson(lib, seed):
    module = lib if lib is dlopt else lib.contrib
    return module.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(seed))


def _sophia(lib, **kwargs):
    module = lib if lib is dlopt else lib.contrib
    return module.sophia(0.05, hessian_diagonal_fn=_hutchinson(lib, 3), **kwargs)


SOPHIA = {
    "defaults": ({}, 1e-5),
    "interval_gamma_decay": ({"update_interval": 3, "gamma": 0.05, "weight_decay": 1e-2}, 1e-5),
    "wide_clip": ({"update_interval": 2, "clip_threshold": 5.0}, 1e-3),
}


@pytest.mark.parametrize("kwargs, tol", SOPHIA.values(), ids=SOPHIA.keys())
def test_sophia_matches_optax(kwargs, tol):
    extra = {"obj_fn": loss}
    ours, state = run(dlopt, _sophia(dlopt, **kwargs), 30, extra)
    theirs, their_state = run(optax, _sophia(optax, **kwargs), 30, extra)
    chex.assert_trees_all_close(ours, theirs, rtol=tol, atol=tol)
    keys = state[0].hessian_fn_state.key, their_state[0].hessian_fn_state.key
    np.testing.assert_array_equal(*keys)
    assert loss(ours) < loss(PARAMS) - 10.0


def test_sophia_bf16_momentum_stays_close_to_optax():
    extra, kwargs = {"obj_fn": loss}, {"update_interval": 2, "mu_dtype": jnp.bfloat16}
    ours, state = run(dlopt, _sophia(dlopt, **kwargs), 3, extra)
    theirs, _ = run(optax, _sophia(optax, **kwargs), 3, extra)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-3, atol=1e-3)
    assert state[0].mu["w"].dtype == jnp.bfloat16


def test_hutchinson_is_unbiased_and_matches_optax_draws():
    x = jnp.linspace(-1.0, 1.0, 6)
    f = lambda p: jnp.sum(p**4) + jnp.sum(p[:-1] * p[1:])  # noqa: E731
    ours, theirs = _hutchinson(dlopt, 5), _hutchinson(optax, 5)
    a, b = ours.update(x, ours.init(x), x, obj_fn=f), theirs.update(x, theirs.init(x), x, obj_fn=f)
    chex.assert_trees_all_close(a[0], b[0])
    # averaged over many probes, the estimate tends to diag(H) = 12 x^2
    step = jax.jit(lambda s: ours.update(x, s, x, obj_fn=f))
    state, total = ours.init(x), jnp.zeros_like(x)
    for _ in range(400):
        diag, state = step(state)
        total = total + diag
    np.testing.assert_allclose(total / 400, 12 * x**2, atol=0.15)


def test_sophia_needs_params_and_obj_fn():
    tx = dlopt.sophia(0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(PARAMS, tx.init(PARAMS))
    with pytest.raises(ValueError, match="obj_fn"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)


def test_split_real_and_imaginary_matches_optax():
    z = {"z": jnp.asarray(RNG.standard_normal(4) + 1j * RNG.standard_normal(4), jnp.complex64),
         "r": jnp.ones(3)}  # fmt: skip
    g = {"z": 0.3 * z["z"] - jnp.complex64(0.1j), "r": 0.3 * z["r"]}
    results = []
    for lib in (dlopt, optax):
        module = lib if lib is dlopt else lib.contrib
        tx = module.split_real_and_imaginary(lib.adam(0.1))
        with jax.numpy_dtype_promotion("strict" if lib is dlopt else "standard"):
            state = tx.init(z)
            for _ in range(3):
                updates, state = tx.update(g, state, z)
        results.append(updates)
    chex.assert_trees_all_close(*results)
    assert results[0]["z"].dtype == jnp.complex64
