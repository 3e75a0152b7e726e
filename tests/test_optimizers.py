"""Every optimizer family against optax, against its textbook equations, and on test problems.

One `OPTIMIZERS` table drives the parity, convergence and (in test_optimizer_properties.py)
the property, numerics and bad-input tests. Each entry builds the same optimizer from either
library (``build(lib, lr)`` with ``lib`` = dlopt or optax), since the signatures match.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    QUADRATIC_CENTER,
    gradient_sequence,
    minimize,
    quadratic,
    random_tree,
    rosenbrock,
)

import dlopt


class Case(NamedTuple):
    name: str
    build: Callable[[Any, Any], Any]  # (library, learning_rate) -> transform
    lr: float  # for parity and property runs
    quadratic_lr: float  # peak of a cosine schedule, 2000 steps
    rosenbrock_lr: float  # peak of a cosine schedule, 10000 steps
    has_moments: bool = True


def exponentially_decayed(lr):
    """The schedule ``t -> lr(t) * 0.999**t`` (``lr`` a number or a schedule)."""
    return lambda t: (lr(t) if callable(lr) else lr) * 0.999 ** t.astype(jnp.float32)


OPTIMIZERS = [
    Case("sgd", lambda lib, lr: lib.sgd(lr), 1e-2, 0.1, 2e-3, has_moments=False),
    Case("sgd_momentum", lambda lib, lr: lib.sgd(lr, momentum=0.9), 1e-2, 0.05, 1e-3),
    Case(
        "sgd_nesterov",
        lambda lib, lr: lib.sgd(lr, momentum=0.9, nesterov=True),
        1e-2,
        0.05,
        1e-3,
    ),
    Case("adagrad", lambda lib, lr: lib.adagrad(lr), 1e-2, 1.0, 1.0),
    Case("rmsprop", lambda lib, lr: lib.rmsprop(lr), 1e-2, 0.01, 2e-3),
    Case("rmsprop_centered", lambda lib, lr: lib.rmsprop(lr, centered=True), 1e-2, 0.01, 1e-3),
    Case("rmsprop_momentum", lambda lib, lr: lib.rmsprop(lr, momentum=0.9), 1e-2, 0.01, 1e-3),
    Case(
        "rmsprop_centered_nesterov",
        lambda lib, lr: lib.rmsprop(lr, centered=True, momentum=0.9, nesterov=True),
        1e-2,
        0.01,
        1e-4,
    ),
    Case(
        "rmsprop_eps_outside_bias_corrected",
        lambda lib, lr: lib.rmsprop(
            lr, decay=0.95, eps=1e-3, initial_scale=0.5, eps_in_sqrt=False, bias_correction=True
        ),
        1e-2,
        0.01,
        1e-3,
    ),
    Case("adadelta", lambda lib, lr: lib.adadelta(lr, weight_decay=1e-3), 1.0, 1.0, 0.3),
    Case("adam", lambda lib, lr: lib.adam(lr), 1e-2, 0.05, 1e-2),
    Case("adam_nesterov", lambda lib, lr: lib.adam(lr, nesterov=True), 1e-2, 0.05, 1e-2),
    Case(
        "adam_schedule",
        lambda lib, lr: lib.adam(exponentially_decayed(lr), eps_root=1e-8),
        1e-2,
        0.05,
        1e-2,
    ),
    Case("adamw", lambda lib, lr: lib.adamw(lr), 1e-2, 0.05, 1e-2),
    Case("nadam", lambda lib, lr: lib.nadam(lr), 1e-2, 0.05, 1e-2),
    Case("nadamw", lambda lib, lr: lib.nadamw(lr), 1e-2, 0.05, 1e-2),
    Case("adamax", lambda lib, lr: lib.adamax(lr), 1e-2, 0.05, 1e-2),
    Case("lion", lambda lib, lr: lib.lion(lr), 1e-3, 0.01, 1e-3),
]
CASES = {case.name: case for case in OPTIMIZERS}
STEPS = 100


def by_case(fn):
    return pytest.mark.parametrize("case", OPTIMIZERS, ids=[c.name for c in OPTIMIZERS])(fn)


def stacked_gradients(seed: int, steps: int = STEPS):
    """``steps`` random gradient trees (helpers.TREE_SHAPES) stacked on a leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *gradient_sequence(seed, steps))


@functools.cache
def runner(case_name: str, library: str = "dlopt", chained: bool = False):
    """A jitted ``(lr, params, grads) -> (params, state, updates)`` running one lax.scan.

    The learning rate is traced, so one compile serves every learning rate. ``chained``
    wraps the transform as ``chain(identity(), tx, identity())``.
    """
    lib = {"dlopt": dlopt, "optax": optax}[library]

    def run(lr, params, grads):
        tx = CASES[case_name].build(lib, lr)
        if chained:
            tx = dlopt.chain(dlopt.identity(), tx, dlopt.identity())

        def body(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            return (jax.tree.map(lambda a, b: a + b, p, u), s), u

        (params, state), updates = jax.lax.scan(body, (params, tx.init(params)), grads)
        return params, state, updates

    return jax.jit(run)


def run_case(case: Case, lr, params, grads, library: str = "dlopt", chained: bool = False):
    lr = jnp.asarray(lr, jnp.float32)
    if library == "optax":
        with jax.numpy_dtype_promotion("standard"):
            return runner(case.name, library, chained)(lr, params, grads)
    return runner(case.name, library, chained)(lr, params, grads)


MOMENT_FIELDS = ("mu", "nu", "trace", "sum_of_squares", "e_g", "e_x")


def moment_buffers(state) -> dict[str, list]:
    """The moment buffers of a (nested) optimizer state, by field name, in chain order."""
    found: dict[str, list] = {}

    def visit(node):
        if hasattr(node, "_fields"):
            for field in node._fields:
                if field in MOMENT_FIELDS:
                    found.setdefault(field, []).append(getattr(node, field))
                else:
                    visit(getattr(node, field))
        elif isinstance(node, list | tuple):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    return found


# --- parity with optax: same gradients, 100 steps, params and moments at rtol 1e-6


@by_case
def test_matches_optax_for_100_steps(case):
    params, grads = random_tree(1), stacked_gradients(2)
    ours = run_case(case, case.lr, params, grads)
    theirs = run_case(case, case.lr, params, grads, library="optax")
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_close(ours[2], theirs[2], rtol=1e-6, atol=1e-7)
    our_moments, their_moments = moment_buffers(ours[1]), moment_buffers(theirs[1])
    assert their_moments.keys() <= our_moments.keys(), (their_moments.keys(), our_moments.keys())
    for field, buffers in their_moments.items():
        assert len(buffers) == len(our_moments[field]), field
        chex.assert_trees_all_close(our_moments[field], buffers, rtol=1e-6, atol=1e-7)


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
    def spec(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert spec(getattr(dlopt, name)) == spec(getattr(optax, name))


# --- the seed formulas, by hand in float64 numpy, 3 steps


A = np.array([1.0, 2.0, 4.0, 0.5])
C = np.array([1.0, -2.0, 3.0, 0.5])
W0 = np.array([0.3, 0.7, -1.1, 2.0])


def grad_fn(w):
    """The gradient of 0.5 * sum(A * (w - C)^2)."""
    return A * (w - C)


def dlopt_iterates(tx, steps: int = 3):
    params = {"w": jnp.asarray(W0, jnp.float32)}
    state, iterates = tx.init(params), []
    for _ in range(steps):
        grads = {"w": jnp.asarray(grad_fn(np.asarray(params["w"], np.float64)), jnp.float32)}
        updates, state = tx.update(grads, state, params)
        params = dlopt.apply_updates(params, updates)
        iterates.append(np.asarray(params["w"]))
    return iterates


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
