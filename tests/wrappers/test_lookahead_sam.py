"""Wrappers with their own schedule of steps: lookahead, SAM, and the EMA of the updates.

Each equals optax over 40 jitted steps (params, updates and state), plus the analytic cases of
optax's own lookahead test, SAM's ``sync_period=1`` (the outer optimizer; a deliberate fix),
extra arguments reaching the inner optimizers, and lookahead's hyperparameter probes (the
shared probe test cannot drive it: its update needs `LookaheadParams`).
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import from_lib, random_tree
from support.optimizers import moment_buffers

import dlopt

SHAPES = {"w": (4, 3), "b": (3,)}
STEPS = 40
LIBS = {"dlopt": dlopt, "optax": optax}


def loss(p):
    return sum(jnp.sum(jnp.square(x - 0.5) + 0.1 * jnp.cos(3.0 * x)) for x in jax.tree.leaves(p))


def same_moments(ours, theirs):
    """The moment buffers (mu, nu, trace, ...) of two states agree (dlopt's states may hold
    an extra count, so the trees themselves differ)."""
    mine, reference = moment_buffers(ours), moment_buffers(theirs)
    assert mine.keys() == reference.keys()
    chex.assert_trees_all_close(mine, reference, rtol=1e-6, atol=1e-6)


def optax_promotion(library):
    return jax.numpy_dtype_promotion("standard" if library == "optax" else "strict")


# --- lookahead


LOOKAHEAD = {
    "sgd_k3": dict(make=lambda lib: lib.sgd(0.1), sync_period=3, slow_step_size=0.5),
    "adam_k5_reset": dict(
        make=lambda lib: lib.adam(1e-2), sync_period=5, slow_step_size=0.3, reset_state=True
    ),
    "momentum_k2": dict(
        make=lambda lib: lib.sgd(0.05, momentum=0.9), sync_period=2, slow_step_size=0.8
    ),
}


@functools.cache
def lookahead_runner(name, library):
    lib = LIBS[library]
    config = dict(LOOKAHEAD[name])
    tx = lib.lookahead(config.pop("make")(lib), **config)

    def run(params):
        params = lib.LookaheadParams.init_synced(params)

        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p.fast), s, p)
            return (jax.tree.map(lambda a, b: a + b, p, u), s), u

        return jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)

    return jax.jit(run)


@pytest.mark.parametrize("name", LOOKAHEAD)
def test_lookahead_equals_optax(name):
    params = random_tree(0, SHAPES)
    with optax_promotion("optax"):
        (theirs, their_state), their_updates = lookahead_runner(name, "optax")(params)
    (ours, our_state), our_updates = lookahead_runner(name, "dlopt")(params)
    assert isinstance(ours, dlopt.LookaheadParams)
    chex.assert_trees_all_close(tuple(ours), tuple(theirs), rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(tuple(our_updates), tuple(their_updates), rtol=1e-6, atol=1e-6)
    same_moments(our_state.fast_state, their_state.fast_state)
    assert (
        int(our_state.steps_since_sync)
        == int(their_state.steps_since_sync)
        == STEPS % (LOOKAHEAD[name]["sync_period"])
    )
    # the slow params moved, and only on syncs
    assert not np.allclose(ours.slow["w"], params["w"])


def _scalar_sgd_loop(tx, steps):
    """optax's analytic setting: constant gradients (2, -2), params (3, -3), fast lr 0.5."""
    params = dlopt.LookaheadParams.init_synced({"x": jnp.asarray(3.0), "y": jnp.asarray(-3.0)})
    grads = {"x": jnp.asarray(2.0), "y": jnp.asarray(-2.0)}
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = dlopt.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize(
    "sync_period, alpha, expected",
    [(3, 1 / 3, 1.0), (1, 0.5, 1.0), (1, 0.0, 3.0), (1, 1.0, -1.0), (2, 1.0, -1.0)],
)
def test_lookahead_analytic_cases(sync_period, alpha, expected):
    # x: 3 -> 2 -> 1 -> 2 (sync) -> 1 -> 0 -> 1 (sync) for (3, 1/3); the edge cases of optax's
    # test over two steps with a fast step of -1
    lr = 0.5 if sync_period == 3 else 1.0
    steps = 6 if sync_period == 3 else 2
    params, _ = _scalar_sgd_loop(dlopt.lookahead(dlopt.sgd(lr), sync_period, alpha), steps)
    np.testing.assert_allclose(params.slow["x"], expected, atol=1e-6)
    np.testing.assert_allclose(params.slow["y"], -expected, atol=1e-6)


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_resets_the_fast_state_only_when_asked(reset_state):
    fast = dlopt.sgd(0.5, momentum=0.9)
    tx = dlopt.lookahead(fast, sync_period=3, slow_step_size=0.5, reset_state=reset_state)
    _, state = _scalar_sgd_loop(tx, 3)
    trace = state.fast_state[0].trace
    if reset_state:
        assert float(trace["x"]) == 0.0
    else:
        assert float(trace["x"]) == pytest.approx(5.42)  # 2, 2 + 0.9 * 2, 2 + 0.9 * 3.8


def test_lookahead_needs_lookahead_params_but_init_takes_the_fast_ones():
    tx = dlopt.lookahead(dlopt.adam(1e-2), 2, 0.5)
    plain = {"w": jnp.ones(2)}
    state = tx.init(plain)
    chex.assert_trees_all_equal(state, tx.init(dlopt.LookaheadParams.init_synced(plain)))
    with pytest.raises(ValueError, match="LookaheadParams"):
        tx.update(plain, state, plain)


def test_lookahead_passes_none_leaves_and_keeps_dtypes():
    tx = dlopt.lookahead(dlopt.adam(1e-2), 2, 0.5)
    params = dlopt.LookaheadParams.init_synced({"w": jnp.ones(2, jnp.bfloat16), "frozen": None})
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update({"w": jnp.ones(2, jnp.bfloat16), "frozen": None}, state, params)
        params = dlopt.apply_updates(params, updates)
    assert updates.fast["frozen"] is None and updates.slow["frozen"] is None
    assert updates.fast["w"].dtype == updates.slow["w"].dtype == jnp.bfloat16


PROBES = [("a string", "2"), ("None", None), ("NaN", math.nan), ("inf", math.inf), ("negative", -2)]


@pytest.mark.parametrize("argument", ["sync_period", "slow_step_size"])
@pytest.mark.parametrize("label, value", PROBES, ids=[p[0] for p in PROBES])
def test_lookahead_hyperparameters_are_checked_naming_them(argument, label, value):
    kwargs = {"sync_period": 2, "slow_step_size": 0.5, argument: value}
    with pytest.raises((TypeError, ValueError), match=argument):
        dlopt.lookahead(dlopt.sgd(0.1), **kwargs)


def test_lookahead_edge_values_are_accepted():
    for sync_period, alpha in [(1, 0.0), (1, 1.0), (np.int32(4), 0.25), (jnp.asarray(3), 1.0)]:
        dlopt.lookahead(dlopt.sgd(0.1), sync_period, alpha)
    with pytest.raises(ValueError, match="sync_period"):
        dlopt.lookahead(dlopt.sgd(0.1), 0, 0.5)
    with pytest.raises(TypeError, match="fast_optimizer"):
        dlopt.lookahead("sgd", 2, 0.5)


# --- SAM


def _adversary(lib, kind):
    if kind == "normalized_sgd":
        return lib.chain(from_lib(lib, "normalize")(), lib.sgd(0.05))
    return lib.adam(1e-2)


SAM = {
    "paper": dict(outer=lambda lib: lib.sgd(0.1), adv="normalized_sgd", sync_period=2),
    "adam_k3_keep": dict(
        outer=lambda lib: lib.adam(1e-2), adv="adam", sync_period=3, reset_state=False
    ),
    "opaque_k3": dict(
        outer=lambda lib: lib.sgd(0.1, momentum=0.5),
        adv="normalized_sgd",
        sync_period=3,
        opaque_mode=True,
    ),  # fmt: skip
}


@functools.cache
def sam_runner(name, library):
    lib = LIBS[library]
    config = dict(SAM[name])
    outer, adv = config.pop("outer")(lib), _adversary(lib, config.pop("adv"))
    tx = from_lib(lib, "sam")(outer, adv, **config)
    kwargs = {"grad_fn": lambda p, _: jax.grad(loss)(p)} if config.get("opaque_mode") else {}

    def run(params):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p), s, p, **kwargs)
            return (jax.tree.map(lambda a, b: a + b, p, u), s), u

        return jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)

    return jax.jit(run)


@pytest.mark.parametrize("name", SAM)
def test_sam_equals_optax(name):
    params = random_tree(1, SHAPES)
    with optax_promotion("optax"):
        (theirs, their_state), their_updates = sam_runner(name, "optax")(params)
    (ours, our_state), our_updates = sam_runner(name, "dlopt")(params)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(our_updates, their_updates, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(our_state.cache, their_state.cache, rtol=1e-6, atol=1e-6)
    assert int(our_state.steps_since_sync) == int(their_state.steps_since_sync)
    same_moments(our_state.opt_state, their_state.opt_state)
    same_moments(our_state.adv_state, their_state.adv_state)
    assert float(loss(ours)) < float(loss(params))


def test_sam_with_sync_period_one_is_the_outer_optimizer():
    outer = dlopt.sgd(0.1, momentum=0.9)
    tx = dlopt.sam(outer, dlopt.chain(dlopt.normalize(), dlopt.sgd(0.05)), sync_period=1)
    p_sam = p_plain = random_tree(2, SHAPES)
    s_sam, s_plain = tx.init(p_sam), outer.init(p_plain)
    for _ in range(4):
        u, s_sam = tx.update(jax.grad(loss)(p_sam), s_sam, p_sam)
        p_sam = dlopt.apply_updates(p_sam, u)
        u, s_plain = outer.update(jax.grad(loss)(p_plain), s_plain, p_plain)
        p_plain = dlopt.apply_updates(p_plain, u)
    chex.assert_trees_all_close(p_sam, p_plain, rtol=1e-6, atol=1e-7)


def _times_value():
    """A transform whose update takes an extra ``value=`` and multiplies by it."""

    def update_fn(updates, state, params=None, *, value):
        return jax.tree.map(lambda u: u * value, updates), state

    return dlopt.GradientTransformationExtraArgs(dlopt.core.base.init_empty_state, update_fn)


def test_sam_passes_extra_arguments_to_both_optimizers():
    tx = dlopt.sam(
        dlopt.chain(_times_value(), dlopt.sgd(1.0)), dlopt.chain(_times_value(), dlopt.sgd(1.0))
    )
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    adv, state = tx.update({"w": jnp.ones(2)}, state, params, value=3.0)
    np.testing.assert_allclose(adv["w"], 3.0)  # ascent: minus the adversary's -3
    params = dlopt.apply_updates(params, adv)
    outer, _ = tx.update({"w": jnp.ones(2)}, state, params, value=2.0)
    np.testing.assert_allclose(params["w"] + outer["w"], -2.0)  # from the cached outer params


def test_sam_opaque_mode_needs_grad_fn_and_bad_arguments_name_themselves():
    tx = dlopt.sam(dlopt.sgd(0.1), dlopt.sgd(0.1), opaque_mode=True)
    params = {"w": jnp.ones(2)}
    assert tx.init(params).cache is None
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(params, tx.init(params), params)
    for kwargs, name in [
        ({"sync_period": 0}, "sync_period"),
        ({"sync_period": 2.0}, "sync_period"),
        ({"reset_state": None}, "reset_state"),
        ({"opaque_mode": 1}, "opaque_mode"),
        ({"batch_axis_name": 3}, "batch_axis_name"),
    ]:
        with pytest.raises((TypeError, ValueError), match=name):
            dlopt.sam(dlopt.sgd(0.1), dlopt.sgd(0.1), **kwargs)


def test_normalize_gives_unit_norm_and_zero_for_zero():
    tx = dlopt.normalize()
    u, _ = tx.update({"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}, tx.init(None))
    np.testing.assert_allclose(dlopt.numerics.global_norm(u), 1.0, rtol=1e-6)
    np.testing.assert_allclose(u["a"], [0.6, 0.0], rtol=1e-6)
    zero, _ = tx.update({"a": jnp.zeros(2)}, tx.init(None))
    chex.assert_trees_all_equal(zero, {"a": jnp.zeros(2)})


# --- ema


EMA = {
    "debiased": dict(decay=0.9),
    "raw": dict(decay=0.8, debias=False),
    "slow_f32_accumulator": dict(decay=0.99, accumulator_dtype=jnp.float32),
}


@pytest.mark.parametrize("name", EMA)
def test_ema_equals_optax(name):
    grads = random_tree(3, {"g": (STEPS, 4, 3)})["g"]
    results = {}
    for library, lib in LIBS.items():
        tx = lib.ema(**EMA[name])

        def body(s, g, tx=tx):
            u, s = tx.update(g, s)
            return s, u

        with optax_promotion(library):
            state, updates = jax.jit(lambda gs, tx=tx, body=body: jax.lax.scan(
                body, tx.init(gs[0]), gs
            ))(grads)  # fmt: skip
        results[library] = state, updates
    (ours, our_updates), (theirs, their_updates) = results["dlopt"], results["optax"]
    np.testing.assert_allclose(our_updates, their_updates, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(ours.ema, theirs.ema, rtol=1e-6, atol=1e-7)
    assert int(ours.count) == int(theirs.count) == STEPS
    assert ours.ema.dtype == theirs.ema.dtype


def test_ema_rejects_decay_one_only_with_debias():
    with pytest.raises(ValueError, match="decay"):
        dlopt.ema(1.0)
    tx = dlopt.ema(1.0, debias=False)
    u, _ = tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
    chex.assert_trees_all_equal(u, jnp.zeros(2))
    with pytest.raises(ValueError, match="mu_dtype"):
        dlopt.ema(0.9, accumulator_dtype=jnp.float32, mu_dtype=jnp.bfloat16)


def test_lookahead_returns_moves_in_the_params_container():
    """optax's LookaheadParams in, optax's LookaheadParams out, so apply_updates matches."""
    params = optax.LookaheadParams.init_synced({"x": jnp.array(3.0)})
    tx = dlopt.lookahead(dlopt.sgd(0.5), sync_period=2, slow_step_size=0.5)
    updates, _ = tx.update({"x": jnp.array(2.0)}, tx.init(params), params)
    assert type(updates) is optax.LookaheadParams
    new = dlopt.apply_updates(params, updates)
    chex.assert_trees_all_close(new.fast["x"], jnp.array(2.0))
