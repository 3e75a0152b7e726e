"""Memory-lean, large-batch, sign and game optimizers beyond the shared table.

The table rows (tests/cases_large_batch.py) get parity with optax, convergence, properties and
sharding from test_optimizers.py and friends; here: signatures and state fields against
optax, Adafactor's factored state, SM3 (optax's SM3 raises on scalars, so its parity runs on
the tree without one), Polyak's step (its update needs ``value=``), the noise's key, the
documented equations for three steps, and the deliberate differences from optax.
"""

from __future__ import annotations

import functools
import inspect

import cases_large_batch
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    PARITY_SHAPES,
    QUADRATIC_CENTER,
    quadratic,
    random_tree,
    rosenbrock,
)
from support.optimizers import (
    CASES,
    counts,
    optax_signature_prefix,
    run_case,
    stacked_gradients,
)
from support.optimizers import (
    map_counts as _map_counts,
)

import dlopt
from dlopt.transforms.ema import EmaState

# --- signatures and state fields

SHARED_NAMES = [
    "adafactor",
    "scale_by_param_block_rms",
    "sm3",
    "scale_by_sm3",
    "lamb",
    "lars",
    "scale_by_trust_ratio",
    "fromage",
    "sign_sgd",
    "signum",
    "scale_by_sign",
    "optimistic_gradient_descent",
    "scale_by_optimistic_gradient",
    "optimistic_adam_v2",
    "noisy_sgd",
    "add_noise",
    "polyak_sgd",
    "scale_by_polyak",
]


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_signature_matches_optax(name):
    optax_signature_prefix(getattr(dlopt, name), getattr(optax, name))


def test_factored_rms_signature_matches_optax_up_to_its_default_schedule():
    # optax's default decay_rate_fn is its private function; ours computes the same values
    ours, theirs = dlopt.scale_by_factored_rms, optax.scale_by_factored_rms
    mine = inspect.signature(ours).parameters["decay_rate_fn"].default
    reference = inspect.signature(theirs).parameters["decay_rate_fn"].default
    steps = jnp.arange(0, 10_000, 7, dtype=jnp.int32)
    for rate in (0.8, 0.5):
        np.testing.assert_array_equal(mine(steps, rate), reference(steps, rate))
    spec = functools.partial(
        lambda fn: [
            (p.name, p.kind, None if p.name == "decay_rate_fn" else p.default)
            for p in inspect.signature(fn).parameters.values()
        ]
    )
    assert spec(ours)[: len(spec(theirs))] == spec(theirs)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (dlopt.FactoredState, optax.FactoredState),
        (dlopt.ScaleBySM3State, optax.ScaleBySM3State),
        (dlopt.AddNoiseState, optax.AddNoiseState),
        (dlopt.ScaleByOptimisticGradientState, ("is_initial_step", "previous_gradient")),
        (EmaState, optax.EmaState),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_state_fields_start_with_optax_fields(ours, theirs):
    fields = theirs if isinstance(theirs, tuple) else theirs._fields
    assert ours._fields[: len(fields)] == fields
    assert all(f == "count" for f in ours._fields[len(fields) :])


# --- Adafactor

FACTORED_ROW = "adafactor_factored_momentum_decay"


def test_adafactor_factors_the_matrices_and_the_conv_kernel_as_optax_does():
    params = random_tree(1, PARITY_SHAPES)
    for min_dim in (128, 3):
        ours = dlopt.adafactor(1e-2, min_dim_size_to_factor=min_dim).init(params)[0]
        theirs = optax.adafactor(1e-2, min_dim_size_to_factor=min_dim).init(params)[0]
        assert ours._fields == theirs._fields
        chex.assert_trees_all_equal_shapes_and_dtypes(
            jax.tree.leaves(ours), jax.tree.leaves(theirs)
        )
    # min_dim = 3: (130, 140) keeps 130 row and 140 column statistics; the kernel
    # (3, 3, 2, 4) is factored over its axes 1 (size 3) and 3 (size 4)
    assert ours.v_row["big"].shape == (130,) and ours.v_col["big"].shape == (140,)
    assert ours.v_row["conv"][0].shape == (3, 3, 2) and ours.v_col["conv"][0].shape == (3, 2, 4)
    assert ours.v["conv"][0].shape == (1,) and ours.v["dense"]["b"].shape == (3,)


def test_adafactor_state_equals_optax_after_100_steps():
    # the table compares params and updates; here every state buffer: v_row, v_col, v, the
    # momentum (optax's ema) and the counts
    case = CASES[FACTORED_ROW]
    params = random_tree(1, PARITY_SHAPES)
    grads = stacked_gradients(2, shapes={"shapes": PARITY_SHAPES})
    ours = run_case(case, case.lr, params, grads, coupled=True)[1]
    theirs = run_case(case, case.lr, params, grads, library="optax", coupled=True)[1]
    ours_leaves, their_leaves = jax.tree.leaves(ours), jax.tree.leaves(theirs)
    assert len(ours_leaves) == len(their_leaves)
    chex.assert_trees_all_close(ours_leaves, their_leaves, rtol=1e-6, atol=1e-6)


def test_adafactor_complex_momentum_stays_complex_and_matches_optax_complex64():
    target = jnp.array([1 + 2j, -0.5 + 0.25j, 3 - 1j], jnp.complex64)

    def run(lib, **kw):
        tx = lib.adafactor(0.1, momentum=0.9, **kw)
        params = {"z": jnp.full(3, 0.5 + 0.5j, jnp.complex64)}
        state = tx.init(params)
        for _ in range(10):
            grads = {"z": params["z"] - target}
            updates, state = tx.update(grads, state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
        return params, state

    ours, state = run(dlopt)  # dtype_momentum=float32 means complex64 for complex params
    assert state[4].ema["z"].dtype == jnp.complex64
    with jax.numpy_dtype_promotion("standard"):
        theirs, _ = run(optax, dtype_momentum=jnp.complex64)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_adafactor_decay_offset_starts_the_schedule_instead_of_nan():
    params = {"w": jnp.ones((4, 3))}
    grads = {"w": jnp.full((4, 3), 0.5)}
    tx = dlopt.scale_by_factored_rms(step_offset=10)
    updates, state = tx.update(grads, tx.init(params), params)
    # before the offset the schedule's first value, 1 - 1^-0.8 = 0: v = g^2 + eps
    chex.assert_trees_all_close(updates, {"w": jnp.ones((4, 3))}, rtol=1e-6)
    with jax.numpy_dtype_promotion("standard"):
        reference = optax.scale_by_factored_rms(step_offset=10)
        theirs, _ = reference.update(grads, reference.init(params), params)
    assert not np.isfinite(theirs["w"]).any()  # optax: (0 - 10 + 1) ** -0.8 is NaN
    # from a restored state past the offset both agree
    ours_late, _ = tx.update(grads, tx.init(params)._replace(count=jnp.asarray(15)), params)
    with jax.numpy_dtype_promotion("standard"):
        theirs_late, _ = reference.update(
            grads, reference.init(params)._replace(count=jnp.asarray(15)), params
        )
    chex.assert_trees_all_close(ours_late, theirs_late, rtol=1e-6)


def test_factored_rms_without_params_equals_with_params():
    params = random_tree(3, PARITY_SHAPES)
    tx = dlopt.scale_by_factored_rms(min_dim_size_to_factor=3)
    state = tx.init(params)
    chex.assert_trees_all_equal(tx.update(params, state)[0], tx.update(params, state, params)[0])


def test_adafactor_mu_dtype_and_dtype_momentum_name_one_buffer():
    params = {"w": jnp.ones((2, 3))}

    def momentum_state(tx):
        return next(s for s in tx.init(params) if isinstance(s, EmaState)).ema["w"].dtype

    assert momentum_state(dlopt.adafactor(momentum=0.9)) == jnp.float32
    assert momentum_state(dlopt.adafactor(momentum=0.9, mu_dtype=jnp.bfloat16)) == jnp.bfloat16
    bf16 = dlopt.adafactor(momentum=0.9, dtype_momentum=jnp.bfloat16, mu_dtype="bfloat16")
    assert momentum_state(bf16) == jnp.bfloat16
    with pytest.raises(ValueError, match="dtype_momentum and mu_dtype"):
        dlopt.adafactor(momentum=0.9, dtype_momentum=jnp.bfloat16, mu_dtype=jnp.float16)
    with pytest.raises(TypeError, match="dtype_momentum"):
        dlopt.adafactor(momentum=0.9, dtype_momentum="no-such-dtype")
    with pytest.raises(ValueError, match="accumulator_dtype and mu_dtype"):
        dlopt.signum(0.1, accumulator_dtype=jnp.bfloat16, mu_dtype=jnp.float32)
    assert dlopt.signum(0.1, mu_dtype=jnp.bfloat16).init(params)[0].ema["w"].dtype == jnp.bfloat16


def test_adafactor_nu_dtype_stores_the_statistics():
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    state = dlopt.adafactor(min_dim_size_to_factor=2, nu_dtype=jnp.bfloat16).init(params)[0]
    assert {x.dtype for x in jax.tree.leaves((state.v_row, state.v_col, state.v))} == {
        jnp.dtype(jnp.bfloat16)
    }


# --- SM3: optax raises on scalar leaves, so parity runs on the tree without the scalar

NO_SCALAR = {k: v for k, v in PARITY_SHAPES.items() if k != "scalar"}


def test_sm3_matches_optax_for_100_steps_without_scalars():
    case = CASES["sm3"]
    params = random_tree(1, NO_SCALAR)
    grads = stacked_gradients(2, shapes={"shapes": NO_SCALAR})
    ours = run_case(case, case.lr, params, grads, coupled=True)
    theirs = run_case(case, case.lr, params, grads, library="optax", coupled=True)
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(ours[2], theirs[2], rtol=1e-6, atol=1e-6)
    # the per-axis accumulators (mu) and the momentum (nu)
    chex.assert_trees_all_close(ours[1][0].mu, theirs[1][0].mu, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(ours[1][0].nu, theirs[1][0].nu, rtol=1e-6, atol=1e-6)
    assert jax.tree.map(jnp.shape, ours[1][0].mu)["big"] == [(130,), (140,)]


def test_sm3_scalar_leaves_follow_the_vector_rule():
    tx = dlopt.scale_by_sm3(b1=0.5)
    scalar, vector = {"s": jnp.asarray(0.7)}, {"s": jnp.asarray([0.7])}
    s_scalar, s_vector = tx.init(scalar), tx.init(vector)
    for g in (0.3, -1.2, 0.5):
        u_scalar, s_scalar = tx.update({"s": jnp.asarray(g)}, s_scalar, scalar)
        u_vector, s_vector = tx.update({"s": jnp.asarray([g])}, s_vector, vector)
        np.testing.assert_allclose(u_scalar["s"], u_vector["s"][0], rtol=1e-7)
    assert s_scalar.mu["s"][0].shape == ()


def test_sm3_equations_for_three_steps():
    # a (2, 3) matrix: row and column accumulators, nu'(i,j) = g^2 + min(row_i, col_j)
    g = [np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]) * (k + 1) for k in range(3)]
    b1, eps = 0.9, 1e-8
    row, col, m = np.zeros(2), np.zeros(3), np.zeros((2, 3))
    tx = dlopt.scale_by_sm3(b1=b1, eps=eps)
    params = {"w": jnp.zeros((2, 3))}
    state = tx.init(params)
    for gk in g:
        acc = gk**2 + np.minimum(row[:, None], col[None, :])
        scaled = np.where(acc > 0, gk / np.sqrt(acc + eps), 0.0)
        m = b1 * m + (1 - b1) * scaled
        row, col = acc.max(axis=1), acc.max(axis=0)
        updates, state = tx.update({"w": jnp.asarray(gk, jnp.float32)}, state, params)
        np.testing.assert_allclose(updates["w"], m, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(state.mu["w"][0], row, rtol=1e-6)
    np.testing.assert_allclose(state.mu["w"][1], col, rtol=1e-6)


def test_sm3_rejects_complex_params_naming_the_leaf():
    with pytest.raises(TypeError, match=r"params\['z'\] has dtype complex64"):
        dlopt.sm3(0.1).init({"z": jnp.zeros(2, jnp.complex64)})


# --- Polyak's step size (update needs value=; not in the table, whose runners pass none)


@functools.cache
def polyak_runner(library: str, variant: str):
    lib = {"dlopt": dlopt, "optax": optax}[library]

    def run(params, grads, values):
        tx = lib.polyak_sgd(max_learning_rate=0.5, f_min=0.1, eps=1e-3, variant=variant)

        def body(carry, xs):
            p, s = carry
            g, value = xs
            g = jax.tree.map(lambda n, q: n + 0.5 * q, g, p)
            u, s = tx.update(g, s, p, value=value)
            return (jax.tree.map(lambda a, b: a + b, p, u), s), u

        return jax.lax.scan(body, (params, tx.init(params)), (grads, values))

    return jax.jit(run)


@pytest.mark.parametrize("variant", ["sps", "sps+"])
def test_polyak_sgd_matches_optax_for_100_steps(variant):
    params = random_tree(1, PARITY_SHAPES)
    grads = stacked_gradients(2, shapes={"shapes": PARITY_SHAPES})
    values = jnp.asarray(np.random.default_rng(0).uniform(-1.0, 50.0, 100), jnp.float32)
    (ours, _), our_updates = polyak_runner("dlopt", variant)(params, grads, values)
    with jax.numpy_dtype_promotion("standard"):
        (theirs, _), their_updates = polyak_runner("optax", variant)(params, grads, values)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(our_updates, their_updates, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_polyak_step_is_the_polyak_formula(scaling):
    # w <- w - s min((f(w) - f*) / (||g||^2 + eps), gamma_max) g, on f(w) = sum(A (w - C)^2)
    a, c, f_star, eps, gamma = np.array([1.0, 3.0]), np.array([0.5, -1.0]), 0.2, 1e-3, 0.4

    def loss(w):
        return jnp.sum(jnp.asarray(a, jnp.float32) * (w - jnp.asarray(c, jnp.float32)) ** 2)

    tx = dlopt.polyak_sgd(gamma, scaling, f_min=f_star, eps=eps)
    w, expected = jnp.asarray([2.0, 1.0], jnp.float32), np.array([2.0, 1.0])
    state = tx.init(w)
    for _ in range(3):
        value, grad = jax.value_and_grad(loss)(w)
        updates, state = tx.update(grad, state, w, value=value)
        w = w + updates
        g = 2 * a * (expected - c)
        step = min((np.sum(a * (expected - c) ** 2) - f_star) / (g @ g + eps), gamma)
        expected = expected - scaling * step * g
        np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_polyak_sps_plus_clips_the_gap_and_sps_ascends():
    tx_plus, tx = dlopt.scale_by_polyak(f_min=2.0, variant="sps+"), dlopt.scale_by_polyak(2.0)
    g = {"w": jnp.asarray([1.0, 1.0])}
    assert float(tx_plus.update(g, tx_plus.init(g), value=1.0)[0]["w"][0]) == 0.0
    np.testing.assert_allclose(tx.update(g, tx.init(g), value=1.0)[0]["w"], [-0.5, -0.5])
    zero = {"w": jnp.zeros(2)}  # ||g||^2 + eps below machine epsilon: no step, not NaN
    assert float(jnp.max(jnp.abs(tx.update(zero, tx.init(zero), value=5.0)[0]["w"]))) == 0.0


def minimize_with_value(tx, loss, params, steps):
    def body(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p, value=value)
        return (dlopt.apply_updates(p, u), s), None

    run = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))
    return run((params, tx.init(params)))[0][0]


def test_polyak_sgd_converges_inside_a_chain_on_the_table_problems():
    # the table's bars, with value= passed through dlopt.chain (an extra-args transform)
    assert isinstance(dlopt.polyak_sgd(), dlopt.GradientTransformationExtraArgs)
    schedule = dlopt.cosine_decay_schedule(1.0, 2000)
    quad = dlopt.chain(dlopt.identity(), dlopt.polyak_sgd(scaling=schedule))
    x = minimize_with_value(quad, quadratic, {"x": jnp.zeros(3, jnp.float32)}, 2000)["x"]
    chex.assert_trees_all_close(x, QUADRATIC_CENTER, atol=1e-3)
    schedule = dlopt.cosine_decay_schedule(1.0, 10_000)
    rosen = dlopt.chain(dlopt.polyak_sgd(max_learning_rate=0.1, scaling=schedule))
    xy = minimize_with_value(rosen, rosenbrock, {"xy": jnp.array([-1.0, 1.0])}, 10_000)
    chex.assert_trees_all_close(xy["xy"], jnp.ones(2), atol=0.05)
    assert float(rosenbrock(xy)) < 3e-3


# --- noisy SGD: the key


def noisy_updates(tx, steps=3):
    params = {"w": jnp.zeros((50, 40)), "b": jnp.zeros(3)}
    state, out = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        out.append(updates)
    return out, state


def test_noisy_sgd_is_reproducible_from_its_key():
    first, state = noisy_updates(dlopt.noisy_sgd(1.0, key=3))
    chex.assert_trees_all_equal(first, noisy_updates(dlopt.noisy_sgd(1.0, key=3))[0])
    for same in (jax.random.key(3), jax.random.PRNGKey(3), np.int64(3)):
        chex.assert_trees_all_equal(first, noisy_updates(dlopt.noisy_sgd(1.0, key=same))[0])
    chex.assert_trees_all_equal(first, noisy_updates(dlopt.noisy_sgd(1.0, seed=3))[0])
    other, _ = noisy_updates(dlopt.noisy_sgd(1.0, key=4))
    assert not np.allclose(first[0]["w"], other[0]["w"])
    assert not np.allclose(first[0]["w"], first[1]["w"])  # a fresh draw at every step
    assert state[0].rng_key.dtype == jnp.uint32  # raw key data: a plain array state
    # a restored state continues the same stream
    resumed, _ = noisy_updates(dlopt.noisy_sgd(1.0, key=3), steps=5)
    chex.assert_trees_all_equal(resumed[:3], first)


def test_noise_has_the_annealed_variance():
    eta, gamma = 0.04, 0.55
    updates, _ = noisy_updates(dlopt.noisy_sgd(1.0, eta=eta, gamma=gamma, key=0), steps=3)
    for t, u in enumerate(updates, start=1):
        expected = np.sqrt(eta / t**gamma)
        np.testing.assert_allclose(np.std(u["w"]), expected, rtol=0.05)
        assert abs(float(np.mean(u["w"]))) < 4 * expected / np.sqrt(u["w"].size)


def test_noisy_sgd_key_arguments_are_checked():
    with pytest.raises(ValueError, match="key and seed"):
        dlopt.noisy_sgd(0.1, key=0, seed=0)
    with pytest.raises(TypeError, match="key"):
        dlopt.noisy_sgd(0.1, key=1.5)


# --- optimistic methods


def test_optimistic_gradient_equations_for_three_steps():
    grads = [np.array([1.0, -2.0]), np.array([0.5, 4.0]), np.array([-3.0, 1.0])]
    tx = dlopt.scale_by_optimistic_gradient(alpha=0.7, beta=0.3)
    state, previous = tx.init({"w": jnp.zeros(2)}), grads[0]
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state)
        np.testing.assert_allclose(updates["w"], (0.7 + 0.3) * g - 0.3 * previous, rtol=1e-6)
        previous = g


def test_optimistic_gradient_takes_schedules_for_alpha_and_beta():
    grads = [jnp.asarray([1.0, -2.0]), jnp.asarray([0.5, 4.0]), jnp.asarray([-3.0, 1.0])]
    tx = dlopt.scale_by_optimistic_gradient(
        alpha=lambda t: 1.0 + t.astype(jnp.float32), beta=lambda t: 0.5 * t.astype(jnp.float32)
    )
    state, previous = tx.init({"w": jnp.zeros(2)}), grads[0]
    for t, g in enumerate(grads):
        updates, state = tx.update({"w": g}, state)
        expected = (1.0 + t + 0.5 * t) * g - 0.5 * t * previous
        np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
        previous = g


def bilinear_distance(tx, steps=1000):
    # min_x max_y x y: the ascent player's gradient is negated
    def step(carry, _):
        params, state = carry
        gx, gy = params[1], -params[0]
        updates, state = tx.update((gx, gy), state, params)
        return (dlopt.apply_updates(params, updates), state), None

    params = (jnp.asarray(1.0), jnp.asarray(2.0))
    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
    return float(jnp.hypot(*params))


def test_optimism_converges_on_a_bilinear_game_where_gradient_descent_spirals_out():
    start = float(np.hypot(1.0, 2.0))
    assert bilinear_distance(dlopt.sgd(0.2)) > 1e3 * start
    assert bilinear_distance(dlopt.optimistic_gradient_descent(0.2)) < 1e-6
    assert bilinear_distance(dlopt.adam(1e-2), 1025) > 0.5 * start  # Adam cycles
    # optax's docstring example: the distance falls to 0.001 after 1024 steps
    assert bilinear_distance(dlopt.optimistic_adam_v2(1.0, alpha=1e-2, beta=1.0), 1025) < 2e-3


# --- the documented equations, three steps in float64 numpy

A = np.array([1.0, 2.0, 4.0, 0.5])
C = np.array([1.0, -2.0, 3.0, 0.5])
W0 = np.array([0.3, 0.7, -1.1, 2.0])


def grad_fn(w):
    return A * (w - C)


def iterates(tx, steps=3):
    params = jnp.asarray(W0, jnp.float32)
    state, out = tx.init(params), []
    for _ in range(steps):
        g = jnp.asarray(grad_fn(np.asarray(params, np.float64)), jnp.float32)
        updates, state = tx.update(g, state, params)
        params = params + updates
        out.append(np.asarray(params))
    return out


def classic_fromage(lr):
    w = W0.copy()
    for _ in range(3):
        g = grad_fn(w)
        w = (w - lr * np.linalg.norm(w) / np.linalg.norm(g) * g) / np.sqrt(1 + lr**2)
        yield w


def classic_lars(lr, wd, coef, mu):
    w, v = W0.copy(), 0.0
    for _ in range(3):
        d = grad_fn(w) + wd * w
        d = coef * np.linalg.norm(w) / np.linalg.norm(d) * d
        v = mu * v - lr * d
        w = w + v
        yield w


def classic_lamb(lr, b1, b2, eps, wd):
    w, m, v = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        r = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * w
        w = w - lr * np.linalg.norm(w) / np.linalg.norm(r) * r
        yield w


def classic_signum(lr, beta):
    w, m = W0.copy(), 0.0
    for _ in range(3):
        m = beta * m + (1 - beta) * grad_fn(w)
        w = w - lr * np.sign(m)
        yield w


def classic_adafactor_vector(lr, momentum):
    # a vector is not factored: v = beta_t v + (1 - beta_t)(g^2 + eps), beta_t = 1 - t^-0.8
    w, v, m = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        beta = 1 - t**-0.8
        v = beta * v + (1 - beta) * (g * g + 1e-30)
        u = g / np.sqrt(v)
        u = u / max(1.0, np.sqrt(np.mean(u * u)))  # clipping_threshold 1
        u = lr * max(np.sqrt(np.mean(w * w)), 1e-3) * u
        m = momentum * m + (1 - momentum) * u
        w = w - m
        yield w


def classic_noisy_sgd_without_noise(lr):
    w = W0.copy()
    for _ in range(3):
        w = w - lr * grad_fn(w)
        yield w


EQUATIONS = {
    "fromage": (dlopt.fromage(0.1), classic_fromage(0.1)),
    "lars": (dlopt.lars(1.0, 0.1, trust_coefficient=0.01), classic_lars(1.0, 0.1, 0.01, 0.9)),
    "lamb": (dlopt.lamb(0.1, eps=0.01, weight_decay=0.1), classic_lamb(0.1, 0.9, 0.999, 0.01, 0.1)),
    "sign_sgd": (dlopt.sign_sgd(0.1), classic_signum(0.1, 0.0)),
    "signum": (dlopt.signum(0.1, beta=0.5), classic_signum(0.1, 0.5)),
    "adafactor": (dlopt.adafactor(0.1, momentum=0.5), classic_adafactor_vector(0.1, 0.5)),
    "noisy_sgd_eta0": (dlopt.noisy_sgd(0.1, eta=0.0), classic_noisy_sgd_without_noise(0.1)),
}


@pytest.mark.parametrize("name", EQUATIONS)
def test_three_steps_equal_the_documented_equations(name):
    tx, reference = EQUATIONS[name]
    for ours, expected in zip(iterates(tx), reference, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


# --- trust ratio and block clipping details


def test_trust_ratio_is_one_where_a_norm_is_zero_and_floored_by_min_norm():
    tx = dlopt.scale_by_trust_ratio()
    u = {"zero_param": jnp.ones(3), "zero_update": jnp.zeros(2)}
    p = {"zero_param": jnp.zeros(3), "zero_update": jnp.ones(2)}
    chex.assert_trees_all_equal(tx.update(u, tx.init(p), p)[0], u)
    floored = dlopt.scale_by_trust_ratio(min_norm=1.0)
    small = {"w": jnp.asarray([0.1, 0.0])}
    # ||w|| = 0.1 and ||u|| = 0.1 are both raised to 1: ratio 1
    chex.assert_trees_all_close(floored.update(small, floored.init(small), small)[0], small)


def test_clip_by_block_rms_keeps_the_imaginary_part_like_optax():
    u = {"z": jnp.asarray([3 + 4j, 1 - 1j], jnp.complex64)}
    ours = dlopt.clip_by_block_rms(1.0).update(u, ())[0]
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.clip_by_block_rms(1.0).update(u, ())[0]
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6)
    assert float(jnp.max(jnp.abs(jnp.imag(ours["z"])))) > 0


def test_every_row_is_in_the_table():
    names = {case.name for case in cases_large_batch.CASES}
    assert {"adafactor", "sm3", "lamb", "lars", "fromage", "sign_sgd", "signum"} <= names
    assert {"optimistic_gradient_descent", "optimistic_adam_v2", "noisy_sgd"} <= names
    assert all(name in CASES for name in names)


# --- numerics: counts saturate, mu_dtype / nu_dtype set the buffers' dtypes

COUNTED = {
    "adafactor": lambda: dlopt.adafactor(1e-2, min_dim_size_to_factor=2, momentum=0.9),
    "sm3": lambda: dlopt.sm3(0.1),
    "lamb": lambda: dlopt.lamb(1e-2),
    "signum": lambda: dlopt.signum(1e-2),
    "optimistic_adam_v2": lambda: dlopt.optimistic_adam_v2(1e-2),
    "noisy_sgd": lambda: dlopt.noisy_sgd(1e-2),
    "fromage_schedule": lambda: dlopt.fromage(dlopt.cosine_decay_schedule(1e-2, 10)),
}


@pytest.mark.parametrize("name", COUNTED)
def test_step_counts_saturate_at_int32_max(name):
    tx = COUNTED[name]()
    params = random_tree(0, {"w": (3, 2), "b": (2,)})
    top = jnp.iinfo(jnp.int32).max
    state = _map_counts(lambda c: jnp.full_like(c, top), tx.init(params))
    for _ in range(2):
        updates, state = tx.update(params, state, params)
        seen = counts(state)
        assert seen and all(c.dtype == jnp.int32 and int(c) == top for c in seen)
        chex.assert_tree_all_finite(updates)


BUFFERS = {  # (factory with mu_dtype/nu_dtype, state field -> which dtype it follows)
    "sm3": (lambda **kw: dlopt.sm3(0.1, **kw), {"nu": "mu_dtype", "mu": "nu_dtype"}),
    "lamb": (lambda **kw: dlopt.lamb(1e-2, **kw), {"mu": "mu_dtype", "nu": "nu_dtype"}),
    "lars": (lambda **kw: dlopt.lars(0.1, mu_dtype=kw["mu_dtype"]), {"trace": "mu_dtype"}),
    "optimistic_adam_v2": (
        lambda **kw: dlopt.optimistic_adam_v2(1e-2, **kw),
        {"mu": "mu_dtype", "nu": "nu_dtype", "previous_gradient": "mu_dtype"},
    ),
    "optimistic_gradient_descent": (
        lambda **kw: dlopt.optimistic_gradient_descent(1e-2, mu_dtype=kw["mu_dtype"]),
        {"previous_gradient": "mu_dtype"},
    ),
}


def _field_dtypes(state, field) -> set:
    found = set()

    def visit(node):
        if hasattr(node, "_fields"):
            for name in node._fields:
                value = getattr(node, name)
                if name == field:
                    found.update(x.dtype for x in jax.tree.leaves(value))
                else:
                    visit(value)
        elif isinstance(node, tuple | list):
            for child in node:
                visit(child)

    visit(state)
    return found


@pytest.mark.parametrize("name", BUFFERS)
def test_mu_dtype_and_nu_dtype_set_their_buffers(name):
    build, fields = BUFFERS[name]
    dtypes = {"mu_dtype": jnp.dtype(jnp.bfloat16), "nu_dtype": jnp.dtype(jnp.float16)}
    tx = build(**dtypes)
    params = random_tree(0, {"w": (3, 2), "b": (2,)})
    state = tx.init(params)
    updates, state = tx.update(params, state, params)
    for field, which in fields.items():
        assert _field_dtypes(state, field) == {dtypes[which]}, (field, which)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_tree_all_finite(updates)
