"""Curvature of a loss ``loss(params, inputs, targets)`` (optax.second_order, deprecated in
optax 0.2.7 and kept for its users): Hessian-vector products, the Hessian's diagonal and the
observed Fisher diagonal, over the raveled parameter vector ``theta = ravel(params)``.

For trees of any size prefer `hvp` (one forward-over-reverse pass); `hessian_diag` runs one
`hvp` per parameter, so it is for small models and tests.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax import flatten_util


class LossFn(Protocol):
    """``loss(params, inputs, targets) -> scalar``."""

    def __call__(self, params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array: ...


def _ravel(p: Any) -> jax.Array:
    return flatten_util.ravel_pytree(p)[0]


def hvp(loss: LossFn, v: jax.Array, params: Any, inputs: jax.Array, targets: jax.Array) -> Any:
    """``H v`` with ``H = d^2 loss / d theta^2`` at ``(params, inputs, targets)`` and ``v`` of
    size ``ravel(params)``, by forward-mode over reverse-mode (``jvp`` of ``grad``; Pearlmutter,
    1994). Returns a tree shaped like ``params``.

    >>> import jax.numpy as jnp
    >>> from dlopt.second_order import hvp
    >>> loss = lambda w, x, y: jnp.sum((w * x - y) ** 2)
    >>> hvp(loss, jnp.ones(2), jnp.zeros(2), jnp.array([1.0, 2.0]), jnp.zeros(2))
    Array([2., 8.], dtype=float32)
    """
    _, unravel = flatten_util.ravel_pytree(params)
    return jax.jvp(jax.grad(lambda p: loss(p, inputs, targets)), [params], [unravel(v)])[1]


def hessian_diag(loss: LossFn, params: Any, inputs: jax.Array, targets: jax.Array) -> jax.Array:
    """``diag(H)_i = e_i^T H e_i``, one `hvp` per coordinate (vmapped), as a flat vector."""
    vs = jnp.eye(_ravel(params).size)

    def entry(v):
        return jnp.vdot(v, _ravel(hvp(loss, v, params, inputs, targets)))

    return jax.vmap(entry)(vs)


def fisher_diag(
    negative_log_likelihood: LossFn, params: Any, inputs: jax.Array, targets: jax.Array
) -> jax.Array:
    """The observed Fisher diagonal ``(d nll / d theta)^2``, a flat vector (exact for a
    per-example ``nll``; the squared batch gradient for a batch loss)."""
    return jnp.square(_ravel(jax.grad(negative_log_likelihood)(params, inputs, targets)))
