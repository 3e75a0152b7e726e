"""Power iteration and the coupled Newton iteration for ``A^(-1/p)`` (optax's
``power_iteration`` and ``matrix_inverse_pth_root``, same signatures and defaults)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from dlopt import tree as tree_math


def _normalize(x: Any) -> Any:
    return tree_math.scale(1.0 / tree_math.norm(x), x)


def power_iteration(
    matrix: jax.typing.ArrayLike | Callable[[Any], Any],
    *,
    v0: Any | None = None,
    num_iters: jax.typing.ArrayLike = 100,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
    key: jax.Array | None = None,
) -> tuple[jax.typing.ArrayLike, Any]:
    """The dominant eigenvalue and its unit eigenvector: ``v <- A v / ||A v||`` until
    ``|| A v - lambda v || / |lambda| < error_tolerance`` or ``num_iters`` steps, with
    ``lambda = <v, A v>``.

    ``matrix`` is a square array or a matrix-vector product ``v -> A v`` on pytrees (then
    ``v0``, a tree like its input, is required). Without ``v0`` an array's start vector is
    uniform in [-1, 1] from ``key`` (default ``jax.random.PRNGKey(0)``). Returns
    ``(eigenvalue, eigenvector)``.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> eig, vec = dlopt.power_iteration(jnp.diag(jnp.array([1.0, 3.0])))
    >>> print(round(float(eig), 4))
    3.0

    References:
        Wikipedia, `Power iteration <https://en.wikipedia.org/wiki/Power_iteration>`_.
    """
    if callable(matrix):
        mvp = matrix
        if v0 is None:
            raise ValueError(
                "v0 must be provided when `matrix` is a callable: pass v0, a pytree shaped "
                "like the product's input."
            )
    else:
        matrix = jnp.asarray(matrix)

        def mvp(v):
            return jnp.matmul(matrix, v, precision=precision)

        if v0 is None:
            key = jax.random.PRNGKey(0) if key is None else key
            v0 = jax.random.uniform(
                key, matrix.shape[-1:], dtype=matrix.dtype, minval=-1.0, maxval=1.0
            )
    v0 = _normalize(v0)

    def cond(loop_vars):
        eigvec, z, eig, i = loop_vars
        residual = tree_math.norm(tree_math.sub(z, tree_math.scale(eig, eigvec)))
        return ~(jnp.abs(residual / eig) < error_tolerance) & (i < num_iters)

    def body(loop_vars):
        _, z, _, i = loop_vars
        eigvec = _normalize(z)
        z = mvp(eigvec)
        return eigvec, z, tree_math.vdot(eigvec, z), i + 1

    init = (v0, mvp(v0), jnp.asarray(0.0), jnp.asarray(0))
    _, z, eig, _ = lax.while_loop(cond, body, init)
    return eig, _normalize(z)


def matrix_inverse_pth_root(
    matrix: jax.typing.ArrayLike,
    p: jax.typing.ArrayLike,
    num_iters: jax.typing.ArrayLike = 100,
    ridge_epsilon: jax.typing.ArrayLike = 1e-6,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    """``(A + eps I)^(-1/p)`` of a symmetric PSD ``A`` for ``p`` in {1, 2, 4, 8} by the
    coupled Newton iteration (Higham, Functions of Matrices, 2008, eq. 7.18):

    ``M_0 = z A``, ``H_0 = z^(1/p) I`` with ``z = (1 + p) / (2 ||A||_F)``; then
    ``T = (1 + 1/p) I - M / p``, ``M <- T^p M``, ``H <- H T`` until
    ``max |M - I| <= error_tolerance``; ``H`` converges to ``A^(-1/p)``.

    ``eps = ridge_epsilon * max(lambda_max(A), 1e-16)``. Runs in float32; stops at the
    previous iterate if the error grows by more than 1.2x. Returns ``(root, error)``.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> root, _ = dlopt.matrix_inverse_pth_root(jnp.diag(jnp.array([4.0, 16.0])), 2)
    >>> print(jnp.round(jnp.diag(root), 3))
    [0.5  0.25]
    """
    size = matrix.shape[0]
    alpha = jnp.asarray(-1.0 / p, jnp.float32)
    identity = jnp.eye(size, dtype=jnp.float32)
    max_ev, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6, precision=precision)
    ridge_epsilon = ridge_epsilon * jnp.maximum(max_ev, 1e-16)

    def matmul(a, b):
        return jnp.matmul(a, b, precision=precision)

    def mat_power(m, p):  # m^p for p = 1, 2, 4, 8 by repeated squaring
        def square_times(k):
            def run(m):
                for _ in range(k):
                    m = matmul(m, m)
                return m

            return run

        exponent = jnp.asarray(jnp.round(jnp.log2(p)), jnp.int32)
        return lax.switch(exponent, [square_times(k) for k in range(4)], m)

    def cond(state):
        i, _, _, _, error, run_step = state
        return (i < num_iters) & (error > error_tolerance) & run_step

    def body(state):
        i, mat_m, mat_h, _, error, _ = state
        mat_m_i = (1 - alpha) * identity + alpha * mat_m
        new_m = matmul(mat_power(mat_m_i, p), mat_m)
        new_h = matmul(mat_h, mat_m_i)
        new_error = jnp.max(jnp.abs(new_m - identity))
        return i + 1, new_m, new_h, mat_h, new_error, new_error < error * 1.2

    if size == 1:
        return (matrix + ridge_epsilon) ** alpha, 0
    damped = matrix + ridge_epsilon * identity
    z = (1 + p) / (2 * jnp.linalg.norm(damped))
    m0 = damped * z
    h0 = identity * jnp.power(z, 1.0 / p)
    init = (0, m0, h0, h0, jnp.max(jnp.abs(m0 - identity)), True)
    _, mat_m, mat_h, old_h, _, converged = lax.while_loop(cond, body, init)
    error = jnp.max(jnp.abs(mat_m - identity))
    converged = jnp.asarray(converged, old_h.dtype)
    root = converged * mat_h + (1 - converged) * old_h
    return jnp.asarray(root, matrix.dtype), error
