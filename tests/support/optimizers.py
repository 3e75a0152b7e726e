"""The optimizer table and the run helpers its tests share (test_optimizers.py and the
family files): `OPTIMIZERS` assembled from ``tests/cases_<family>.py``, a jitted scan runner,
moment buffers, optax signature prefixes, the seed quadratic and step-count walkers.
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
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import gradient_sequence

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


def map_counts(fn, state):
    if hasattr(state, "_fields"):
        return type(state)(
            *(
                fn(v) if f == "count" else map_counts(fn, v)
                for f, v in zip(state._fields, state, strict=True)
            )
        )
    if isinstance(state, tuple | list):
        return type(state)(map_counts(fn, s) for s in state)
    if isinstance(state, dict):
        return {k: map_counts(fn, v) for k, v in state.items()}
    return state


def counts(state) -> list:
    found: list = []
    map_counts(lambda c: found.append(c) or c, state)
    return found
