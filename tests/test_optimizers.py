"""Every optimizer family against optax, against its textbook equations, and on test problems.

One `OPTIMIZERS` table, assembled from one ``tests/cases_<family>.py`` file per group of
families, drives the parity, convergence and (in test_optimizer_properties.py) the property,
numerics and bad-input tests. Each row (`helpers.Case`) builds the same optimizer from either
library (``build(lib, lr)`` with ``lib`` = dlopt or optax), since the signatures match.
"""

from __future__ import annotations

import functools
import inspect

import cases_adam_family
import cases_large_batch
import cases_modern
import cases_schedule_free
import cases_second_order
import cases_seed
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import (
    PARITY_SHAPES,
    QUADRATIC_CENTER,
    gradient_sequence,
    minimize,
    quadratic,
    random_tree,
    rosenbrock,
)

import dlopt

OPTIMIZERS = [
    *cases_seed.CASES,
    *cases_adam_family.CASES,
    *cases_large_batch.CASES,
    *cases_modern.CASES,
    *cases_schedule_free.CASES,
    *cases_second_order.CASES,
]
CASES = {case.name: case for case in OPTIMIZERS}
STEPS = 100


def by_case(fn):
    return pytest.mark.parametrize("case", OPTIMIZERS, ids=[c.name for c in OPTIMIZERS])(fn)


WITH_REFERENCE = [c for c in OPTIMIZERS if c.reference == "optax"]
GRADIENT_COUPLING = 0.5  # the gradient is noise + 0.5 * params: it depends on the iterates


def stacked_gradients(seed: int, steps: int = STEPS, shapes=None):
    """``steps`` random gradient trees (helpers.TREE_SHAPES) stacked on a leading axis."""
    shapes = shapes or {}
    return jax.tree.map(lambda *xs: jnp.stack(xs), *gradient_sequence(seed, steps, **shapes))


@functools.cache
def runner(case_name: str, library: str = "dlopt", chained: bool = False, coupled: bool = False):
    """A jitted ``(lr, params, grads) -> (params, state, updates)`` running one lax.scan.

    The learning rate is traced, so one compile serves every learning rate. ``chained``
    wraps the transform as ``chain(identity(), tx, identity())``; ``coupled`` adds
    ``GRADIENT_COUPLING * params`` to each gradient (a quadratic's pull plus noise).
    """
    lib = {"dlopt": dlopt, "optax": optax}[library]

    def run(lr, params, grads):
        tx = CASES[case_name].build(lib, lr)
        if chained:
            tx = dlopt.chain(dlopt.identity(), tx, dlopt.identity())

        def body(carry, g):
            p, s = carry
            if coupled:
                g = jax.tree.map(lambda n, q: n + GRADIENT_COUPLING * q, g, p)
            u, s = tx.update(g, s, p)
            return (jax.tree.map(lambda a, b: a + b, p, u), s), u

        (params, state), updates = jax.lax.scan(body, (params, tx.init(params)), grads)
        return params, state, updates

    return jax.jit(run)


def run_case(case, lr, params, grads, library="dlopt", chained=False, coupled=False):
    lr = jnp.asarray(lr, jnp.float32)
    run = runner(case.name, library, chained, coupled)
    if library == "optax":
        with jax.numpy_dtype_promotion("standard"):
            return run(lr, params, grads)
    return run(lr, params, grads)


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
    return {field: [_unmasked(b) for b in buffers] for field, buffers in found.items()}


def _unmasked(tree):
    """``tree`` with masked-out leaves (dlopt's or optax's ``MaskedNode``) as None, so that
    partitioned states (muon) of the two libraries compare."""
    return jax.tree.map(
        lambda x: None if type(x).__name__ == "MaskedNode" else x,
        tree,
        is_leaf=lambda x: type(x).__name__ == "MaskedNode",
    )


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


def optax_signature_prefix(ours, theirs) -> None:
    """optax's parameters come first, with the same names, kinds and defaults; dlopt's own
    extras follow, keyword-only with defaults (so swapping optax.X for dlopt.X just works)."""

    def spec(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    mine, reference = spec(ours), spec(theirs)
    assert mine[: len(reference)] == reference, (mine, reference)
    for name, kind, default in mine[len(reference) :]:
        assert kind is inspect.Parameter.KEYWORD_ONLY, name
        assert default is not inspect.Parameter.empty, name


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
