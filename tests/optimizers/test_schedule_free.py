"""Schedule-free (y, z and x sequences), Prodigy and D-Adapt AdamW, beyond the optimizer table.

The table (cases_schedule_free.py) compares params and updates with optax; here: the state
buffers (z, Prodigy's and D-Adaptation's moments and distance estimates), the evaluation
params, warmup, the paper's equations by hand for three steps, the float32 scalars with
bfloat16 params, stochastic rounding of z, the zero-gradient guard of the distance estimate,
signatures and state fields against optax, and bad hyperparameters.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import from_lib, quadratic, random_tree
from support.optimizers import optax_signature_prefix

import dlopt

SHAPES = {"w": (6, 5), "b": (5,), "s": ()}
STEPS = 40

BUILDS = {
    "sf_sgd": lambda lib: from_lib(lib, "schedule_free_sgd")(0.05, weight_decay=1e-2),
    "sf_sgd_warmup": lambda lib: from_lib(lib, "schedule_free_sgd")(0.5, warmup_steps=10, b1=0.95),
    "sf_adamw_warmup": lambda lib: from_lib(lib, "schedule_free_adamw")(
        0.05, warmup_steps=7, b2=0.99, weight_decay=1e-2, weight_lr_power=1.0
    ),
    "sf_wrapper_schedule": lambda lib: from_lib(lib, "schedule_free")(
        lib.sgd(lib.linear_schedule(0.0, 0.2, 10)), lib.linear_schedule(0.0, 0.2, 10), b1=0.8
    ),
    "sf_around_optax_adam": lambda lib: from_lib(lib, "schedule_free")(
        optax.adam(0.05, b1=0.0), 0.05, b1=0.95
    ),
    "prodigy": lambda lib: from_lib(lib, "prodigy")(0.5, weight_decay=1e-2),
    "prodigy_safeguard": lambda lib: from_lib(lib, "prodigy")(
        lib.linear_schedule(0.1, 1.0, 20),
        betas=(0.8, 0.99),
        beta3=0.9,
        estim_lr0=1e-3,
        estim_lr_coef=2.0,
        safeguard_warmup=True,
    ),  # fmt: skip
    "dadapt": lambda lib: from_lib(lib, "dadapt_adamw")(
        0.5, betas=(0.8, 0.99), estim_lr0=1e-3, weight_decay=1e-2
    ),
}


def _gradients(p):
    """Noisy gradients of a quadratic: a pull toward 1 plus a fixed pseudo-random tilt."""
    return jax.tree.map(lambda x: 0.5 * (x - 1.0) + 0.1 * jnp.sin(7.0 * x), p)


@functools.cache
def runner(name: str, library: str):
    lib = {"dlopt": dlopt, "optax": optax}[library]

    def run(params):
        tx = BUILDS[name](lib)

        def body(carry, _):
            p, s = carry
            u, s = tx.update(_gradients(p), s, p)
            return (jax.tree.map(lambda a, b: a + b, p, u), s), None

        return jax.lax.scan(body, (params, tx.init(params)), None, length=STEPS)[0]

    return jax.jit(run)


def run(name, library, params=None):
    params = random_tree(0, SHAPES) if params is None else params
    if library == "optax" or "optax" in name:  # optax's transforms need standard promotion
        with jax.numpy_dtype_promotion("standard"):
            return runner(name, library)(params)
    return runner(name, library)(params)


SCHEDULE_FREE = [
    "sf_sgd", "sf_sgd_warmup", "sf_adamw_warmup", "sf_wrapper_schedule", "sf_around_optax_adam"
]  # fmt: skip


@pytest.mark.parametrize("name", SCHEDULE_FREE)
def test_schedule_free_z_and_eval_params_equal_optax(name):
    ours, theirs = run(name, "dlopt"), run(name, "optax")
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)  # y
    chex.assert_trees_all_close(ours[1].z, theirs[1].z, rtol=1e-5, atol=1e-5)
    for field in ("weight_sum", "max_lr", "step_count", "b1"):
        chex.assert_trees_all_close(getattr(ours[1], field), getattr(theirs[1], field), rtol=1e-6)
    x_ours = dlopt.schedule_free_eval_params(ours[1], ours[0])
    x_theirs = optax.contrib.schedule_free_eval_params(theirs[1], theirs[0])
    chex.assert_trees_all_close(x_ours, x_theirs, rtol=1e-5, atol=1e-5)
    # and x is not y: the averaged sequence lags the iterate
    assert not np.allclose(x_ours["w"], ours[0]["w"], atol=1e-4)


@pytest.mark.parametrize("name", ["prodigy", "prodigy_safeguard", "dadapt"])
def test_distance_estimating_optimizers_state_equals_optax(name):
    ours, theirs = run(name, "dlopt"), run(name, "optax")
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    for field in theirs[1]._fields:
        pairs = zip(
            *(jax.tree.leaves(getattr(s, field)) for s in (ours[1], theirs[1])), strict=True
        )
        for mine, reference in pairs:
            # sums of terms that cancel: rounding is relative to the buffer's scale
            scale = float(jnp.max(jnp.abs(reference)))
            np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6 * scale, err_msg=field)
    d0 = BUILDS[name](dlopt).init(random_tree(0, SHAPES)).estim_lr
    assert float(ours[1].estim_lr) > 10 * float(d0)  # d grew from d_0


# --- the paper's equations by hand (float64 numpy), three steps of schedule-free SGD


def test_schedule_free_sgd_follows_the_papers_equations():
    lr, b1, steps, c = 0.3, 0.9, 3, np.array([1.0, -2.0, 0.5])
    a = np.array([1.0, 2.0, 4.0])
    y = z = x = np.array([0.3, 0.7, -1.1])
    weight_sum, expected = 0.0, []
    for _ in range(steps):
        z = z - lr * a * (y - c)  # gradient at y
        weight_sum += lr**2
        ck = lr**2 / weight_sum
        x = (1 - ck) * x + ck * z
        y = b1 * x + (1 - b1) * z
        expected.append((y, x))
    tx = dlopt.schedule_free_sgd(lr, b1=b1)
    params = jnp.asarray([0.3, 0.7, -1.1], jnp.float32)
    state = tx.init(params)
    for y_ref, x_ref in expected:
        grads = jnp.asarray(a * (np.asarray(params, np.float64) - c), jnp.float32)
        updates, state = tx.update(grads, state, params)
        params = dlopt.apply_updates(params, updates)
        np.testing.assert_allclose(params, y_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            dlopt.schedule_free_eval_params(state, params), x_ref, 1e-5, 1e-6
        )


def test_zero_learning_rate_keeps_y_and_x_exactly():
    tx = dlopt.schedule_free(dlopt.sgd(0.0), learning_rate=0.0)
    params = random_tree(1, SHAPES)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(_gradients(params), state, params)
        assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
    chex.assert_trees_all_close(dlopt.schedule_free_eval_params(state, params), params, rtol=1e-6)


def test_eval_params_find_the_state_inside_a_chain_and_reject_others():
    tx = dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.schedule_free_sgd(0.1))
    params = random_tree(2, SHAPES)
    state = tx.init(params)
    updates, state = tx.update(_gradients(params), state, params)
    params = dlopt.apply_updates(params, updates)
    direct = dlopt.schedule_free_eval_params(state[1], params)
    chex.assert_trees_all_equal(dlopt.schedule_free_eval_params(state, params), direct)
    with pytest.raises(ValueError, match="ScheduleFreeState"):
        dlopt.schedule_free_eval_params(dlopt.adam(0.1).init(params), params)


def test_bf16_params_keep_float32_scalars_and_bf16_z_rounds_stochastically():
    params = {"w": jnp.full((256,), 1.0, jnp.bfloat16)}
    tx = dlopt.schedule_free_sgd(1e-3)
    state = tx.init(params)
    assert state.weight_sum.dtype == state.max_lr.dtype == state.b1.dtype == jnp.float32
    assert state.z["w"].dtype == jnp.bfloat16
    grads = {"w": jnp.full((256,), 1.0, jnp.bfloat16)}
    step = jax.jit(tx.update)
    for _ in range(10):
        updates, state = step(grads, state, params)
        params = dlopt.apply_updates(params, updates)
    # each step moves z by -1e-3, below bf16's spacing at 1.0 (7.8e-3): round-to-nearest would
    # keep z at 1.0 forever; stochastic rounding keeps its mean on 1 - 10 * 1e-3
    mean_z = float(jnp.mean(state.z["w"].astype(jnp.float32)))
    assert abs(mean_z - 0.99) < 2e-3, mean_z
    nearest = dlopt.schedule_free_sgd(1e-3, state_rounding="nearest")
    s = nearest.init({"w": jnp.ones(4, jnp.bfloat16)})
    for _ in range(3):
        _, s = nearest.update({"w": jnp.ones(4, jnp.bfloat16)}, s, {"w": jnp.ones(4, jnp.bfloat16)})
    assert float(s.z["w"][0]) == 1.0


@pytest.mark.parametrize("state_dtype", [None, jnp.bfloat16, jnp.float32, "bfloat16"])
def test_state_dtype_sets_the_dtype_of_z_only(state_dtype):
    params = {"w": jnp.zeros(3, jnp.float32)}
    state = dlopt.schedule_free_adamw(state_dtype=state_dtype).init(params)
    expected = jnp.float32 if state_dtype is None else jnp.dtype(state_dtype)
    assert state.z["w"].dtype == expected
    assert state.base_optimizer_state[0].nu["w"].dtype == jnp.float32


def test_z_is_a_copy_so_params_and_state_can_be_donated():
    tx = dlopt.schedule_free_sgd(0.1)
    params = {"w": jnp.ones(4)}

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(p, s):
        u, s = tx.update(jax.tree.map(jnp.ones_like, p), s, p)
        return dlopt.apply_updates(p, u), s

    step(params, tx.init(params))


def test_step_counts_saturate():
    params = {"w": jnp.ones(3)}
    top = jnp.iinfo(jnp.int32).max
    for tx, field in [(dlopt.schedule_free_sgd(0.1), "step_count"), (dlopt.prodigy(), "count")]:
        state = tx.init(params)._replace(**{field: jnp.asarray(top, jnp.int32)})
        for _ in range(2):
            updates, state = tx.update({"w": jnp.ones(3)}, state, params)
            assert int(getattr(state, field)) == top
            chex.assert_tree_all_finite((updates, state))


@pytest.mark.parametrize("name", ["prodigy", "dadapt_adamw"])
def test_all_zero_gradients_keep_the_estimate_where_optax_gives_nan(name):
    params = {"w": jnp.ones(3)}
    zeros = {"w": jnp.zeros(3)}
    ours = getattr(dlopt, name)()
    state = ours.init(params)
    for _ in range(2):
        updates, state = ours.update(zeros, state, params)
    chex.assert_tree_all_finite(state)
    assert float(state.estim_lr) == pytest.approx(1e-6)
    theirs = getattr(optax.contrib, name)()
    with jax.numpy_dtype_promotion("standard"):
        their_state = theirs.update(zeros, theirs.init(params), params)[1]
    assert np.isnan(float(their_state.estim_lr))  # the difference is deliberate
    # and training proceeds from there
    grads = jax.grad(quadratic)
    p = {"x": jnp.zeros(3)}
    s = ours.init(p)
    for _ in range(200):
        u, s = jax.jit(ours.update)(grads(p), s, p)
        p = dlopt.apply_updates(p, u)
    assert float(quadratic(p)) < 1e-2


def test_prodigy_and_dadapt_need_params():
    for tx in (dlopt.prodigy(), dlopt.dadapt_adamw(), dlopt.schedule_free_sgd()):
        with pytest.raises(ValueError, match="needs params"):
            tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}))


# --- names, signatures and state fields as in optax


OPTAX_NAMES = {
    "schedule_free": optax.contrib.schedule_free,
    "schedule_free_sgd": optax.contrib.schedule_free_sgd,
    "schedule_free_adamw": optax.contrib.schedule_free_adamw,
    "schedule_free_eval_params": optax.contrib.schedule_free_eval_params,
    "prodigy": optax.contrib.prodigy,
    "dadapt_adamw": optax.contrib.dadapt_adamw,
    "sam": optax.contrib.sam,
    "normalize": optax.contrib.normalize,
    "lookahead": optax.lookahead,
    "ema": optax.ema,
    "centralize": optax.centralize,
    "freeze": optax.freeze,
    "zero_nans": optax.zero_nans,
    "normalize_by_update_norm": optax.normalize_by_update_norm,
    "keep_params_nonnegative": optax.keep_params_nonnegative,
}


@pytest.mark.parametrize("name", OPTAX_NAMES)
def test_signature_matches_optax(name):
    optax_signature_prefix(getattr(dlopt, name), OPTAX_NAMES[name])


STATES = {
    "ScheduleFreeState": optax.contrib.ScheduleFreeState,
    "ProdigyState": optax.contrib.ProdigyState,
    "DAdaptAdamWState": optax.contrib.DAdaptAdamWState,
    "SAMState": optax.contrib.SAMState,
    "LookaheadState": optax.LookaheadState,
    "LookaheadParams": optax.LookaheadParams,
    "EmaState": optax.EmaState,
    "ZeroNansState": optax.ZeroNansState,
}


@pytest.mark.parametrize("name", STATES)
def test_state_fields_match_optax(name):
    assert getattr(dlopt, name)._fields == STATES[name]._fields
    assert dlopt.NonNegativeParamsState is dlopt.EmptyState


# --- bad hyperparameters


BAD = [
    (lambda: dlopt.schedule_free(dlopt.sgd(0.1), 0.1, b1=0.0), "b1"),
    (lambda: dlopt.schedule_free(dlopt.sgd(0.1), 0.1, b1=1.5), "b1"),
    (lambda: dlopt.schedule_free(dlopt.sgd(0.1), -0.1), "learning_rate"),
    (lambda: dlopt.schedule_free(dlopt.sgd(0.1), 0.1, weight_lr_power=-1.0), "weight_lr_power"),
    (lambda: dlopt.schedule_free("sgd", 0.1), "base_optimizer"),
    (lambda: dlopt.schedule_free(dlopt.sgd(0.1), 0.1, state_rounding="up"), "state_rounding"),
    (lambda: dlopt.schedule_free_sgd(warmup_steps=0), "warmup_steps"),
    (lambda: dlopt.schedule_free_sgd(warmup_steps=2.5), "warmup_steps"),
    (lambda: dlopt.schedule_free_sgd(weight_decay=-1.0), "weight_decay"),
    (lambda: dlopt.schedule_free_adamw(b2=1.0), "b2"),
    (lambda: dlopt.schedule_free_adamw(eps=-1.0), "eps"),
    (lambda: dlopt.prodigy(betas=(0.9,)), "betas"),
    (lambda: dlopt.prodigy(betas=(0.9, 1.0)), "betas"),
    (lambda: dlopt.prodigy(beta3=1.0), "beta3"),
    (lambda: dlopt.prodigy(estim_lr0=0.0), "estim_lr0"),
    (lambda: dlopt.prodigy(estim_lr_coef=-1.0), "estim_lr_coef"),
    (lambda: dlopt.prodigy(weight_decay=-1.0), "weight_decay"),
    (lambda: dlopt.dadapt_adamw(betas=0.9), "betas"),
    (lambda: dlopt.dadapt_adamw(eps=float("nan")), "eps"),
    (lambda: dlopt.dadapt_adamw(estim_lr0=-1.0), "estim_lr0"),
]


def test_warmup_ramps_a_schedule_as_it_ramps_a_number():
    """warmup_steps multiplies a schedule by the ramp min(t / warmup_steps, 1) (optax raises a
    TypeError there); with a constant schedule that is the number's run, step for step."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.5, 0.25, -1.0])}
    for make in (dlopt.schedule_free_sgd, dlopt.schedule_free_adamw):
        runs = []
        for rate in (0.1, dlopt.constant_schedule(0.1)):
            tx = make(rate, warmup_steps=4)
            state, p, steps = tx.init(params), params, []
            for _ in range(6):
                u, state = tx.update(grads, state, p)
                p = dlopt.apply_updates(p, u)
                steps.append(p["w"])
            runs.append(steps)
        chex.assert_trees_all_close(runs[0], runs[1], rtol=1e-6)
        unramped = make(dlopt.constant_schedule(0.1))
        u, _ = unramped.update(grads, unramped.init(params), params)
        assert not jnp.allclose(runs[1][0], dlopt.apply_updates(params, u)["w"])  # ramped


@pytest.mark.parametrize("build, name", BAD)
def test_invalid_hyperparameter_raises_naming_it(build, name):
    with pytest.raises((ValueError, TypeError), match=rf"\b{name}\b"):
        build()
