"""Every optimizer family against optax, against its textbook equations, and on test problems.

One `OPTIMIZERS` table, assembled from one ``tests/cases_<family>.py`` file per group of
families, drives the parity, convergence and (in test_optimizer_properties.py) the property,
numerics and bad-input tests. Each row (`helpers.Case`) builds the same optimizer from either
library (``build(lib, lr)`` with ``lib`` = dlopt or optax), since the signatures match.
"""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    PARITY_SHAPES,
    QUADRATIC_CENTER,
    minimize,
    quadratic,
    random_tree,
    rosenbrock,
)
from support.optimizers import (
    W0,
    WITH_REFERENCE,
    by_case,
    dlopt_iterates,
    grad_fn,
    moment_buffers,
    optax_signature_prefix,
    run_case,
    stacked_gradients,
)

import dlopt

# --- parity with optax: 100 steps on a tree with a 130x140 matrix, a 3-D leaf, vectors and
# a conv kernel, gradients that depend on the params; params, updates and moments at rtol 1e-6


@pytest.mark.parametrize("case", WITH_REFERENCE, ids=[c.name for c in WITH_REFERENCE])
def test_matches_optax_for_100_steps(case):
    params = random_tree(1, PARITY_SHAPES)
    grads = stacked_gradients(2, shapes={"shapes": PARITY_SHAPES})
    ours = run_case(case, case.lr, params, grads, coupled=True)
    theirs = run_case(case, case.lr, params, grads, library="optax", coupled=True)
    rtol = case.rtol
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=rtol, atol=rtol)
    chex.assert_trees_all_close(ours[2], theirs[2], rtol=rtol, atol=rtol)
    our_moments, their_moments = moment_buffers(ours[1]), moment_buffers(theirs[1])
    assert their_moments.keys() <= our_moments.keys(), (their_moments.keys(), our_moments.keys())
    for field, buffers in their_moments.items():
        assert len(buffers) == len(our_moments[field]), field
        # moments average O(1) gradients that cancel: an absolute tolerance at their scale
        chex.assert_trees_all_close(our_moments[field], buffers, rtol=rtol, atol=rtol)


PUBLIC_NAMES = [
    "sgd",
    "trace",
    "adagrad",
    "scale_by_rss",
    "rmsprop",
    "scale_by_rms",
    "scale_by_stddev",
    "adadelta",
    "scale_by_adadelta",
    "adam",
    "adamw",
    "nadam",
    "nadamw",
    "scale_by_adam",
    "adamax",
    "scale_by_adamax",
    "lion",
    "scale_by_lion",
]


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_signature_matches_optax(name):
    optax_signature_prefix(getattr(dlopt, name), getattr(optax, name))


# --- the seed formulas, by hand in float64 numpy, 3 steps


def classic_sgd(lr):
    w = W0.copy()
    for _ in range(3):
        w = w - lr * grad_fn(w)
        yield w


def classic_momentum(lr, a):  # v <- a v - lr g, w <- w + v
    w, v = W0.copy(), 0.0
    for _ in range(3):
        v = a * v - lr * grad_fn(w)
        w = w + v
        yield w


def classic_nesterov(lr, a):  # v <- a v - lr grad(w + a v), w <- w + v; dlopt tracks w + a v
    w, v = W0.copy(), 0.0
    for _ in range(3):
        v = a * v - lr * grad_fn(w + a * v)
        w = w + v
        yield w + a * v


def classic_adagrad(lr, h0, eps, eps_in_sqrt):  # h <- h + g*g, w <- w - lr g / (sqrt(h) + eps)
    w, h = W0.copy(), h0
    for _ in range(3):
        g = grad_fn(w)
        h = h + g * g
        w = w - lr * g / (np.sqrt(h + eps) if eps_in_sqrt else np.sqrt(h) + eps)
        yield w


def classic_rmsprop(lr, rho, eps, eps_in_sqrt=True, centered=False, a=0.0):
    w, h, m, v = W0.copy(), 0.0, 0.0, 0.0
    for _ in range(3):
        g = grad_fn(w)
        h = rho * h + (1 - rho) * g * g
        m = rho * m + (1 - rho) * g
        var = h - m * m if centered else h
        v = a * v - lr * g / (np.sqrt(var + eps) if eps_in_sqrt else np.sqrt(var) + eps)
        w = w + v
        yield w


def classic_adadelta(rho, eps):
    w, e_g, e_x = W0.copy(), 0.0, 0.0
    for _ in range(3):
        g = grad_fn(w)
        e_g = rho * e_g + (1 - rho) * g * g
        dx = -np.sqrt(e_x + eps) / np.sqrt(e_g + eps) * g
        e_x = rho * e_x + (1 - rho) * dx * dx
        w = w + dx
        yield w


def classic_adam(lr, b1, b2, eps, nesterov=False, weight_decay=0.0):
    w, m, v = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        w = w - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * w)
        yield w


def classic_adamax(lr, b1, b2, eps):
    w, m, u = W0.copy(), 0.0, 0.0
    for t in range(1, 4):
        g = grad_fn(w)
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        w = w - lr / (1 - b1**t) * m / u
        yield w


def classic_lion(lr, b1, b2, weight_decay):
    w, m = W0.copy(), 0.0
    for _ in range(3):
        g = grad_fn(w)
        c = b1 * m + (1 - b1) * g
        w = w - lr * (np.sign(c) + weight_decay * w)
        m = b2 * m + (1 - b2) * g
        yield w


SEED_FORMULAS = {
    "sgd": (dlopt.sgd(0.1), classic_sgd(0.1)),
    "momentum": (dlopt.sgd(0.1, momentum=0.9), classic_momentum(0.1, 0.9)),
    "nesterov": (dlopt.sgd(0.1, momentum=0.9, nesterov=True), classic_nesterov(0.1, 0.9)),
    "adagrad": (dlopt.adagrad(0.5, 0.1, eps=0.0), classic_adagrad(0.5, 0.1, 0.0, False)),
    "adagrad_eps": (dlopt.adagrad(0.5, 0.0, eps=0.1), classic_adagrad(0.5, 0.0, 0.1, True)),
    "rmsprop": (dlopt.rmsprop(0.1, 0.9, eps=0.01), classic_rmsprop(0.1, 0.9, 0.01)),
    "rmsprop_eps_outside": (
        dlopt.rmsprop(0.1, 0.9, eps=0.01, eps_in_sqrt=False),
        classic_rmsprop(0.1, 0.9, 0.01, eps_in_sqrt=False),
    ),
    "rmsprop_centered_momentum": (
        dlopt.rmsprop(0.1, 0.8, eps=0.01, centered=True, momentum=0.5),
        classic_rmsprop(0.1, 0.8, 0.01, centered=True, a=0.5),
    ),
    "adadelta": (dlopt.adadelta(None, rho=0.9, eps=1e-2), classic_adadelta(0.9, 1e-2)),
    "adam": (dlopt.adam(0.1, eps=0.01), classic_adam(0.1, 0.9, 0.999, 0.01)),
    "nadam": (
        dlopt.nadam(0.1, b1=0.8, eps=0.01),
        classic_adam(0.1, 0.8, 0.999, 0.01, nesterov=True),
    ),
    "adamw": (
        dlopt.adamw(0.1, eps=0.01, weight_decay=0.1),
        classic_adam(0.1, 0.9, 0.999, 0.01, weight_decay=0.1),
    ),
    "adamax": (dlopt.adamax(0.1, eps=0.01), classic_adamax(0.1, 0.9, 0.999, 0.01)),
    "lion": (dlopt.lion(0.1, weight_decay=0.1), classic_lion(0.1, 0.9, 0.99, 0.1)),
}


@pytest.mark.parametrize("name", SEED_FORMULAS)
def test_three_steps_equal_the_documented_equations(name):
    tx, reference = SEED_FORMULAS[name]
    for ours, expected in zip(dlopt_iterates(tx), reference, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


# --- convergence


@by_case
def test_reaches_the_quadratic_minimum(case):
    steps = 2000
    tx = case.build(dlopt, dlopt.cosine_decay_schedule(case.quadratic_lr, steps))
    params = minimize(tx, quadratic, {"x": jnp.zeros(3, jnp.float32)}, steps)
    chex.assert_trees_all_close(params["x"], QUADRATIC_CENTER, atol=1e-3)


@by_case
def test_gets_close_on_rosenbrock(case):
    steps = 10_000
    tx = case.build(dlopt, dlopt.cosine_decay_schedule(case.rosenbrock_lr, steps))
    params = minimize(tx, rosenbrock, {"xy": jnp.array([-1.0, 1.0], jnp.float32)}, steps)
    chex.assert_trees_all_close(params["xy"], jnp.ones(2, jnp.float32), atol=0.05)
    assert float(rosenbrock(params)) < 3e-3
