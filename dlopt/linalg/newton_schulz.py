"""Newton-Schulz orthogonalization (Muon's), its coefficient presets (Jordan's, Dion's, the
Polar Express), and the stacked form that runs every same-shaped matrix of a tree at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import tree as tree_lib
from dlopt.core import validation
from dlopt.linalg.muon_dims import (
    MuonDimensionNumbers,
    compute_muon_reshape,
    is_dim_nums,
)

PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_DION_NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
# Amsel et al. 2025, Algorithm 1: the optimal degree-5 polynomials p_t(x) = a x + b x^3 + c x^5
# for t = 1..8 (the last repeats), lower spectral bound 1e-3, as published ...
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
# ... and with its safety factor: p_t(x / 1.01) for every polynomial but the last.
POLAR_EXPRESS_SAFETY = 1.01
POLAR_EXPRESS_COEFFS = tuple(
    (a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY**3, c / POLAR_EXPRESS_SAFETY**5)
    for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)
NS_COEFFS_PRESETS = {"standard": DEFAULT_NS_COEFFS, "dion": _DION_NS_COEFFS}
PRESET_NAMES = ("standard", "dion", "polar_express")


def polar_express_coeffs(ns_steps: int) -> tuple[tuple[float, float, float], ...]:
    """The Polar Express coefficients for ``ns_steps`` steps, as Algorithm 1 of Amsel et al.
    (2025) runs them: `POLAR_EXPRESS_COEFFS` (with the 1.01 safety factor), the last one
    repeated past 8 steps, and the paper's first rescaling :math:`X / (1.01 \\|X\\|_F)`
    folded into the first polynomial (:math:`p_1(x / 1.01)`: ``a / 1.01``,
    ``b / 1.01^3``, ``c / 1.01^5``), so that with ``preconditioning="frobenius"`` the
    iteration is the paper's.

    Example:
        >>> from dlopt.linalg.newton_schulz import polar_express_coeffs
        >>> len(polar_express_coeffs(5)), polar_express_coeffs(10)[-1]
        (5, (1.875, -1.25, 0.375))
    """
    rows = list(POLAR_EXPRESS_COEFFS[:ns_steps])
    rows += [POLAR_EXPRESS_COEFFS[-1]] * (ns_steps - len(rows))
    if rows:
        a, b, c = rows[0]
        s = POLAR_EXPRESS_SAFETY
        rows[0] = (a / s, b / s**3, c / s**5)
    return tuple(rows)


# --- Newton-Schulz


def _ns_step(x, c, *, first, preconditioning, eps):
    """One quintic step ``c0 X + (c1 A + c2 A^2) X`` with ``A = X X^H``; AOL and Schatten-4
    rescale ``X`` inside their first step."""
    a = x @ x.T.conj()
    if first and preconditioning == "aol":
        s = jax.lax.rsqrt(jnp.clip(jnp.sum(jnp.abs(a), axis=-1), min=eps)).astype(x.dtype)
        x, a = x * s[:, None], a * s[:, None] * s[None, :]
    elif first and preconditioning == "schatten":
        s = jax.lax.rsqrt(jnp.clip(jnp.linalg.norm(a, ord="fro"), min=eps)).astype(x.dtype)
        x, a = x * s, a * s * s
    b = c[1] * a + c[2] * a @ a
    return c[0] * x + b @ x


def _rows(ns_coeffs: Any, ns_steps: int) -> list[jax.Array]:
    coeffs = jnp.asarray(ns_coeffs)
    if coeffs.ndim > 2 or coeffs.shape[-1] != 3:
        raise ValueError(f"ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}.")
    return [coeffs] * ns_steps if coeffs.ndim == 1 else [coeffs[i] for i in range(len(coeffs))]


def _orthogonalize_matrix(m, *, rows, preconditioning, eps):
    """One (rows, cols) matrix: rescale, then the Newton-Schulz steps (wide orientation)."""
    transposed = m.shape[0] > m.shape[1]
    m = m.T if transposed else m
    if preconditioning in ("frobenius", "spectral"):
        norm = jnp.linalg.norm(m, ord="fro" if preconditioning == "frobenius" else 2)
        m = m / (norm + tree_lib.scalar_like(eps, norm)).astype(m.dtype)
    for i, c in enumerate(rows):
        m = _ns_step(m, c.astype(m.dtype), first=i == 0, preconditioning=preconditioning, eps=eps)
    return m.T if transposed else m


def orthogonalize_stacked(
    xs: Sequence[jax.Array],
    dims: Sequence[Any],
    ns_coeffs: Any,
    ns_steps: int = 5,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    eps: chex.Numeric = 1e-8,
) -> list[jax.Array]:
    """``[orthogonalize_via_newton_schulz(x, ..., d) for x, d in zip(xs, dims)]``, computed
    with every matrix of one (rows, cols, dtype) stacked into ONE vmapped iteration.

    Each tensor is reshaped to (batch, rows, cols) by its dimension numbers; the matrices of a
    shape, whichever leaves they come from, are concatenated along the batch, orthogonalized
    together and split back. A tree of 54 conv kernels in 21 shapes traces 21 iterations, not
    54, and per matrix the arithmetic is the same (an XLA batch of matrix products).

    Args:
        xs: the tensors (each of rank >= 2, gathered if sharded).
        dims: a `MuonDimensionNumbers` per tensor.
        ns_coeffs, ns_steps, preconditioning, eps: as in `orthogonalize_via_newton_schulz`.

    Returns:
        The orthogonalized tensors, in order.
    """
    validation.check_choice("preconditioning", preconditioning, PRECONDITIONINGS)
    rows = _rows(ns_coeffs, ns_steps)
    run = jax.vmap(
        lambda m: _orthogonalize_matrix(m, rows=rows, preconditioning=preconditioning, eps=eps)
    )
    reshaped, inverses, groups = [], [], {}
    for i, (x, d) in enumerate(zip(xs, dims, strict=True)):
        reshape, inverse = compute_muon_reshape(x, d)
        reshaped.append(reshape(x))
        inverses.append(inverse)
        groups.setdefault((reshaped[i].shape[1:], reshaped[i].dtype), []).append(i)
    out: list[Any] = [None] * len(xs)
    for members in groups.values():
        parts = [reshaped[i] for i in members]
        result = run(parts[0] if len(parts) == 1 else jnp.concatenate(parts))
        ends = np.cumsum([p.shape[0] for p in parts])[:-1].tolist()
        for i, piece in zip(members, jnp.split(result, ends), strict=True):
            out[i] = inverses[i](piece)
    return out


def orthogonalize_via_newton_schulz(
    x: jax.Array,
    ns_coeffs: jax.Array,
    ns_steps: int = 5,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    eps: chex.Numeric = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
) -> jax.Array:
    """An approximately orthogonal matrix with ``x``'s singular vectors: :math:`U V^H`-ish.

    For :math:`X = U S V^H`, ``ns_steps`` quintic Newton-Schulz steps
    :math:`X \\leftarrow c_0 X + c_1 (X X^H) X + c_2 (X X^H)^2 X` (after scaling
    :math:`\\|X\\| \\le 1`) push every singular value towards 1; the default coefficients
    maximize the slope at 0, giving :math:`U S' V^H` with :math:`S'_{ii} \\in (0.5, 1.5)`,
    which trains as well as :math:`U V^H`. Per-step coefficients ((n, 3)) change the
    polynomial each step: ``"polar_express"`` (`polar_express_coeffs`) are the optimal ones
    of Amsel et al. (2025), converging to :math:`U V^H`. Wide orientation is used internally
    (a tall matrix is transposed). Tensors are reshaped to (batch, reduction, output) by
    ``dimension_numbers``; the batch is orthogonalized matrix by matrix.

    Args:
        x: a matrix, or a tensor with ``dimension_numbers``.
        ns_coeffs: (3,) coefficients, or (n, 3) for n steps with their own coefficients.
        ns_steps: number of steps with (3,) coefficients.
        preconditioning: the first rescaling: ``"frobenius"`` (:math:`X / \\|X\\|_F`),
            ``"spectral"`` (:math:`X / \\|X\\|_2`), ``"aol"`` (row scaling by
            :math:`(\\sum_j |X X^H|_{ij})^{-1/2}`) or ``"schatten"`` (:math:`\\|X X^H\\|_F^{-1/2}`).
        eps: added to the norm in the rescaling.
        dimension_numbers: reduction and output axes of a tensor (`MuonDimensionNumbers`).

    Returns:
        An array shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> q = dlopt.orthogonalize_via_newton_schulz(jnp.eye(3) * 5.0, jnp.array([2.0, -1.5, 0.5]))
        >>> bool(jnp.allclose(q, jnp.eye(3), atol=1e-3))
        True

    References:
        Jordan et al., 2024, "Muon" (the default coefficients); Amsel et al., 2025, "The Polar
        Express: Optimal Matrix Sign Methods and Their Application to the Muon Algorithm",
        arXiv:2505.16932.
    """
    if x.ndim != 2 and not is_dim_nums(dimension_numbers):
        raise ValueError(
            "Input must have shape (m, n) or weight dimension numbers must be provided. Got "
            f"shape={x.shape} and {dimension_numbers=}."
        )
    if x.ndim == 2:
        dimension_numbers = MuonDimensionNumbers(0, 1)
    return orthogonalize_stacked([x], [dimension_numbers], ns_coeffs, ns_steps,
                                 preconditioning, eps)[0]  # fmt: skip


def resolve_coeffs(ns_coeffs: Any, ns_steps: Any) -> Any:
    """Validated coefficients (a preset name resolved); (n, 3) ones need n <= ns_steps.
    ``"polar_express"`` resolves to ``ns_steps`` rows (`polar_express_coeffs`)."""
    validation.check_int("ns_steps", ns_steps, 0)
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in PRESET_NAMES:
            raise ValueError(
                f"ns_coeffs must be coefficients or one of {list(PRESET_NAMES)}, got "
                f"ns_coeffs={ns_coeffs!r}."
            )
        if ns_coeffs == "polar_express":
            if ns_steps < 1:
                raise ValueError(f"ns_coeffs='polar_express' needs ns_steps >= 1, got {ns_steps}.")
            return polar_express_coeffs(ns_steps)
        ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
    if any(isinstance(c, jax.core.Tracer) for c in jax.tree.leaves(ns_coeffs)):
        return ns_coeffs
    try:
        array = np.asarray(ns_coeffs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"ns_coeffs must be numbers of shape (3,) or (n, 3): {error}") from None
    if array.ndim not in (1, 2) or array.shape[-1] != 3 or not np.all(np.isfinite(array)):
        raise ValueError(
            f"ns_coeffs must be finite with shape (3,) or (n, 3), got ns_coeffs={ns_coeffs!r}."
        )
    if array.ndim == 2 and array.shape[0] > ns_steps:
        raise ValueError(
            f"ns_coeffs has {array.shape[0]} rows, one per step, so ns_steps must be >= "
            f"{array.shape[0]}; got ns_steps={ns_steps}."
        )
    return ns_coeffs
