"""The optax-API wrappers, layouts, monitors, schedules and helpers (issue 21) against optax.

Each row runs the same few steps through dlopt's and optax's version and compares updates
(and the named state fields); the rest checks what optax does not have a twin for.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlopt

PARAMS = {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]]), "b": jnp.array([0.1, -0.2])}
GRADS = [jax.tree.map(lambda p, s=s: (s + 1.0) * 0.3 * p + 0.05 * s, PARAMS) for s in range(5)]


def _run(tx, steps=GRADS, params=PARAMS, **extra):
    state = tx.init(params)
    outs = []
    for g in steps:
        u, state = tx.update(g, state, params, **extra)
        outs.append(u)
    return outs, state


def _quiet(f, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return f(*a, **k)


@contextlib.contextmanager
def _loose():
    """optax's code needs standard dtype promotion (and rank promotion: the (1,)-shaped sums
    of its scale_by_distance_over_gradients)."""
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


def _pair(name, make):
    return pytest.param(make(dlopt), make(optax), id=name)


TWINS = [
    _pair("apply_every", lambda m: m.apply_every(3)),
    _pair("flatten", lambda m: m.flatten(m.adam(0.1))),
    _pair("conditionally_mask", lambda m: m.conditionally_mask(m.sgd(0.1, 0.9), lambda s: s % 2)),
    _pair(
        "conditionally_transform",
        lambda m: m.conditionally_transform(m.scale(-3.0), lambda s: s >= 2),
    ),
    _pair("param_block_norm", lambda m: m.scale_by_param_block_norm(0.5)),
    _pair("distance_over_gradients", lambda m: m.scale_by_distance_over_gradients()),
    _pair("optimistic_adam", lambda m: _quiet(m.optimistic_adam, 0.1, 0.05)),
    _pair("selective", lambda m: m.selective_transform(m.adam(0.1), freeze_mask={"w": 1, "b": 0})),
    _pair("stateless_with_tree_map", lambda m: m.stateless_with_tree_map(lambda u, p: u * p)),
    _pair(
        "multi_steps",
        lambda m: m.MultiSteps(m.adam(0.1), every_k_schedule=lambda step: 2 + step),
    ),
    _pair("multi_transform", lambda m: m.multi_transform({"a": m.sgd(0.1), "b": m.adam(0.1)},
                                                        {"w": "a", "b": "b"})),
]  # fmt: skip


def _as_tx(tx):
    return tx.gradient_transformation() if hasattr(tx, "gradient_transformation") else tx


@pytest.mark.parametrize("ours, theirs", TWINS)
def test_updates_match_optax(ours, theirs):
    with _loose():
        expected, _ = _run(_as_tx(theirs))
    got, _ = _run(_as_tx(ours))
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("skip", ["skip_not_finite", "skip_large_updates"])
def test_multi_steps_skip_functions_match_optax(skip):
    grads = [GRADS[0], jax.tree.map(lambda g: g * jnp.nan, GRADS[1]), GRADS[2],
             jax.tree.map(lambda g: 100.0 * g, GRADS[3]), GRADS[4]]  # fmt: skip

    def make(m):
        fn = getattr(m, skip)
        if skip == "skip_large_updates":
            fn = functools.partial(fn, max_squared_norm=10.0)
        return m.MultiSteps(m.sgd(0.1), 2, should_skip_update_fn=fn)

    with _loose():
        expected, state_o = _run(make(optax), grads)
    ms = make(dlopt)
    got, state_d = _run(ms, grads)
    chex.assert_trees_all_close(got, expected)
    chex.assert_trees_all_close(state_d.skip_state, state_o.skip_state)
    assert int(state_d.mini_step) == int(state_o.mini_step)
    assert int(state_d.gradient_step) == int(state_o.gradient_step)
    assert bool(ms.has_updated(state_d)) == bool(make(optax).has_updated(state_o))


def test_multi_steps_rejects_a_non_bool_skip():
    ms = dlopt.MultiSteps(dlopt.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (1.0, ()))
    with pytest.raises(ValueError, match="should_skip_update_fn"):
        ms.update(GRADS[0], ms.init(PARAMS), PARAMS)


def test_monitor_snapshot_and_measure_with_ema_match_optax():
    def norm(u):
        return jax.tree.map(jnp.linalg.norm, u)

    def make(m):
        return m.chain(
            m.snapshot("raw", norm),
            m.monitor({"n": norm, "ema": m.measure_with_ema(norm, 0.5)}),
            m.sgd(0.1),
        )

    with _loose():
        expected, state_o = _run(make(optax))
    got, state_d = _run(make(dlopt))
    chex.assert_trees_all_close(got, expected)
    chex.assert_trees_all_close(state_d[0].measurement, state_o[0].measurement)
    chex.assert_trees_all_close(state_d[1].measurements, state_o[1].measurements, rtol=1e-6)
    # unlike optax, init already holds the measurements' structure (scan, checkpoints)
    init = make(dlopt).init(PARAMS)[1]
    chex.assert_trees_all_equal_structs(init.measurements, state_d[1].measurements)


SCHEDULES = [
    ("linear_onecycle_schedule", dict(transition_steps=20, peak_value=2.0)),
    ("warmup_constant_schedule", dict(init_value=0.1, peak_value=1.0, warmup_steps=5)),
    (
        "piecewise_interpolate_schedule",
        dict(interpolate_type="cosine", init_value=1.0, boundaries_and_scales={3: 0.5, 9: 0.1}),
    ),
    (
        "sgdr_schedule",
        dict(
            cosine_kwargs=[
                dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=8),
                dict(init_value=0.1, peak_value=0.5, warmup_steps=0, decay_steps=6, end_value=0.05),
            ]
        ),
    ),
]


@pytest.mark.parametrize("name, kwargs", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedules_match_optax(name, kwargs):
    ours, theirs = getattr(dlopt, name)(**kwargs), getattr(optax, name)(**kwargs)
    steps = jnp.arange(25)
    got = np.array([float(ours(t)) for t in steps])
    with _loose():
        expected = np.array([float(theirs(t)) for t in steps])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert getattr(dlopt.schedules, name) is getattr(dlopt, name)


@pytest.mark.parametrize(
    "call",
    [
        lambda: dlopt.piecewise_interpolate_schedule("quadratic", 1.0),
        lambda: dlopt.piecewise_interpolate_schedule("linear", 1.0, {3: -1.0}),
        lambda: dlopt.linear_onecycle_schedule(0, 1.0),
        lambda: dlopt.sgdr_schedule([]),
        lambda: dlopt.apply_every(0),
    ],
    ids=["interpolate_type", "negative_scale", "transition_steps", "no_cycle", "k"],
)
def test_bad_arguments_raise_when_built(call):
    with pytest.raises((TypeError, ValueError)):
        call()


def test_parameter_helpers_match_optax():
    new, old = PARAMS, jax.tree.map(jnp.zeros_like, PARAMS)
    chex.assert_trees_all_close(
        dlopt.incremental_update(new, old, 0.25), optax.incremental_update(new, old, 0.25)
    )
    for step in range(4):
        chex.assert_trees_all_close(
            dlopt.periodic_update(new, old, step, 2), optax.periodic_update(new, old, step, 2)
        )
    grad = jax.grad(lambda x: jnp.sum(dlopt.scale_gradient(x, -0.5) ** 2))(jnp.ones(3))
    np.testing.assert_allclose(grad, -jnp.ones(3))


def test_masked_forwards_masked_per_parameter_extra_args():
    seen = {}

    def inner_update(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    inner = dlopt.GradientTransformationExtraArgs(dlopt.init_empty_state, inner_update)
    tx = dlopt.masked(inner, {"w": True, "b": False}, mask_compatible_extra_args=True)
    per_param = jax.tree.map(jnp.ones_like, PARAMS)
    tx.update(GRADS[0], tx.init(PARAMS), PARAMS, weights=per_param, scalar=1.0)
    assert isinstance(seen["weights"]["b"], dlopt.MaskedNode) and seen["scalar"] == 1.0


def test_wrapped_schedule_and_state_aliases():
    s = dlopt.WrappedSchedule(lambda t: 2.0 * t.astype(jnp.float32))
    state = s.update(s.update(s.init()))
    assert float(s(state)) == 4.0
    assert dlopt.ClipState is dlopt.EmptyState is dlopt.ScaleState
    assert dlopt.MultiTransformState is dlopt.PartitionState
    assert dlopt.InjectStatefulHyperparamsState is dlopt.InjectHyperparamsState
    assert isinstance(dlopt.clip(1.0).init(PARAMS), dlopt.ClipState)


def test_deprecated_optimistic_adam_warns_with_optax_words():
    """optax's own tests match the warning's text ("use `optimistic_adam_v2` instead")."""
    for module in (optax, dlopt):
        with pytest.warns(DeprecationWarning, match="use `optimistic_adam_v2` instead"):
            module.optimistic_adam(0.1)
