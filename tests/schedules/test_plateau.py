"""Reduce-on-plateau: torch's ReduceLROnPlateau live, the |best| margin on negative values,
accumulation, jit, and the scale applied to the updates."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dlopt
from dlopt.schedules.plateau import PlateauConfig
from dlopt.testing import check_transformation

# --- references -----------------------------------------------------------------------------


def torch_trajectory(values, config: PlateauConfig):
    """torch's lr (base lr 1, so lr == scale), best, bad count and cooldown after each value."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=config.mode,
        factor=config.factor,
        patience=config.patience,
        threshold=config.threshold,
        threshold_mode=config.threshold_mode,
        cooldown=config.cooldown,
        min_lr=config.min_scale,
    )
    rows = []
    for v in values:
        optimizer.step()
        scheduler.step(float(v))
        rows.append(
            (
                optimizer.param_groups[0]["lr"],
                scheduler.best,
                scheduler.num_bad_epochs,
                scheduler.cooldown_counter,
            )
        )
    return tuple(np.asarray(column) for column in zip(*rows, strict=True))


def reference_rule(values, config: PlateauConfig):
    """The documented rule in float64: torch's, with the relative margin threshold * |best|."""
    sign = 1.0 if config.mode == "min" else -1.0
    scale, best, bad, cooldown = 1.0, sign * math.inf, 0, 0
    scales = []
    for v in values:
        margin = config.threshold * (abs(best) if config.threshold_mode == "rel" else 1.0)
        if math.isinf(best):
            margin = 0.0
        if sign * v < sign * best - margin:
            best, bad = v, 0
        else:
            bad += 1
        if cooldown > 0:
            cooldown, bad = cooldown - 1, 0
        if bad > config.patience:
            scale = max(scale * config.factor, config.min_scale)
            cooldown, bad = config.cooldown, 0
        scales.append(scale)
    return np.asarray(scales)


def _scan(config, values):
    def body(state, v):
        state = dlopt.plateau_step(state, v, config)
        return state, state

    return jax.lax.scan(body, dlopt.plateau_init(config), values)[1]


run_plateau = jax.jit(_scan, static_argnums=0)


def _recorded(seed: int, n: int, kind: str) -> np.ndarray:
    """A deterministic noisy training curve, quantized to 1/256 (exact in f32 and f64)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    if kind == "loss":  # decays, then plateaus
        curve = 2.0 * np.exp(-t / 12) + 0.4 + 0.03 * rng.standard_normal(n)
    else:  # an accuracy that saturates
        curve = 0.9 * (1 - np.exp(-t / 10)) + 0.02 * rng.standard_normal(n)
    return np.round(curve * 256) / 256


LOSS, ACCURACY = _recorded(0, 80, "loss"), _recorded(1, 80, "accuracy")
TORCH_CASES = [
    ("min-rel", LOSS, PlateauConfig(0.5, 3, 1e-4, "rel", "min", 0, 0.0)),
    ("min-rel-wide", LOSS, PlateauConfig(0.1, 2, 1 / 16, "rel", "min", 1, 1e-4)),
    ("min-abs-cooldown", LOSS, PlateauConfig(0.5, 2, 1 / 32, "abs", "min", 3, 0.0)),
    ("min-min_scale", LOSS, PlateauConfig(0.3, 1, 1e-4, "rel", "min", 2, 0.05)),
    ("max-rel", ACCURACY, PlateauConfig(0.5, 4, 1 / 16, "rel", "max", 1, 0.01)),
    ("max-abs", ACCURACY, PlateauConfig(0.7, 0, 1 / 64, "abs", "max", 0, 0.2)),
]


@pytest.mark.parametrize("name,values,config", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_equals_torch_on_recorded_positive_sequences(name, values, config):
    lr, best, bad, cooldown = torch_trajectory(values, config)
    assert len(np.unique(lr)) >= 3, "the case must reduce at least twice to test anything"
    states = run_plateau(config, jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(states.scale, lr, rtol=1e-6)
    np.testing.assert_array_equal(states.best_value, best.astype(np.float32))
    np.testing.assert_array_equal(states.plateau_count, bad)
    np.testing.assert_array_equal(states.cooldown_count, cooldown)
    np.testing.assert_allclose(reference_rule(values, config), lr, rtol=1e-12)


FLAT_CASES = [
    ("min-rel", -3.0, PlateauConfig(0.5, 3, 1e-4, "rel", "min", 2, 0.0)),
    ("min-rel-loglik", -1250.5, PlateauConfig(0.1, 0, 1e-3, "rel", "min", 0, 1e-3)),
    ("max-rel-reward", -5.0, PlateauConfig(0.5, 2, 1e-2, "rel", "max", 1, 0.0)),
]


@pytest.mark.parametrize("name,value,config", FLAT_CASES, ids=[c[0] for c in FLAT_CASES])
def test_flat_negative_sequence_reduces_by_the_closed_form(name, value, config):
    n = 30
    states = run_plateau(config, jnp.full((n,), value, jnp.float32))
    # The first value improves on +-inf; after that every value is bad, so the k-th reduction
    # happens at observation (p + 1) + k (cooldown + p + 1).
    p, c = config.patience, config.cooldown
    i = np.arange(n)
    reductions = (i >= p + 1) & ((i - p - 1) % (c + p + 1) == 0)
    cumulative = np.cumsum(reductions)
    expected = np.maximum(config.factor**cumulative, config.min_scale)
    assert cumulative[-1] >= 2
    np.testing.assert_allclose(states.scale, expected, rtol=1e-6)
    np.testing.assert_allclose(reference_rule([value] * n, config), expected, rtol=1e-12)
    # torch's margin best * (1 - threshold) sits on the wrong side of a negative best: the flat
    # value "improves" every time and the learning rate never moves.
    lr, _, bad, _ = torch_trajectory([value] * n, config)
    np.testing.assert_array_equal(lr, np.ones(n))
    np.testing.assert_array_equal(bad, np.zeros(n))


NEGATIVE_CONFIGS = [
    PlateauConfig(0.5, 2, 1e-4, "rel", "min", 1, 0.0),
    PlateauConfig(0.5, 1, 1 / 10, "abs", "min", 0, 0.1),
    PlateauConfig(0.2, 3, 1e-2, "rel", "max", 2, 0.0),
]


@given(
    config=st.sampled_from(NEGATIVE_CONFIGS),
    eighths=st.lists(st.integers(-80, -1), min_size=24, max_size=24),
)
def test_negative_sequences_follow_the_rule(config, eighths):
    values = np.asarray(eighths, np.float64) / 8  # exact in float32
    states = run_plateau(config, jnp.asarray(values, jnp.float32))
    np.testing.assert_allclose(states.scale, reference_rule(values, config), rtol=1e-6)


def test_nan_value_is_a_bad_observation():
    config = PlateauConfig(0.5, 1, 1e-4, "rel", "min", 0, 0.0)
    states = run_plateau(config, jnp.asarray([1.0, math.nan, math.nan, 0.5], jnp.float32))
    np.testing.assert_array_equal(states.plateau_count, [0, 1, 0, 0])
    np.testing.assert_allclose(states.scale, [1.0, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(states.best_value, [1.0, 1.0, 1.0, 0.5])


# --- the transform --------------------------------------------------------------------------


def test_init_state_types():
    state = dlopt.reduce_on_plateau(mode="max").init({"w": jnp.zeros(3)})
    f32, i32 = jnp.zeros([], jnp.float32), jnp.zeros([], jnp.int32)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        state, dlopt.ReduceLROnPlateauState(f32, f32, i32, i32, i32, f32)
    )
    assert float(state.plateau.scale) == 1.0 and float(state.plateau.best_value) == -math.inf
    assert state.scale is state.plateau.scale  # optax's name, and the plateau view
    assert dlopt.ReduceLROnPlateauState._fields == optax.contrib.ReduceLROnPlateauState._fields


def torch_tx(config: PlateauConfig, **kwargs):
    """The transform in torch's convention, from a PlateauConfig."""
    return dlopt.reduce_on_plateau(
        factor=config.factor,
        patience=config.patience,
        cooldown=config.cooldown,
        min_scale=config.min_scale,
        threshold=config.threshold,
        threshold_mode=config.threshold_mode,
        mode=config.mode,
        **kwargs,
    )


def _run_transform(tx, values, grads):
    update = jax.jit(tx.update)
    state, scales, outs = tx.init(grads), [], []
    for v in values:
        updates, state = update(grads, state, value=jnp.float32(v))
        scales.append(float(state.plateau.scale))
        outs.append(updates)
    return state, np.asarray(scales), outs


def test_accumulation_averages_values_into_one_observation():
    k, config = 3, PlateauConfig(0.5, 1, 1e-4, "rel", "min", 0, 0.0)
    values = LOSS[36:72]  # the plateau of the curve
    tx = torch_tx(config, accumulation_size=k)
    grads = {"w": jnp.ones(2)}
    update = jax.jit(tx.update)
    state = tx.init(grads)
    for v in values[:2]:
        _, state = update(grads, state, value=jnp.float32(v))
        assert float(state.plateau.best_value) == math.inf  # no observation yet
    _, state = update(grads, state, value=jnp.float32(values[2]))
    np.testing.assert_allclose(state.plateau.best_value, np.mean(values[:3]), rtol=1e-6)
    assert int(state.count) == 0 and float(state.avg_value) == 0.0

    _, scales, _ = _run_transform(tx, values, grads)
    means = values.reshape(-1, k).mean(axis=1)
    observed = run_plateau(config, jnp.asarray(means, jnp.float32)).scale
    expected = np.repeat(np.concatenate([[1.0], observed[:-1]]), k)
    expected[k - 1 :: k] = observed  # the scale changes on the update that completes a window
    assert len(np.unique(observed)) >= 2
    np.testing.assert_allclose(scales, expected, rtol=1e-6)


def test_scale_multiplies_the_updates_in_each_leaf_dtype():
    tx = dlopt.reduce_on_plateau(factor=0.5, patience=0)
    grads = {"w": jnp.arange(3, dtype=jnp.float32), "b": jnp.ones(2, jnp.bfloat16), "n": None}
    state, scales, outs = _run_transform(tx, [1.0, 2.0, 2.0, 0.5], grads)
    np.testing.assert_allclose(scales, [1.0, 0.5, 0.25, 0.25])
    for scale, updates in zip(scales, outs, strict=True):
        assert updates["n"] is None
        assert updates["b"].dtype == jnp.bfloat16
        expected = jax.tree.map(lambda g, s=float(scale): g * s, grads)
        chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_jit_update_traces_once_and_equals_eager():
    tx = dlopt.reduce_on_plateau(factor=0.5, patience=1, cooldown=1)
    grads = {"w": jnp.ones(2)}
    jitted = jax.jit(chex.assert_max_traces(tx.update, n=1))
    s_jit = s_eager = tx.init(grads)
    for v in LOSS[50:70]:
        u_jit, s_jit = jitted(grads, s_jit, value=jnp.float32(v))
        u_eager, s_eager = tx.update(grads, s_eager, value=float(v))
        chex.assert_trees_all_close(u_jit, u_eager)
        chex.assert_trees_all_close(s_jit, s_eager)
    assert float(s_jit.plateau.scale) < 1.0


def test_in_a_chain_value_passes_through_and_scales_the_learning_rate():
    tx = dlopt.chain(dlopt.sgd(0.1), dlopt.reduce_on_plateau(factor=0.1, patience=0))
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    for v in (1.0, 1.0):
        updates, state = tx.update({"w": jnp.ones(2)}, state, params, value=v)
    np.testing.assert_allclose(updates["w"], [-0.01, -0.01], rtol=1e-6)


def test_missing_value_raises_a_clear_error():
    tx = dlopt.chain(dlopt.sgd(0.1), dlopt.reduce_on_plateau())
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError, match="value="):
        tx.update(params, tx.init(params), params)


def test_non_scalar_value_raises():
    tx = dlopt.reduce_on_plateau()
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="scalar"):
        tx.update(params, tx.init(params), params, value=jnp.ones(2))


INVALID = [  # a wrong value raises ValueError, a wrong type (a float count) TypeError
    ("factor", dict(factor=1.0), ValueError),
    ("factor", dict(factor=-0.1), ValueError),
    ("patience", dict(patience=-1), ValueError),
    ("patience", dict(patience=1.5), TypeError),
    ("threshold", dict(threshold=-1e-3), ValueError),
    ("threshold_mode", dict(threshold_mode="relative"), ValueError),
    ("mode", dict(mode="avg"), ValueError),
    ("cooldown", dict(cooldown=-2), ValueError),
    ("min_scale", dict(min_scale=1.5), ValueError),
    ("min_scale", dict(min_scale=-0.1), ValueError),
    ("accumulation_size", dict(accumulation_size=0), ValueError),
    ("accumulation_size", dict(accumulation_size=2.5), TypeError),
]


@pytest.mark.parametrize("argument,kwargs,error", INVALID, ids=[a for a, *_ in INVALID])
def test_invalid_argument_raises_naming_it(argument, kwargs, error):
    with pytest.raises(error, match=f"{argument}="):
        dlopt.reduce_on_plateau(**kwargs)


def test_plateau_init_validates_the_config():
    with pytest.raises(ValueError, match="patience="):
        dlopt.plateau_init(PlateauConfig(0.1, -1, 1e-4, "rel", "min", 0, 0.0))


@pytest.mark.parametrize("accumulation_size", [1, 2])
def test_conformance_kit(accumulation_size):
    # patience 0 and a constant value: the scale changes within the checked steps.
    tx = dlopt.reduce_on_plateau(factor=0.5, patience=0, accumulation_size=accumulation_size)
    # The +-inf "no best yet" sentinel is untouched by init and allowed by the kit.
    check_transformation(tx, steps=4, extra_args={"value": 1.0}, random_examples=2)


# --- optax's calling convention ---------------------------------------------------------------

OPTAX_CASES = [
    ("patience3", LOSS, dict(factor=0.5, patience=3)),
    ("atol-cooldown", LOSS, dict(factor=0.5, patience=2, rtol=0.0, atol=1 / 32, cooldown=3)),
    ("rtol-min_scale", LOSS, dict(factor=0.3, patience=1, rtol=1 / 16, min_scale=0.05)),
    ("both-cooldown", LOSS, dict(factor=0.1, patience=2, rtol=1e-3, atol=1e-3, cooldown=1)),
    ("accumulation", LOSS, dict(factor=0.5, patience=1, accumulation_size=4)),
]


def _optax_trajectory(tx, values, grads):
    """(scale, best_value, plateau_count, cooldown_count) after each update (optax or dlopt;
    optax's rule needs standard dtype promotion)."""
    update = jax.jit(tx.update)
    rows = []
    with jax.numpy_dtype_promotion("standard"):
        state = tx.init(grads)
        for v in values:
            _, state = update(grads, state, value=jnp.float32(v))
            rows.append(tuple(float(x) for x in state[:4]))
    return np.asarray(rows)


@pytest.mark.parametrize("name,values,kwargs", OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_equals_optax_on_positive_sequences(name, values, kwargs):
    grads = {"w": jnp.ones(2)}
    want = _optax_trajectory(optax.contrib.reduce_on_plateau(**kwargs), values, grads)
    got = _optax_trajectory(dlopt.reduce_on_plateau(**kwargs), values, grads)
    assert len(np.unique(want[:, 0])) >= 3, "the case must reduce at least twice"
    # scale, best_value, plateau_count, cooldown_count after every update
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_optax_positional_order_and_patience_count():
    # optax 0.2.8's order: factor, patience, rtol, atol, cooldown, accumulation_size, min_scale
    tx = dlopt.reduce_on_plateau(0.5, 2, 0.0, 0.25, 1, 1, 0.1)
    grads = {"w": jnp.ones(())}
    rows = _optax_trajectory(tx, [1.0, 0.8, 0.9, 0.7, 0.7, 0.7, 0.7], grads)
    # 0.8 does not clear atol=0.25: bad 1, bad 2 -> halve (patience-th bad one), cooldown 1
    np.testing.assert_array_equal(rows[:, 0], [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25])
    np.testing.assert_array_equal(rows[:, 3], [0, 0, 1, 0, 0, 1, 0])


def test_optax_convention_patience_zero_reduces_only_on_bad_observations():
    values = [3.0, 2.0, 2.5, 1.0, 1.5]
    ours = _optax_trajectory(dlopt.reduce_on_plateau(factor=0.5, patience=0), values, {"w": 1.0})
    np.testing.assert_array_equal(ours[:, 0], [1.0, 1.0, 0.5, 0.5, 0.25])
    # torch's patience=0 is the same rule
    config = PlateauConfig(0.5, 0, 1e-4, "rel", "min", 0, 0.0)
    np.testing.assert_array_equal(run_plateau(config, jnp.asarray(values)).scale, ours[:, 0])


def test_negative_flat_value_reduces_where_optax_never_does():
    values, grads = [-3.0] * 8, {"w": jnp.ones(2)}
    ours = _optax_trajectory(dlopt.reduce_on_plateau(factor=0.5, patience=2), values, grads)
    theirs = _optax_trajectory(
        optax.contrib.reduce_on_plateau(factor=0.5, patience=2), values, grads
    )
    np.testing.assert_array_equal(theirs[:, 0], np.ones(8))  # (1 - rtol) * b sits above b < 0
    np.testing.assert_array_equal(ours[:, 0], [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125])


def test_torch_keywords_select_torch_counting():
    values = [1.0, 1.0, 1.0, 1.0, 1.0]
    optax_style = _optax_trajectory(dlopt.reduce_on_plateau(factor=0.5, patience=2), values, {})
    torch_style = _optax_trajectory(
        dlopt.reduce_on_plateau(factor=0.5, patience=2, threshold=1e-4), values, {}
    )
    np.testing.assert_array_equal(optax_style[:, 0], [1, 1, 0.5, 0.5, 0.25])
    np.testing.assert_array_equal(torch_style[:, 0], [1, 1, 1, 0.5, 0.5])
    with pytest.raises(ValueError, match="not both"):
        dlopt.reduce_on_plateau(rtol=1e-3, threshold=1e-3)
    with pytest.raises(ValueError, match="atol="):
        dlopt.reduce_on_plateau(atol=-1.0)


def test_update_accepts_optax_state():
    tx = dlopt.reduce_on_plateau(factor=0.5, patience=1)
    grads = {"w": jnp.ones(2)}
    with jax.numpy_dtype_promotion("standard"):
        state = optax.contrib.reduce_on_plateau(factor=0.5, patience=1).init(grads)
    ours = tx.init(grads)
    for v in (1.0, 2.0, 2.0):
        updates, state = tx.update(grads, state, value=v)
        _, ours = tx.update(grads, ours, value=v)
    assert type(state) is dlopt.ReduceLROnPlateauState
    chex.assert_trees_all_equal(state, ours)
    chex.assert_trees_all_close(updates, {"w": jnp.full(2, 0.25)})
