"""Adam relatives and the torch/Keras optimizers, beyond the table in cases_adam_family.py.

* signatures and state field names against optax;
* RAdam's rectification against a float64 evaluation of the paper's formula, and a whole
  RAdam run against float64 (where optax's float32 rectification drifts);
* the documented equations of each optax-shared optimizer, by hand in float64, 3 steps;
* parity with torch.optim (float64 torch is the reference) for RAdam, Rprop and ASGD;
* FTRL against a numpy transcription of Keras 3's ``Ftrl.update_step``.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from support.optimizers import W0, dlopt_iterates, grad_fn, optax_signature_prefix

import dlopt
from dlopt.optimizers.radam import rectification

# --- names, signatures and state fields are optax's

OPTAX_NAMES = [
    "radam", "scale_by_radam", "amsgrad", "scale_by_amsgrad", "adabelief", "scale_by_belief",
    "yogi", "scale_by_yogi", "adan", "scale_by_adan", "adamaxw", "novograd",
    "scale_by_novograd", "rprop", "scale_by_rprop",
]  # fmt: skip


@pytest.mark.parametrize("name", OPTAX_NAMES)
def test_signature_matches_optax(name):
    optax_signature_prefix(getattr(dlopt, name), getattr(optax, name))


STATES = ["ScaleByAmsgradState", "ScaleByBeliefState", "ScaleByAdanState",
          "ScaleByNovogradState", "ScaleByRpropState"]  # fmt: skip


@pytest.mark.parametrize("name", STATES)
def test_state_fields_match_optax(name):
    assert getattr(dlopt, name)._fields == getattr(optax, name)._fields


def test_radam_and_yogi_states_are_adams_as_in_optax():
    params = {"w": jnp.zeros(2)}
    for name in ("scale_by_radam", "scale_by_yogi"):
        ours, theirs = getattr(dlopt, name)().init(params), getattr(optax, name)().init(params)
        assert isinstance(ours, dlopt.ScaleByAdamState) and ours._fields == theirs._fields


# --- RAdam's rectification, exact where optax's float32 formula cancels

T = np.arange(1, 10_001)


def paper_rectification(b2):
    """rho_t and r_t of Liu et al. (2020), eq. (5)-(6), evaluated in float64."""
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * T * b2**T / (1 - b2**T)
    with np.errstate(invalid="ignore"):
        r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
    return rho, r


@functools.cache
def rectification_fn(b2):
    return jax.jit(jax.vmap(lambda t, b: rectification(t, b2 if b is None else b), (0, None)))


@pytest.mark.parametrize("b2", [0.9, 0.99, 0.999, 0.9999])
def test_rectification_equals_float64_to_1e6(b2):
    rho64, r64 = paper_rectification(b2)
    rho, r = map(np.asarray, rectification_fn(b2)(jnp.asarray(T, jnp.int32), None))
    np.testing.assert_allclose(rho, rho64, rtol=1e-6)
    used = rho64 >= 5  # where r_t scales the step (the default threshold)
    assert used[5] and not used[4]  # t = 6 is the first rectified step for these b2
    np.testing.assert_allclose(r[used], r64[used], rtol=1e-6)
    # the first steps are where optax's float32 rho_inf - 2 t b2^t / (1 - b2^t) cancels
    np.testing.assert_allclose(rho[:50], rho64[:50], rtol=1e-6, atol=0)


@pytest.mark.parametrize("b2", [0.99, 0.9999])
def test_rectification_with_a_traced_b2_is_exact_for_its_float32_value(b2):
    b2_32 = float(np.float32(b2))  # inject_hyperparams hands a float32 b2
    rho64, r64 = paper_rectification(b2_32)
    rho, r = map(np.asarray, rectification_fn(None)(jnp.asarray(T, jnp.int32), jnp.float32(b2)))
    np.testing.assert_allclose(rho, rho64, rtol=2e-6)
    np.testing.assert_allclose(r[rho64 >= 5], r64[rho64 >= 5], rtol=2e-6)


NOISE = np.random.default_rng(0).standard_normal((100, 64))  # gradient noise, 100 steps
P0 = np.random.default_rng(1).standard_normal(64)
COUPLING = 0.5  # gradients are NOISE[t] + 0.5 * params: they depend on the iterates


@functools.cache
def scan_runner(build, coupling):
    """Jitted ``(p0, noise) -> (params after each step, final state)`` for ``build()``."""

    def run(p0, noise):
        tx = build()

        def body(carry, n):
            p, s = carry
            u, s = tx.update(n + coupling * p, s, p)
            p = dlopt.apply_updates(p, u)
            return (p, s), p

        (_, state), path = jax.lax.scan(body, (p0, tx.init(p0)), noise)
        return path, state

    return jax.jit(run)


def dlopt_path(build, p0=P0, noise=NOISE, coupling=COUPLING):
    p0, noise = jnp.asarray(p0, jnp.float32), jnp.asarray(noise, jnp.float32)
    path, state = scan_runner(build, coupling)(p0, noise)
    return np.asarray(path, np.float64), state


def radam_float64(p0, noise, coupling=COUPLING, torch_eps=False, lr=1e-2, b1=0.9, b2=0.999):
    """RAdam in float64, params after each step: dlopt's (optax's) rule, eps added to
    sqrt(v_hat); or, with ``torch_eps``, torch's: eps added to sqrt(v), times sqrt(1 - b2^t)."""
    w, m, v, path = p0.copy(), 0.0, 0.0, []
    rho_inf, eps = 2 / (1 - b2) - 1, 1e-8
    for t, n in enumerate(noise, start=1):
        g = n + coupling * w
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, bc2 = m / (1 - b1**t), 1 - b2**t
        rho = rho_inf - 2 * t * b2**t / bc2
        if rho >= 5:  # torch: rho > 5; rho_t is never 5 at an integer t for b2 = 0.999
            r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            if torch_eps:
                w = w - lr * r * m_hat * np.sqrt(bc2) / (np.sqrt(v) + eps)
            else:
                w = w - lr * r * m_hat / (np.sqrt(v / bc2) + eps)
        else:
            w = w - lr * m_hat
        path.append(w)
    return np.asarray(path)


def test_radam_run_equals_float64():
    # optax's float32 rectification leaves its params ~5e-5 from this float64 run on the
    # parity tree (see cases_adam_family.RADAM_RTOL); dlopt's stay within float32 error.
    path, _ = dlopt_path(lambda: dlopt.radam(1e-2))
    np.testing.assert_allclose(path, radam_float64(P0, NOISE), rtol=0, atol=5e-6)


def torch_run(make_optimizer, p0=P0, noise=NOISE, coupling=COUPLING):
    """float64 torch: params after each step, and the optimizer (for its state)."""
    torch.set_default_dtype(torch.float64)  # torch keeps scalar state (ASGD's eta, mu) in it
    try:
        w = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
        optimizer = make_optimizer([w])
        path = []
        for n in noise:
            w.grad = torch.tensor(n) + coupling * w.detach()
            optimizer.step()
            path.append(w.detach().numpy().copy())
        return np.asarray(path), optimizer, w
    finally:
        torch.set_default_dtype(torch.float32)


def torch_radam(p0, noise, coupling=COUPLING):
    make = functools.partial(torch.optim.RAdam, lr=1e-2, foreach=False)
    return torch_run(make, p0, noise, coupling)[0]


def test_radam_matches_torch_float64():
    # The rules differ in two places that do not show here: torch rectifies at rho_t > 5,
    # dlopt and optax at rho_t >= threshold (5); torch adds eps to sqrt(v_t), dlopt to
    # sqrt(v_t / (1 - b2^t)), a 1e-8 difference against gradients of order 1. The tolerance
    # is float32's (measured 1.9e-6), mostly from the float32 bias correction 1 - b2^t
    # (1.3e-5 relative at t = 1, as in optax).
    path, _ = dlopt_path(lambda: dlopt.radam(1e-2))
    np.testing.assert_allclose(path, torch_radam(P0, NOISE), rtol=0, atol=5e-6)


def test_radam_differs_from_torch_only_by_eps_placement():
    # With gradients of the order of eps the placement decides the step: torch's iterates
    # are its rule's (torch_eps=True), dlopt's are the documented rule's, and the two differ.
    noise = NOISE[:30] * 1e-8  # gradients independent of the iterates: no chaos
    path, _ = dlopt_path(lambda: dlopt.radam(1e-2), noise=noise, coupling=0.0)
    expected = torch_radam(P0, noise, coupling=0.0)
    np.testing.assert_allclose(expected, radam_float64(P0, noise, 0.0, torch_eps=True), rtol=1e-9)
    np.testing.assert_allclose(path, radam_float64(P0, noise, 0.0), rtol=1e-5)
    assert np.max(np.abs(path - expected)) > 1e-3  # steps of ~lr differ by a factor ~2


# --- option variants against optax on a small tree: params and every state buffer

VARIANTS = {
    "amsgrad_uncorrected": (
        lambda lib: lib.amsgrad(1e-2, bias_correction_mu=False, bias_correction_nu=False),
        1e-6,
    ),
    "adabelief_nesterov": (lambda lib: lib.adabelief(1e-2, nesterov=True), 1e-6),
    "novograd_weight_decay": (lambda lib: lib.novograd(1e-2, weight_decay=1e-2), 1e-6),
    "yogi_eps_root_initial": (
        lambda lib: lib.chain(
            lib.scale_by_yogi(eps=1e-4, eps_root=1e-8, initial_accumulator_value=0.1),
            lib.scale(-1e-2),
        ),
        1e-6,
    ),
    "adan_weight_decay": (lambda lib: lib.adan(1e-2, weight_decay=1e-2, eps_root=0.0), 1e-6),
    # b2 = 0.99: rho_inf = 199, optax's float32 cancellation is smaller than at 0.999
    "radam_threshold": (lambda lib: lib.radam(1e-2, b2=0.99, threshold=4.5), 2e-5),
    "radam_nesterov": (lambda lib: lib.radam(1e-2, b2=0.99, nesterov=True), 2e-5),
}


@functools.cache
def library_runner(name, library):
    lib = {"dlopt": dlopt, "optax": optax}[library]
    return scan_runner(lambda: VARIANTS[name][0](lib), COUPLING)


@pytest.mark.parametrize("name", VARIANTS)
def test_option_variants_match_optax_with_their_whole_state(name):
    p0, noise = jnp.asarray(P0[:16], jnp.float32), jnp.asarray(NOISE[:50, :16], jnp.float32)
    ours = library_runner(name, "dlopt")(p0, noise)
    with jax.numpy_dtype_promotion("standard"):
        theirs = library_runner(name, "optax")(p0, noise)
    rtol = VARIANTS[name][1]
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=rtol, atol=rtol)
    # the scale_by_* state, first in each chain: nu_max, adan's m, v, n, g, ...
    ours_state, theirs_state = ours[1][0], theirs[1][0]
    assert ours_state._fields == theirs_state._fields
    for a, b in zip(jax.tree.leaves(ours_state), jax.tree.leaves(theirs_state), strict=True):
        chex.assert_trees_all_close(a, b.astype(a.dtype), rtol=rtol, atol=rtol)


# --- the documented equations, by hand in float64, 3 steps (test_optimizers' problem)


def classic_amsgrad(lr, b1=0.9, b2=0.999, eps=1e-8):
    w, m, v, v_max = W0.copy(), 0.0, 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v / (1 - b2**t))
        w = w - lr * m / (1 - b1**t) / (np.sqrt(v_max) + eps)
        yield w


def classic_adabelief(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    w, m, s = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root
        w = w - lr * m / (1 - b1**t) / (np.sqrt(s / (1 - b2**t)) + eps)
        yield w


def classic_yogi(lr, b1=0.9, b2=0.999, eps=1e-3, v0=1e-6):
    w, m, v = W0.copy(), v0, v0
    for t in range(1, 4):
        g = grad_fn(w)
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * np.sign(v - g * g) * g * g
        w = w - lr * m / (1 - b1**t) / (np.sqrt(v / (1 - b2**t)) + eps)
        yield w


def classic_adan(lr, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0.0):
    w, m, v, n, g_prev = W0.copy(), 0.0, 0.0, 0.0, None
    for t in range(1, 4):
        g = grad_fn(w)
        diff = 0.0 if g_prev is None else g - g_prev
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + (1 - b2) * diff) ** 2
        m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
        step = (m_hat + (1 - b2) * v_hat) / (np.sqrt(n_hat + eps_root) + eps)
        w, g_prev = w - lr * (step + weight_decay * w), g
        yield w


def classic_novograd(lr, b1=0.9, b2=0.25, eps=1e-6, weight_decay=0.0):
    w, m, v = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        v = np.sum(g * g) if t == 1 else b2 * v + (1 - b2) * np.sum(g * g)
        s = g / (np.sqrt(v) + eps) + weight_decay * w
        m = s if t == 1 else b1 * m + s
        w = w - lr * m
        yield w


def classic_adamaxw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4):
    w, m, u = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        m, u = b1 * m + (1 - b1) * g, np.maximum(b2 * u, np.abs(g) + eps)
        w = w - lr * (m / ((1 - b1**t) * u) + weight_decay * w)
        yield w


FORMULAS = {
    "amsgrad": (lambda: dlopt.amsgrad(0.1), lambda: classic_amsgrad(0.1)),
    "adabelief": (lambda: dlopt.adabelief(0.1), lambda: classic_adabelief(0.1)),
    "yogi": (lambda: dlopt.yogi(0.1), lambda: classic_yogi(0.1)),
    "adan": (
        lambda: dlopt.adan(0.1, weight_decay=0.1),
        lambda: classic_adan(0.1, weight_decay=0.1),
    ),
    "novograd": (
        lambda: dlopt.novograd(0.1, weight_decay=0.1),
        lambda: classic_novograd(0.1, weight_decay=0.1),
    ),
    "adamaxw": (
        lambda: dlopt.adamaxw(0.1, weight_decay=0.1),
        lambda: classic_adamaxw(0.1, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("name", FORMULAS)
def test_three_steps_equal_the_documented_equations(name):
    build, reference = FORMULAS[name]
    for ours, expected in zip(dlopt_iterates(build()), reference(), strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


# --- Rprop: torch.optim.Rprop's semantics


RPROP_CONFIGS = {
    "defaults": ({}, {}),
    "clamped": (
        {"eta_minus": 0.3, "eta_plus": 1.5, "min_step_size": 1e-3, "max_step_size": 0.05},
        {"etas": (0.3, 1.5), "step_sizes": (1e-3, 0.05)},
    ),
}


@pytest.mark.parametrize("config", RPROP_CONFIGS)
def test_rprop_matches_torch_float64_for_100_steps(config):
    ours, theirs = RPROP_CONFIGS[config]
    path, _ = dlopt_path(lambda: dlopt.rprop(0.02, **ours))
    expected, _, _ = torch_run(lambda p: torch.optim.Rprop(p, lr=0.02, foreach=False, **theirs))
    # the sign pattern (so every step size) is the same; float32 rounds the sums of steps
    np.testing.assert_allclose(path, expected, rtol=1e-6, atol=1e-6)


def test_rprop_first_step_moves_by_the_initial_step_size_unlike_optax():
    params = {"w": jnp.array([1.0, -1.0, 0.5, 2.0])}
    grads = {"w": jnp.array([0.3, -2.0, 0.0, 1e-9])}
    updates, _ = dlopt.rprop(0.1).update(grads, dlopt.rprop(0.1).init(params), params)
    chex.assert_trees_all_close(updates["w"], jnp.array([-0.1, 0.1, 0.0, -0.1]))
    clamped, _ = dlopt.rprop(0.1, max_step_size=0.05).update(grads, dlopt.rprop(0.1).init(params))
    chex.assert_trees_all_close(clamped["w"], jnp.array([-0.05, 0.05, 0.0, -0.05]))
    optax_updates, _ = optax.rprop(0.1).update(grads, optax.rprop(0.1).init(params))
    assert float(jnp.max(jnp.abs(optax_updates["w"]))) == 0.0  # the documented difference


def test_rprop_skips_the_step_after_a_sign_flip_and_shrinks_it():
    tx = dlopt.rprop(0.1, eta_minus=0.5, eta_plus=1.2)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    steps = []
    for g in ([1.0, 1.0], [1.0, -1.0], [1.0, -1.0], [1.0, 1.0]):
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        steps.append(np.asarray(updates["w"]))
    # w0 keeps its sign: 0.1 -> 0.12 -> 0.144 -> 0.1728. w1 flips: no move and the step
    # halves to 0.05; the flipped gradient then counts as "no previous sign" (a 0.05 move,
    # factor 1); the next flip again means no move.
    np.testing.assert_allclose(
        np.stack(steps),
        [[-0.1, -0.1], [-0.12, 0.0], [-0.144, 0.05], [-0.1728, 0.0]],
        rtol=1e-6,
    )


# --- ASGD: torch.optim.ASGD, params and the averaged params


ASGD_CONFIGS = {
    "defaults": {},
    "averaging_decay": {"lambd": 1e-2, "alpha": 0.6, "t0": 10.0, "weight_decay": 1e-2},
}


@pytest.mark.parametrize("config", ASGD_CONFIGS)
def test_asgd_matches_torch_float64_params_and_average(config):
    kwargs = ASGD_CONFIGS[config]
    path, state = dlopt_path(lambda: dlopt.asgd(0.05, **kwargs))
    expected, optimizer, w = torch_run(
        lambda p: torch.optim.ASGD(p, lr=0.05, foreach=False, **kwargs)
    )
    np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)
    ax = optimizer.state[w]["ax"].numpy()
    np.testing.assert_allclose(dlopt.asgd_averaged_params(state), ax, rtol=1e-5, atol=1e-6)
    if kwargs.get("t0") == 10.0:  # the average is really an average, not the last iterate
        assert np.max(np.abs(ax - expected[-1])) > 1e-2


def test_asgd_averaged_params_finds_the_state_inside_wrappers():
    params = {"w": jnp.ones(2)}
    tx = dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.asgd(0.1, t0=0.0))
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update({"w": jnp.array([0.5, -0.5])}, state, params)
        params = dlopt.apply_updates(params, updates)
    average = dlopt.asgd_averaged_params(state)["w"]
    assert average.shape == (2,) and not np.allclose(average, params["w"])
    injected = dlopt.inject_hyperparams(dlopt.asgd)(learning_rate=0.1)
    chex.assert_trees_all_equal(
        dlopt.asgd_averaged_params(injected.init(params)), {"w": jnp.zeros(2)}
    )
    with pytest.raises(ValueError, match="AsgdState"):
        dlopt.asgd_averaged_params(dlopt.adam(1e-3).init(params))


# --- FTRL: a numpy transcription of Keras 3's Ftrl.update_step
# (keras-team/keras, keras/src/optimizers/ftrl.py at 1937d487b0ee4cf265051c7bd0524f2fd1a2cb51)


def keras_ftrl(w0, noise, lr, lr_power=-0.5, init=0.1, l1=0.0, l2=0.0, shrink=0.0, beta=0.0,
               linear0=None):  # fmt: skip
    """Keras 3's update rule, line by line, in float64; params after each step."""
    variable = w0.copy()
    accum = np.full_like(w0, init)
    linear = np.zeros_like(w0) if linear0 is None else linear0.copy()
    path = []
    for n in noise:
        gradient = n + COUPLING * variable
        l2_reg = l2 + beta / (2.0 * lr)
        grad_to_use = gradient + 2 * shrink * variable
        new_accum = accum + np.square(gradient)
        linear = linear + (
            grad_to_use
            - (np.power(new_accum, -lr_power) - np.power(accum, -lr_power)) / lr * variable
        )
        quadratic = np.power(new_accum, -lr_power) / lr + 2 * l2_reg
        linear_clipped = np.clip(linear, -l1, l1)
        variable = (linear_clipped - linear) / quadratic
        accum = new_accum
        path.append(variable)
    return np.asarray(path)


def keras_linear_for(w0, lr, lr_power=-0.5, init=0.1, l1=0.0, l2=0.0, beta=0.0, **_):
    """The z_0 for which Keras's rule starts at w0 (what dlopt starts from): w0 = (clip(z_0,
    l1) - z_0) / quadratic_0, i.e. z_0 = -l1 sign(w0) - quadratic_0 w0."""
    quadratic = init ** (-lr_power) / lr + 2 * (l2 + beta / (2.0 * lr))
    return -l1 * np.sign(w0) - quadratic * w0


FTRL_LR = 0.1
FTRL_CONFIGS = {  # Keras's argument names, shortened
    "plain": {},
    "l1": {"l1": 0.3},
    "l2": {"l2": 0.5},
    "shrinkage": {"shrink": 0.05},
    "beta": {"beta": 0.5},
    "all": {"l1": 0.3, "l2": 0.5, "shrink": 0.05, "beta": 0.5, "lr_power": -0.7, "init": 0.5},
}


def dlopt_ftrl(lr=FTRL_LR, lr_power=-0.5, init=0.1, l1=0.0, l2=0.0, shrink=0.0, beta=0.0):
    return dlopt.ftrl(lr, lr_power, init, l1, l2, shrink, beta)


@pytest.mark.parametrize("config", FTRL_CONFIGS)
def test_ftrl_matches_keras_from_zero_params(config):
    kwargs = FTRL_CONFIGS[config]
    zeros = np.zeros_like(P0)
    path, _ = dlopt_path(lambda: dlopt_ftrl(**kwargs), p0=zeros, noise=NOISE[:50])
    expected = keras_ftrl(zeros, NOISE[:50], FTRL_LR, **kwargs)
    np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)
    if "l1" in kwargs:  # L1 gives exact zeros, the same ones as Keras
        assert 0 < np.sum(expected[-1] == 0) < expected.shape[1]
        np.testing.assert_array_equal(path[-1] == 0, expected[-1] == 0)


@pytest.mark.parametrize("config", ["plain", "all"])
def test_ftrl_starts_from_nonzero_params_where_keras_jumps(config):
    # Deliberate difference: dlopt starts FTRL from the current params, which is Keras's rule
    # with its linear z_0 set to match w0. Keras's own z_0 = 0 pulls w0 to ~0 at step 1.
    kwargs = FTRL_CONFIGS[config]
    path, _ = dlopt_path(lambda: dlopt_ftrl(**kwargs), noise=NOISE[:50])
    linear0 = keras_linear_for(P0, FTRL_LR, **kwargs)
    expected = keras_ftrl(P0, NOISE[:50], FTRL_LR, **kwargs, linear0=linear0)
    np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)
    cold = keras_ftrl(P0, NOISE[:1], FTRL_LR, **kwargs)[0]
    assert np.linalg.norm(cold) < 0.7 * np.linalg.norm(path[0])


def ftrl_schedule_reference(w0, noise, lr_fn, lr_power, init, l1, l2, shrink, beta):
    """dlopt's documented rule for a schedule, with y = lr * z, in float64."""
    w, n = w0.copy(), np.full_like(w0, init)
    eta = lr_fn(0)
    y = -(n ** (-lr_power) + beta + 2 * l2 * eta) * w - eta * l1 * np.sign(w)
    path = []
    for t, noise_t in enumerate(noise):
        eta, g = lr_fn(t), noise_t + COUPLING * w
        n_new = n + g * g
        y = y + eta * (g + 2 * shrink * w) - (n_new ** (-lr_power) - n ** (-lr_power)) * w
        w = (np.clip(y, -eta * l1, eta * l1) - y) / (n_new ** (-lr_power) + beta + 2 * eta * l2)
        n = n_new
        path.append(w)
    return np.asarray(path)


def test_ftrl_with_a_schedule_weights_each_gradient_by_its_learning_rate():
    kwargs = FTRL_CONFIGS["all"]
    schedule = dlopt.exponential_decay(FTRL_LR, 1, 0.95)
    path, _ = dlopt_path(lambda: dlopt_ftrl(schedule, **kwargs), noise=NOISE[:50])
    expected = ftrl_schedule_reference(
        P0, NOISE[:50], lambda t: FTRL_LR * 0.95**t,
        *(kwargs[k] for k in ("lr_power", "init", "l1", "l2", "shrink", "beta")),
    )  # fmt: skip
    np.testing.assert_allclose(path, expected, rtol=1e-5, atol=1e-6)


def test_ftrl_rejects_keras_invalid_values_naming_them():
    for name, value in [
        ("learning_rate_power", 0.5),
        ("initial_accumulator_value", -0.1),
        ("l1_regularization_strength", -1.0),
        ("l2_regularization_strength", -1.0),
        ("l2_shrinkage_regularization_strength", -1.0),
        ("beta", -1.0),
    ]:
        with pytest.raises(ValueError, match=name):
            dlopt.ftrl(0.1, **{name: value})


# --- hyperparameters beyond the generic probes (test_hyperparameters.py)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: dlopt.radam(1e-3, threshold=3.9), "threshold"),  # r_t of a negative number
        (lambda: dlopt.scale_by_adan(b3=1.0), "b3"),
        (lambda: dlopt.yogi(1e-3, b2=1.0), "b2"),
        (lambda: dlopt.scale_by_yogi(initial_accumulator_value=-1e-6), "initial_accumulator"),
        (lambda: dlopt.amsgrad(1e-3, eps_root=-1.0), "eps_root"),
        (lambda: dlopt.novograd(1e-3, weight_decay=-1.0), "weight_decay"),
        (lambda: dlopt.rprop(1e-3, eta_minus=1.5), "eta_minus"),
        (lambda: dlopt.rprop(1e-3, eta_plus=0.9), "eta_plus"),
        (lambda: dlopt.rprop(1e-3, min_step_size=0.1, max_step_size=0.01), "max_step_size"),
        (lambda: dlopt.asgd(1e-3, alpha=-0.5), "alpha"),
        (lambda: dlopt.asgd(1e-3, t0=float("inf")), "t0"),
    ],
)
def test_invalid_hyperparameter_raises_naming_it(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_radam_with_injected_hyperparameters_matches_the_plain_one():
    # inject_hyperparams traces b2: the rectification's traced path must agree
    b2 = float(np.float32(0.99))
    plain, _ = dlopt_path(lambda: dlopt.radam(1e-2, b2=b2))
    injected, _ = dlopt_path(lambda: dlopt.inject_hyperparams(dlopt.radam)(1e-2, b2=b2))
    np.testing.assert_allclose(injected, plain, rtol=0, atol=1e-6)
