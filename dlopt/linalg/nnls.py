"""Non-negative least squares by Polyak's fast projected gradient (optax.nnls)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _spectral_radius_upper_bound(matrix: jax.Array) -> jax.Array:
    """``min(||Q||_F, ||Q||_1)``, an upper bound on the spectral radius of ``Q``."""
    frobenius = jnp.linalg.matrix_norm(matrix, ord="fro")
    one = jnp.linalg.matrix_norm(matrix, ord=1) if matrix.size != 0 else 0
    return jnp.minimum(frobenius, one)


def nnls(
    A: jax.Array,  # noqa: N803 - optax's name
    b: jax.Array,
    iters: int,
    unroll: int | bool = 1,
    L: jax.typing.ArrayLike | None = None,  # noqa: N803 - optax's name
) -> jax.Array:
    """``argmin_{x >= 0} ||A x - b||_2`` by the fast projected gradient method (Polyak, 2015).

    With ``Q = A^T A``, ``q = A^T b`` and ``L >= lambda_max(Q)`` (default
    ``min(||Q||_F, ||Q||_1)``), each of ``iters`` steps is a Nesterov-accelerated projected
    gradient step: ``x' = max(p - (Q p - q) / L, 0)``, ``c' = (1 + sqrt(1 + 4 c^2)) / 2``,
    ``p' = x' + (c - 1) / c' (x' - x)``. ``b`` may be ``(M,)`` or ``(M, K)`` (K problems).

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> x = dlopt.nnls(jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([5.0, 6.0]), 1000)
    >>> print(f"{x[0]:.2f} {x[1]:.2f}")
    0.00 1.70

    References:
        Polyak, `Projected gradient method for non-negative least square
        <http://www.ams.org/books/conm/636/>`_, 2015.
    """
    if A.ndim != 2 or b.ndim not in (1, 2) or b.shape[0] != A.shape[0]:
        raise ValueError(
            f"nnls needs A of shape (M, N) and b of shape (M,) or (M, K), got A.shape={A.shape} "
            f"and b.shape={b.shape}."
        )
    Q = A.mT @ A  # noqa: N806
    q = A.mT @ b
    if L is None:
        L = _spectral_radius_upper_bound(Q)  # noqa: N806
    L = jnp.where(L == 0, 1, L)  # noqa: N806

    def step(carry, _):
        x, p, c = carry
        cn = (1 + jnp.sqrt(1 + 4 * c**2)) / 2
        xn = (p - (Q @ p - q) / L).clip(0)
        return (xn, xn + (c - 1) / cn * (xn - x), cn), None

    x = jnp.zeros_like(b, shape=A.shape[-1:] + b.shape[1:])
    (x, _, _), _ = lax.scan(step, (x, x, 0.0), length=iters, unroll=unroll)
    return x
