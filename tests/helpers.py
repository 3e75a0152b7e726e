"""Named problems and random pytrees shared by the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Shapes of the random parameter trees used for parity tests: a matrix, a vector, a scalar,
# a conv kernel, nested in dicts and lists.
TREE_SHAPES = {"dense": {"w": (5, 3), "b": (3,)}, "scalar": (), "conv": [(3, 3, 2, 4), (4,)]}


# The parity tree: adds a matrix large enough for factored/matrix code paths (Adafactor
# factors dims >= 128, Muon and SOAP precondition matrices) and a 3-D leaf.
PARITY_SHAPES = {**TREE_SHAPES, "big": (130, 140), "cube": (4, 5, 6)}


class Case(NamedTuple):
    """One row of the optimizer table (tests/cases_*.py) that drives test_optimizers.py.

    ``build(lib, lr)`` builds the optimizer from ``lib`` (dlopt, or optax when
    ``reference == "optax"``; use `from_lib` for names optax keeps in ``optax.contrib``).
    """

    name: str
    build: Callable[[Any, Any], Any]  # (library, learning_rate) -> transform
    lr: float  # for parity and property runs
    quadratic_lr: float  # peak of a cosine schedule, 2000 steps
    rosenbrock_lr: float  # peak of a cosine schedule, 10000 steps
    has_moments: bool = True
    reference: str | None = "optax"  # None: dlopt only, no optax parity run
    rtol: float = 1e-6  # parity tolerance against the reference
    complex_ok: bool = True  # the reference supports complex params (optax's alias_test list)


class Entry(NamedTuple):
    """One row of the conformance table (test_conformance.py): a transform for the kit."""

    name: str  # the exported factory this entry covers
    variant: str
    make: Callable[[], Any]
    kwargs: dict = {}  # for dlopt.testing.check_transformation


def from_lib(lib: Any, name: str) -> Any:
    """``lib.name``, looked up in ``optax.contrib`` when ``lib`` is optax and the core lacks it."""
    if hasattr(lib, name):
        return getattr(lib, name)
    return getattr(lib.contrib, name)


def random_tree(seed: int, shapes=TREE_SHAPES, dtype=jnp.float32, scale: float = 1.0):
    """A pytree shaped by ``shapes`` (tuples are leaves) of N(0, scale^2) values."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s), dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x),
    )


def gradient_sequence(seed: int, steps: int, shapes=TREE_SHAPES, dtype=jnp.float32):
    """``steps`` random gradient trees, deterministic in ``seed``."""
    return [random_tree(seed * 100_003 + t, shapes, dtype) for t in range(steps)]


# Quadratic bowl f(x) = 0.5 * sum(a * (x - c)^2), minimum 0 at x = c.
QUADRATIC_CENTER = jnp.array([1.0, -2.0, 3.0], jnp.float32)
QUADRATIC_CURVATURE = jnp.array([1.0, 2.0, 4.0], jnp.float32)


def quadratic(params):
    x = params["x"]
    return 0.5 * jnp.sum(QUADRATIC_CURVATURE * jnp.square(x - QUADRATIC_CENTER))


def rosenbrock(params):
    """f(x, y) = (1 - x)^2 + 100 (y - x^2)^2, minimum 0 at (1, 1)."""
    x, y = params["xy"][0], params["xy"][1]
    return jnp.square(1.0 - x) + 100.0 * jnp.square(y - jnp.square(x))


def minimize(tx, loss, params, steps: int):
    """Runs ``steps`` updates of ``tx`` on ``loss`` in one jitted ``lax.scan``; returns params."""

    def body(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (jax.tree.map(lambda a, b: a + b, p, u), s), None

    (params, _), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=steps))(
        (params, tx.init(params))
    )
    return params
