"""PSGD Kron's Kronecker factors: the per-block math of Li's preconditioner fitting.

For one block :math:`G` (a tensor with axes :math:`1..k`) the preconditioner is
:math:`P = Q^H Q` with :math:`Q = Q_1 \\otimes \\dots \\otimes Q_k`, each :math:`Q_i` an upper
triangular matrix or a diagonal (stored as a vector). Written for ONE block; the optimizer
vmaps these functions over stacked blocks of the same shape.

* `probe_solve`: :math:`\\bar B = V \\times_1 Q_1^{-1} \\dots \\times_k Q_k^{-1}` (the
  "conjB" of the references), by triangular solves.
* `update_factors`: one step of the whitening fit, with :math:`A = G \\times_i Q_i`:
  :math:`Q_i \\leftarrow Q_i - \\frac{\\mu}{\\lVert T_1 + T_2 \\rVert}
  \\operatorname{triu}(T_1 - T_2)\\, Q_i`, :math:`T_1 = A_{(i)} A_{(i)}^H`,
  :math:`T_2 = \\bar B_{(i)}^H \\bar B_{(i)}` (mode-:math:`i` Gram matrices); the norm is a
  cheap lower bound of the spectral norm (`norm_lower_bound`); a diagonal factor uses the
  diagonal of the same terms and their max-norm.
* `precondition`: :math:`P G = G \\times_i Q_i^H Q_i`.
* `balance`: rescale the factors to a common max-norm (their product is unchanged).

References:
    Li, 2018, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS, arXiv:1512.04202;
    Li, 2024, "Stochastic Hessian Fittings with Lie Groups", arXiv:2402.11858; psgd-jax
    0.2.9 (``psgd_jax/kron.py``: ``_conjB``, ``_update_precond``, ``_precond_grad``,
    ``_norm_lower_bound``), whose arithmetic these follow.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def _along(x: jax.Array, q: jax.Array, axis: int) -> jax.Array:
    """A diagonal factor ``q`` broadcast along ``axis`` of ``x``."""
    shape = [1] * x.ndim
    shape[axis] = q.shape[0]
    return q.reshape(shape)


def _mode(x: jax.Array, q: jax.Array, axis: int, *, transpose: bool = False) -> jax.Array:
    """The mode-``axis`` product ``x x_axis q`` (or ``q^T``): ``q`` acts on that axis."""
    y = jnp.tensordot(q, x, axes=((0 if transpose else 1,), (axis,)))
    return jnp.moveaxis(y, 0, axis)


def _gram(x: jax.Array, axis: int) -> jax.Array:
    """``X_(axis) X_(axis)^T``, every other axis contracted."""
    others = tuple(a for a in range(x.ndim) if a != axis)
    return jnp.tensordot(x, x, axes=(others, others))


def _tiny(x: jax.Array) -> jax.Array:
    return x + jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype)


def norm_lower_bound(a: jax.Array) -> jax.Array:
    """A cheap lower bound of the spectral norm of the square matrix ``a`` (psgd-jax's).

    One power-iteration-like step from the row (or column) of largest norm, after scaling
    by :math:`\\max |a|`; within a factor :math:`\\sqrt 2` of the norm in practice, and 0
    for a zero matrix.
    """
    max_abs = jnp.max(jnp.abs(a))
    a = a / jnp.where(max_abs > 0, max_abs, jnp.ones_like(max_abs))
    aa = a * a
    col_sums, row_sums = jnp.sum(aa, axis=0), jnp.sum(aa, axis=1)
    i, j = jnp.argmax(col_sums), jnp.argmax(row_sums)
    x = jnp.take(a, i, axis=1) @ a
    by_column = jnp.linalg.norm((x / jnp.linalg.norm(x)) @ a.T)
    y = a @ jnp.take(a, j, axis=0)
    by_row = jnp.linalg.norm(a.T @ (y / jnp.linalg.norm(y)))
    estimate = jnp.where(col_sums[i] > row_sums[j], by_column, by_row)
    return jnp.where(max_abs > 0, max_abs * estimate, max_abs)


def probe_solve(qs: Sequence[jax.Array], v: jax.Array, diag: Sequence[bool]) -> jax.Array:
    """:math:`V \\times_i Q_i^{-1}` along every axis (a diagonal factor divides)."""
    x = v
    for axis, (q, is_diag) in enumerate(zip(qs, diag, strict=True)):
        if is_diag:
            x = x / _along(x, q, axis)
            continue
        moved = jnp.moveaxis(x, axis, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        solved = jax.lax.linalg.triangular_solve(q, flat, left_side=False, lower=False)
        x = jnp.moveaxis(solved.reshape(moved.shape), -1, axis)
    return x


def update_factors(
    qs: Sequence[jax.Array],
    g: jax.Array,
    probe: jax.Array,
    diag: Sequence[bool],
    lr: jax.Array,
) -> list[jax.Array]:
    """One fitting step of every factor from the damped gradient ``g`` and the solved probe
    (`probe_solve`); all factors are updated from the same :math:`A = G \\times_i Q_i`."""
    a = g
    for axis, (q, is_diag) in enumerate(zip(qs, diag, strict=True)):
        a = a * _along(a, q, axis) if is_diag else _mode(a, q, axis)
    new = []
    for axis, (q, is_diag) in enumerate(zip(qs, diag, strict=True)):
        if is_diag:
            others = tuple(k for k in range(a.ndim) if k != axis)
            term1 = jnp.sum(a * a, axis=others)
            term2 = jnp.sum(probe * probe, axis=others)
            step = (term1 - term2) * lr * q
            new.append(q - step / _tiny(jnp.max(jnp.abs(term1 + term2))))
        else:
            term1, term2 = _gram(a, axis), _gram(probe, axis)
            step = jnp.triu((term1 - term2) * lr) / _tiny(norm_lower_bound(term1 + term2))
            new.append(q - step @ q)
    return new


def precondition(qs: Sequence[jax.Array], g: jax.Array, diag: Sequence[bool]) -> jax.Array:
    """:math:`P G = G \\times_i Q_i^T Q_i` (a diagonal factor multiplies by :math:`q^2`)."""
    x = g
    for axis, (q, is_diag) in enumerate(zip(qs, diag, strict=True)):
        if is_diag:
            x = x * _along(x, q * q, axis)
        else:
            x = _mode(_mode(x, q, axis), q, axis, transpose=True)
    return x


def balance(qs: Sequence[jax.Array], valid: jax.Array | None = None) -> list[jax.Array]:
    """The factors rescaled to the geometric mean of their max-norms (the Kronecker product
    is unchanged; keeps one factor from growing while another shrinks). ``valid`` (one
    length per axis) leaves a block's zero padding out of the max-norms."""
    if len(qs) < 2:
        return list(qs)
    norms = []
    for axis, q in enumerate(qs):
        magnitude = jnp.abs(q)
        if valid is not None:
            inside = jnp.arange(q.shape[0]) < valid[axis]
            mask = inside if q.ndim == 1 else inside[:, None] & inside[None, :]
            magnitude = jnp.where(mask, magnitude, jnp.zeros_like(magnitude))
        norms.append(jnp.max(magnitude).astype(jnp.float32))
    norms = jnp.stack(norms)
    scale = jnp.prod(norms) ** jnp.float32(1.0 / len(qs)) / norms
    return [q * scale[i].astype(q.dtype) for i, q in enumerate(qs)]
