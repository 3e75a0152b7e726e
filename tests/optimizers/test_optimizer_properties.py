"""Algebraic properties, numerics and bad input for every optimizer in the `OPTIMIZERS` table."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import random_tree
from hypothesis import given
from hypothesis import strategies as st
from support.optimizers import (
    CASES,
    OPTIMIZERS,
    WITH_REFERENCE,
    by_case,
    counts,
    moment_buffers,
    run_case,
    stacked_gradients,
)
from support.optimizers import (
    map_counts as _map_counts,
)

import dlopt

SMALL = {"w": (3, 2), "b": (2,)}
seeds = st.integers(0, 2**16)


# --- algebraic properties (hypothesis over gradients and hyperparameters)

# Transforms built from traced hyperparameters ``h`` (a tuple of f32 scalars), so that one
# compile serves every example.
PROPERTY_TXS = {
    "adam_eps0": lambda h: dlopt.adam(h[0], eps=0.0),
    "sgd": lambda h: dlopt.sgd(h[0]),
    "sgd_momentum": lambda h: dlopt.sgd(h[0], momentum=h[1]),
    "sgd_nesterov": lambda h: dlopt.sgd(h[0], momentum=h[1], nesterov=True),
    "adam": lambda h: dlopt.adam(h[0], b1=h[1]),
    "adam_nesterov": lambda h: dlopt.adam(h[0], b1=h[1], nesterov=True),
    "nadam": lambda h: dlopt.nadam(h[0], b1=h[1]),
    "adamw_nesterov": lambda h: dlopt.adamw(h[0], b1=h[1], weight_decay=1e-2, nesterov=True),
    "nadamw": lambda h: dlopt.nadamw(h[0], b1=h[1], weight_decay=1e-2),
    "adamw_no_decay": lambda h: dlopt.adamw(h[0], b1=h[1], weight_decay=0.0),
}


@functools.cache
def updates_fn(name: str):
    """A jitted ``(hypers, params, grads) -> stacked updates`` over a lax.scan of steps."""

    def run(hypers, params, grads):
        tx = PROPERTY_TXS[name](hypers)

        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (dlopt.apply_updates(p, u), s), u

        return jax.lax.scan(body, (params, tx.init(params)), grads)[1]

    return jax.jit(run)


def updates_of(name, hypers, seed, steps=5, scale=1.0):
    params = random_tree(seed, SMALL)
    grads = jax.tree.map(
        lambda *g: jnp.stack(g),
        *[random_tree(seed + 1 + t, SMALL, scale=scale) for t in range(steps)],
    )
    return updates_fn(name)(jnp.asarray(hypers, jnp.float32), params, grads), grads


@given(seed=seeds, c=st.floats(1e-2, 1e2))
def test_adam_is_invariant_to_scaling_the_gradients(seed, c):
    reference, _ = updates_of("adam_eps0", (0.1,), seed)
    scaled, _ = updates_of("adam_eps0", (0.1,), seed, scale=c)
    chex.assert_trees_all_close(scaled, reference, rtol=2e-5, atol=1e-6)


@given(seed=seeds, lr=st.floats(1e-4, 1.0))
def test_sgd_with_zero_momentum_is_plain_sgd(seed, lr):
    plain, _ = updates_of("sgd", (lr, 0.0), seed)
    with_zero_momentum, _ = updates_of("sgd_momentum", (lr, 0.0), seed)
    chex.assert_trees_all_equal(with_zero_momentum, plain)


@given(seed=seeds, lr=st.floats(1e-4, 1.0), a=st.floats(0.0, 0.99))
def test_nesterov_differs_from_heavy_ball_as_the_formula_says(seed, lr, a):
    # heavy ball u = -lr m, Nesterov u = -lr (g + a m)  =>  u_nesterov = a u_heavy - lr g.
    heavy, grads = updates_of("sgd_momentum", (lr, a), seed)
    nesterov, _ = updates_of("sgd_nesterov", (lr, a), seed)
    expected = jax.tree.map(lambda u, g: np.float32(a) * u - np.float32(lr) * g, heavy, grads)
    chex.assert_trees_all_close(nesterov, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "ours, same_as",
    [("nadam", "adam_nesterov"), ("nadamw", "adamw_nesterov"), ("adamw_no_decay", "adam")],
)
@given(seed=seeds, lr=st.floats(1e-4, 1.0), b1=st.floats(0.0, 0.99))
def test_aliases_that_must_coincide(ours, same_as, seed, lr, b1):
    chex.assert_trees_all_equal(
        updates_of(ours, (lr, b1), seed)[0], updates_of(same_as, (lr, b1), seed)[0]
    )


@by_case
@given(seed=seeds)
def test_zero_learning_rate_leaves_params_unchanged(case, seed):
    params = random_tree(seed)
    final, _, updates = run_case(case, 0.0, params, stacked_gradients(seed + 1))
    chex.assert_trees_all_equal(final, params)
    assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))


@by_case
def test_chaining_identity_changes_nothing(case):
    params, grads = random_tree(3), stacked_gradients(4)
    plain = run_case(case, case.lr, params, grads)
    chained = run_case(case, case.lr, params, grads, chained=True)
    chex.assert_trees_all_equal(chained[0], plain[0])
    chex.assert_trees_all_equal(chained[2], plain[2])
    chex.assert_trees_all_equal(chained[1][1], plain[1])
    assert chained[1][0] == chained[1][2] == dlopt.EmptyState()


# --- numerics (eager, on a small tree)


def eager_steps(tx, params, steps=2, grad_scale=1.0):
    state = tx.init(params)
    for t in range(steps):
        grads = jax.tree.map(
            lambda p, g: g.astype(p.dtype), params, random_tree(t, SMALL, scale=grad_scale)
        )
        updates, state = tx.update(grads, state, params)
        params = dlopt.apply_updates(params, updates)
    return params, state, updates


@by_case
def test_bfloat16_params_get_bfloat16_updates_and_moments(case):
    params = random_tree(0, SMALL, dtype=jnp.bfloat16)
    new_params, state, updates = eager_steps(case.build(dlopt, case.lr), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
    chex.assert_tree_all_finite((updates, state))
    for buffers in moment_buffers(state).values():
        for buffer in buffers:
            # one array per parameter, of its shape or one statistic per leaf (novograd's
            # layer-wise nu); SM3 keeps a list of per-axis accumulators instead
            like = _like(buffer, params)
            for p, own in zip(
                jax.tree.leaves(like),
                jax.tree.structure(like).flatten_up_to(buffer),
                strict=True,
            ):
                if not isinstance(own, list):
                    assert jnp.shape(own) in (p.shape, ()), (jnp.shape(own), p.shape)
                assert all(b.dtype == p.dtype for b in jax.tree.leaves(own)), (own, p)


def _like(buffer, params):
    """``params`` with the leaves a partitioned buffer (muon's) masks out set to None."""
    treedef = jax.tree.structure(params)
    owned = treedef.flatten_up_to(buffer)
    leaves = jax.tree.leaves(params)
    return treedef.unflatten([None if o is None else p for p, o in zip(leaves, owned, strict=True)])


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "nadamw", "lion"])
@pytest.mark.parametrize("mu_dtype", [jnp.bfloat16, "bfloat16"])
def test_mu_dtype_sets_the_first_moment_dtype(name, mu_dtype):
    params = random_tree(0, SMALL)
    build = getattr(dlopt, name)
    _, state, updates = eager_steps(build(1e-2, mu_dtype=mu_dtype), params)
    _, reference_state, reference = eager_steps(build(1e-2), params)
    moments = moment_buffers(state)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(moments["mu"]))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(moments.get("nu", [])))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_trees_all_close(updates, reference, rtol=2e-2, atol=1e-4)
    chex.assert_trees_all_close(
        moments["mu"], moment_buffers(reference_state)["mu"], rtol=1e-2, atol=1e-3
    )


@pytest.mark.parametrize("name", ["adam", "nadamw", "lion"])
def test_float32_first_moment_for_bfloat16_params(name):
    params = random_tree(0, SMALL, dtype=jnp.bfloat16)
    _, state, updates = eager_steps(getattr(dlopt, name)(1e-2, mu_dtype=jnp.float32), params)
    moments = moment_buffers(state)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(moments["mu"]))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(moments.get("nu", [])))
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)


COUNTED = [
    dlopt.adam(1e-2),
    dlopt.nadamw(1e-2),
    dlopt.adamax(1e-2),
    dlopt.lion(1e-3),
    dlopt.rmsprop(1e-2, bias_correction=True),
    dlopt.rmsprop(1e-2, centered=True, bias_correction=True),
    dlopt.sgd(dlopt.cosine_decay_schedule(0.1, 100), momentum=0.9),
]


@pytest.mark.parametrize("tx", COUNTED)
def test_step_count_saturates_at_int32_max(tx):
    params = random_tree(0, SMALL)
    top = jnp.iinfo(jnp.int32).max
    state = _map_counts(lambda c: jnp.full_like(c, top), tx.init(params))
    grads = random_tree(1, SMALL)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        seen = counts(state)
        assert seen and all(c.dtype == jnp.int32 and int(c) == top for c in seen)
        chex.assert_tree_all_finite((updates, state))


@by_case
def test_none_leaves_pass_through(case):
    tx = case.build(dlopt, case.lr)
    params = random_tree(0, SMALL)
    _, _, reference = eager_steps(tx, params)
    with_none = {**params, "frozen": None}
    state = tx.init(with_none)
    for t in range(2):
        grads = {**random_tree(t, SMALL), "frozen": None}
        updates, state = tx.update(grads, state, with_none)
        with_none = dlopt.apply_updates(with_none, updates)
    assert updates["frozen"] is None and with_none["frozen"] is None
    chex.assert_trees_all_close({k: updates[k] for k in SMALL}, reference, rtol=1e-6)


# --- bad input


BAD_HYPERPARAMETERS = [
    (lambda: dlopt.sgd(-0.1), "learning_rate"),
    (lambda: dlopt.adam(float("nan")), "learning_rate"),
    (lambda: dlopt.adadelta(-1.0), "learning_rate"),
    (lambda: dlopt.sgd(0.1, momentum=1.5), "momentum"),
    (lambda: dlopt.sgd(0.1, momentum=-0.1), "momentum"),
    (lambda: dlopt.sgd(0.1, nesterov=True), "momentum"),
    (lambda: dlopt.trace(decay=1.01), "decay"),
    (lambda: dlopt.adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (lambda: dlopt.adagrad(0.1, eps=-1e-7), "eps"),
    (lambda: dlopt.rmsprop(0.1, decay=1.0), "decay"),
    (lambda: dlopt.rmsprop(0.1, decay=-0.5), "decay"),
    (lambda: dlopt.rmsprop(0.1, eps=-1e-8), "eps"),
    (lambda: dlopt.rmsprop(0.1, initial_scale=-1.0), "initial_scale"),
    (lambda: dlopt.rmsprop(0.1, centered=True, decay=1.5), "decay"),
    (lambda: dlopt.rmsprop(0.1, momentum=1.5), "momentum"),
    (lambda: dlopt.rmsprop(0.1, nesterov=True), "momentum"),
    (lambda: dlopt.adadelta(rho=1.0), "rho"),
    (lambda: dlopt.adadelta(eps=0.0), "eps"),
    (lambda: dlopt.adadelta(weight_decay=-1.0), "weight_decay"),
    (lambda: dlopt.adam(1e-3, b1=1.0), "b1"),
    (lambda: dlopt.adam(1e-3, b2=-0.1), "b2"),
    (lambda: dlopt.adam(1e-3, eps=-1e-8), "eps"),
    (lambda: dlopt.adam(1e-3, eps_root=-1.0), "eps_root"),
    (lambda: dlopt.adamw(1e-3, weight_decay=-1e-4), "weight_decay"),
    (lambda: dlopt.nadam(1e-3, b1=1.5), "b1"),
    (lambda: dlopt.nadamw(1e-3, b2=1.0), "b2"),
    (lambda: dlopt.adamax(1e-3, b1=1.0), "b1"),
    (lambda: dlopt.adamax(1e-3, eps=-1.0), "eps"),
    (lambda: dlopt.adamax(1e-3, eps=0.0), "eps"),
    (lambda: dlopt.lion(1e-4, b2=1.0), "b2"),
    (lambda: dlopt.lion(1e-4, weight_decay=-1.0), "weight_decay"),
    (lambda: dlopt.scale_by_lion(mode="soft"), "mode"),
    (lambda: dlopt.scale_by_lion(mode="smooth", smooth_beta=0.0), "smooth_beta"),
]


@pytest.mark.parametrize("build, name", BAD_HYPERPARAMETERS)
def test_invalid_hyperparameter_raises_naming_it(build, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        build()


@by_case
def test_mismatched_grads_and_params_name_the_path(case):
    tx = case.build(dlopt, case.lr)
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=r"\['b'\]"):
        tx.update({"a": jnp.ones(2), "c": jnp.ones(3)}, state, params)
    with pytest.raises(ValueError, match=r"shape at \['a'\]"):
        tx.update({"a": jnp.ones(4), "b": jnp.ones(3)}, state, params)


@by_case
def test_integer_params_raise_naming_the_leaf(case):
    with pytest.raises(TypeError, match=r"params\['layer'\]\['step'\] has dtype int32"):
        case.build(dlopt, case.lr).init(
            {"layer": {"w": jnp.ones(2), "step": jnp.zeros((), jnp.int32)}}
        )


def test_every_table_case_is_used():
    assert set(CASES) == {case.name for case in OPTIMIZERS}


# --- dtypes: updates in the parameters' dtype, complex parameters


@by_case
def test_bf16_gradients_on_f32_params_give_f32_updates(case):
    params = random_tree(0, SMALL)
    tx = case.build(dlopt, case.lr)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: (0.5 * p).astype(jnp.bfloat16), params)
    updates, _ = tx.update(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)


def complex_run(case, library, steps=20):
    """``steps`` updates of ``case`` on the complex quadratic |z - c|^2 (optax's convention:
    the gradient is the conjugate Wirtinger derivative, as jax.grad gives for real losses)."""
    target = jnp.array([1 + 2j, -0.5 + 0.25j, 3 - 1j], jnp.complex64)

    def loss(p):
        return jnp.sum(jnp.abs(p["z"] - target) ** 2)

    lib = {"dlopt": dlopt, "optax": optax}[library]
    tx = case.build(lib, case.lr)
    params = {"z": jnp.zeros(3, jnp.complex64)}
    state = tx.init(params)
    for _ in range(steps):
        grads = jax.tree.map(jnp.conj, jax.grad(loss)(params))
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    return params


COMPLEX = [c for c in WITH_REFERENCE if c.complex_ok]


@pytest.mark.parametrize("case", COMPLEX, ids=lambda c: c.name)
def test_complex_params_match_optax_where_optax_supports_them(case):
    with jax.numpy_dtype_promotion("standard"):
        theirs = complex_run(case, "optax")
    ours = complex_run(case, "dlopt")
    assert ours["z"].dtype == jnp.complex64
    rtol, atol = max(1e-5, case.rtol), max(1e-6, case.rtol)  # a row's looser parity tolerance
    chex.assert_trees_all_close(ours, theirs, rtol=rtol, atol=atol)
