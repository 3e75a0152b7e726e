"""Inverse p-th roots of symmetric PSD matrices by the coupled Newton iteration (Shampoo).

For a PSD statistic ``A`` (``d x d``) and an integer ``p``, `inverse_pth_root` returns
``(A + eps I)^(-1/p)`` where ``eps = matrix_epsilon * lambda_max(A)`` (relative damping, the
top eigenvalue from a power iteration) or ``eps = matrix_epsilon``. The iteration is Higham's
coupled Newton (Functions of Matrices, 2008, eq. 7.18), as in Distributed Shampoo
(Anil et al., 2020):

    z = (1 + p) / (2 ||A_eps||_F),   M_0 = z A_eps,   H_0 = z^(1/p) I
    T_k = (1 + 1/p) I - M_k / p
    M_{k+1} = T_k^p M_k,   H_{k+1} = H_k T_k

``M_k -> I`` and ``H_k -> A_eps^(-1/p)``. It stops when ``max|M_k - I| <= error_tolerance``,
after ``num_iters`` steps, or when the error grows by more than 1.2x (then the previous
``H`` is returned). The returned error ``max|M - I|`` lets the caller keep an older
preconditioner when the root failed.

A ``valid`` size ``r < d`` treats the matrix as its top-left ``r x r`` block padded with
zeros (rows and columns past ``r`` are masked, also in the identity), so blocks of different
sizes can be stacked into one ``[n, d, d]`` array and handled by one `jax.vmap`. The
iteration runs in float64 when ``jax_enable_x64`` is on, in float32 otherwise.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MAX_ERROR_RATIO = 1.2  # the error may rise a little before it falls; more than this: stop


def root_dtype() -> jnp.dtype:
    """float64 when x64 is enabled (more headroom for small ``matrix_epsilon``), else float32."""
    return jnp.dtype(jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32)


@functools.cache
def _start_vector(size: int) -> np.ndarray:
    """The power iteration's fixed start: the reference's ``RandomState(1729)`` draw (a prefix
    of a longer draw, so padded blocks start where the reference's padded matrices do)."""
    return np.random.RandomState(1729).uniform(-1.0, 1.0, size)


def power_iteration(
    matrix: chex.Array,
    valid: chex.Array | int,
    *,
    num_iters: int = 100,
    error_tolerance: float = 1e-6,
    precision: lax.Precision | None = lax.Precision.HIGHEST,
) -> jax.Array:
    """The top eigenvalue of a symmetric PSD ``matrix`` (its first ``valid`` rows/columns).

    ``v <- v / ||v||; s = v^T A v; v <- A v`` until ``|s - s_prev| <= error_tolerance`` or
    ``num_iters`` steps; returns ``s``.
    """
    size = matrix.shape[-1]
    mask = jnp.arange(size) < valid
    v0 = jnp.where(mask, jnp.asarray(_start_vector(size), matrix.dtype), 0)

    def cond(state):
        i, _, _, run = state
        return jnp.logical_and(i < num_iters, run)

    def body(state):
        i, v, s, _ = state
        v = v / jnp.linalg.norm(v)
        s_v = jnp.einsum("ij,j->i", matrix, v, precision=precision)
        s_new = jnp.einsum("i,i->", v, s_v, precision=precision)
        return i + 1, s_v, s_new, jnp.abs(s_new - s) > error_tolerance

    init = (jnp.asarray(0), v0, jnp.zeros([], matrix.dtype), jnp.asarray(True))
    return lax.while_loop(cond, body, init)[2]


def matrix_power(matrix: chex.Array, p: int, precision=lax.Precision.HIGHEST) -> jax.Array:
    """``matrix^p`` for a static integer ``p >= 1`` by repeated squaring."""
    result, square = None, matrix
    while True:
        if p % 2 == 1:
            result = square if result is None else jnp.matmul(square, result, precision=precision)
        p //= 2
        if p == 0:
            return result
        square = jnp.matmul(square, square, precision=precision)


def inverse_pth_root(
    matrix: chex.Array,
    p: int,
    valid: chex.Array | int | None = None,
    *,
    matrix_epsilon: float = 1e-6,
    relative_matrix_epsilon: bool = True,
    num_iters: int = 100,
    error_tolerance: float = 1e-6,
    precision: lax.Precision | None = lax.Precision.HIGHEST,
) -> tuple[jax.Array, jax.Array]:
    """``((A + eps I)^(-1/p), error)`` for a symmetric PSD ``matrix`` A (see the module doc).

    Args:
      matrix: a ``d x d`` symmetric PSD matrix (vmap it for a stack).
      p: the static root, an integer >= 1.
      valid: the size of the top-left block that holds the matrix (default: all of it).
      matrix_epsilon: the damping, relative to the top eigenvalue when
        ``relative_matrix_epsilon`` (``eps = matrix_epsilon * max(lambda_max, 1e-6)``).
      relative_matrix_epsilon: scale the damping by the top eigenvalue.
      num_iters: most Newton steps.
      error_tolerance: stop once ``max|M - I|`` is below this.
      precision: the matmul precision.

    Returns:
      The root in ``matrix``'s dtype (zero past ``valid``) and the final ``max|M - I|`` in
      float32 (NaN or large: the root failed).

    >>> import jax.numpy as jnp
    >>> from dlopt.linalg.matrix_root import inverse_pth_root
    >>> root, error = inverse_pth_root(jnp.diag(jnp.array([4.0, 16.0])), 2, matrix_epsilon=0.0)
    >>> [round(float(x), 4) for x in jnp.diag(root)], bool(error < 1e-5)
    ([0.5, 0.25], True)
    """
    size = matrix.shape[-1]
    dtype = root_dtype()
    valid = size if valid is None else valid
    mask = (jnp.arange(size) < valid).astype(dtype)
    a = matrix.astype(dtype) * mask[:, None] * mask[None, :]
    identity = jnp.eye(size, dtype=dtype) * mask[None, :]
    alpha = jnp.asarray(-1.0 / p, dtype)
    if relative_matrix_epsilon:
        top = power_iteration(a, valid, precision=precision)
        eps = matrix_epsilon * jnp.maximum(top, 1e-6)
    else:
        eps = jnp.asarray(matrix_epsilon, dtype)
    damped = a + eps * identity
    z = (1 + p) / (2 * jnp.linalg.norm(damped))
    m0 = damped * z
    h0 = identity * jnp.power(z, 1.0 / p)

    def cond(state):
        i, _, _, _, error, ratio = state
        above = jnp.logical_and(error > error_tolerance, ratio < MAX_ERROR_RATIO)
        return jnp.logical_and(i < num_iters, above)

    def body(state):
        i, m, h, _, error, _ = state
        m_i = (1 - alpha) * identity + alpha * m
        new_m = jnp.matmul(matrix_power(m_i, p, precision), m, precision=precision)
        new_h = jnp.matmul(h, m_i, precision=precision)
        new_error = jnp.max(jnp.abs(new_m - identity))
        return i + 1, new_m, new_h, h, new_error, new_error / error

    error0 = jnp.max(jnp.abs(m0 - identity))
    init = (jnp.asarray(0), m0, h0, h0, error0, jnp.ones([], dtype))
    _, m, h, old_h, _, ratio = lax.while_loop(cond, body, init)
    root = jnp.where(ratio < MAX_ERROR_RATIO, h, old_h)
    error = jnp.max(jnp.abs(m - identity)).astype(jnp.float32)
    return root.astype(matrix.dtype), error
