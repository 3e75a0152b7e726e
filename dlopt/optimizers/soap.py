"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain
from dlopt.core.per_leaf import per_leaf
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


def _merge_small_dims(shape: tuple[int, ...], max_dim: int) -> tuple[int, ...]:
    """``shape`` with runs of consecutive axes merged while their product stays <= max_dim
    (the reference's ``merge_dims``): (3, 3, 16, 32) with 1024 -> (144, 32)."""
    merged, current = [], 1
    for size in shape:
        if current * size > max_dim:
            merged.append(current if current > 1 else size)
            current = size if current > 1 else 1
        else:
            current *= size
    if current > 1 or not merged:
        merged.append(current)
    return tuple(merged)


def _layout(shape, *, max_dim, merge, precondition_1d) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(the shape SOAP works on, whether each of its axes has a preconditioner)."""
    if len(shape) <= 1:
        return shape, tuple(precondition_1d and d <= max_dim for d in shape)
    shape = _merge_small_dims(shape, max_dim) if merge else shape
    return shape, tuple(d <= max_dim for d in shape)


def _rotate(x, bases):
    """``x`` in the eigenbasis: ``x <- x x_i Q_i^H`` along each axis with a basis."""
    for q in bases:
        x = jnp.moveaxis(x, 0, -1) if q is None else jnp.tensordot(x, jnp.conj(q), ((0,), (0,)))
    return x


def _rotate_back(x, bases):
    """``x`` back in the parameters' basis: ``x <- x x_i Q_i`` along each axis."""
    for q in bases:
        x = jnp.moveaxis(x, 0, -1) if q is None else jnp.tensordot(x, q, ((0,), (1,)))
    return x


def _gram(x, axis):
    """``X_(axis) X_(axis)^H``, contracting every other axis."""
    others = tuple(a for a in range(x.ndim) if a != axis)
    return jnp.tensordot(x, jnp.conj(x), (others, others))


def _eigenbases(factors):
    """First step: eigenvectors of each factor, by decreasing eigenvalue (``eigh``)."""
    return tuple(None if p is None else jnp.linalg.eigh(p)[1][:, ::-1] for p in factors)


def _power_iteration(factors, bases, v):
    """Refresh: sort each basis by its estimated eigenvalues (permuting ``v`` to match), then
    one power-iteration step ``Q <- qr(P Q)`` (the reference's ``get_orthogonal_matrix_QR``)."""
    new = []
    for axis, (p, q) in enumerate(zip(factors, bases, strict=True)):
        if p is None:
            new.append(None)
            continue
        estimate = jnp.real(jnp.sum(jnp.conj(q) * (p @ q), axis=0))  # diag(Q^H P Q)
        order = jnp.argsort(-estimate)
        v = jnp.take(v, order, axis=axis)
        new.append(jnp.linalg.qr(p @ q[:, order])[0])
    return tuple(new), v


def _soap_leaf(g, mu, nu, factors, bases, leaf, out_dtype, *, cfg, writer, first, refresh, step):
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    shape, (merged, _) = g.shape, _layout(g.shape, **cfg["layout"])
    (g, restore), (mu_full, _), (nu_full, _) = map(tree_lib.unshard, (g, mu, nu))
    g = g.astype(f).reshape(merged)
    q = tuple(None if b is None else b.astype(f) for b in bases)
    # Adam in the eigenbasis; the first call only gathers statistics (its update is zero).
    # Q^H M Q is formed as b1 Q^H M_prev Q + (1 - b1) G' from the same rotated G' that feeds V,
    # as the authors' code does (it keeps M rotated): rotating M and G separately in float32
    # rounds them differently, and where G' cancels to 0 (V = 0) the numerator's rounding
    # noise divided by eps gave updates ~1e3 times too large.
    m, v = mu_full.astype(f).reshape(merged), nu_full.astype(f).reshape(merged)
    rotated_g = _rotate(g, q)
    rotated_m = numerics.ema(_rotate(m, q), rotated_g, cfg["b1"])
    m = jnp.where(first, m, numerics.ema(m, g, cfg["b1"]))
    v = jnp.where(first, v, numerics.ema(v, numerics.abs_sq(rotated_g), cfg["b2"]))
    mu = writer.put(m.reshape(shape), mu_full, leaf, 1)
    nu = writer.put(v.reshape(shape), nu_full, leaf, 2)
    v = nu.astype(f).reshape(merged)
    denominator = jnp.sqrt(v) + tree_lib.scalar_like(cfg["eps"], v)
    update = _rotate_back(rotated_m / denominator, q)
    if cfg["correct_bias"]:
        t = jnp.maximum(step, 1)
        scale = jnp.sqrt(numerics.bias_correction(cfg["b2"], t)) / numerics.bias_correction(
            cfg["b1"], t
        )
        update = update * scale.astype(f)
    if cfg["normalize_grads"] and update.size:
        rms = jnp.sqrt(jnp.mean(numerics.abs_sq(update)))
        update = update / (rms + tree_lib.scalar_like(1e-30, rms)).astype(f)
    update = jnp.where(first, jnp.zeros_like(update), update).reshape(shape)
    # preconditioner statistics P_i <- beta P_i + (1 - beta) G_(i) G_(i)^H, then the bases
    beta = cfg["shampoo_beta"]
    p = [
        None if s is None else s.astype(f) + tree_lib.scalar_like(1 - beta, g)
        * (_gram(g, axis) - s.astype(f))
        for axis, s in enumerate(factors)
    ]  # fmt: skip
    p = tuple(None if s is None else writer.put(x, s, leaf, 3 + 2 * i)
              for i, (x, s) in enumerate(zip(p, factors, strict=True)))  # fmt: skip
    pf = tuple(None if s is None else s.astype(f) for s in p)
    stored_v = nu.reshape(merged)
    if any(s is not None for s in p):
        q, stored_v = jax.lax.cond(
            first,
            lambda: (_eigenbases(pf), stored_v),
            lambda: jax.lax.cond(
                refresh, lambda: _power_iteration(pf, q, stored_v), lambda: (q, stored_v)
            ),
        )
    bases = tuple(None if b is None else writer.put(x, b, leaf, 4 + 2 * i)
                  for i, (x, b) in enumerate(zip(q, bases, strict=True)))  # fmt: skip
    update, mu, nu = (
        restore(update.astype(out_dtype)),
        restore(mu),
        restore(stored_v.reshape(shape)),
    )
    return update, mu, nu, p, bases


class ScaleBySoapState(NamedTuple):
    count: chex.Array  # int32 number of calls (the first only initializes the bases)
    mu: chex.ArrayTree  # M, the first moment in the parameters' basis (in mu_dtype)
    nu: chex.ArrayTree  # V, the second moment in the eigenbasis (in nu_dtype)
    preconditioners: chex.ArrayTree  # per leaf, a tuple: P_i = L, R, ... (or None per axis)
    eigenbases: chex.ArrayTree  # per leaf, a tuple: Q_i, eigenvectors of P_i (or None)


@per_leaf
def scale_by_soap(
    b1: chex.Numeric = 0.95,
    b2: chex.Numeric = 0.95,
    shampoo_beta: chex.Numeric | None = None,
    eps: chex.Numeric = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    *,
    merge_small_dims: bool = False,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    factor_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by Adam run in the eigenbasis of Shampoo's preconditioner (SOAP).

    For a matrix gradient :math:`G_t` (a tensor has one factor per axis), with
    :math:`Q_L, Q_R` the eigenvectors of Shampoo's factors :math:`L, R`:

    .. math::
        M_t = \\beta_1 M_{t-1} + (1 - \\beta_1) G_t, \\quad
        G'_t = Q_L^H G_t Q_R, \\quad
        V_t = \\beta_2 V_{t-1} + (1 - \\beta_2) |G'_t|^2,

    .. math::
        U_t = \\frac{\\sqrt{1 - \\beta_2^t}}{1 - \\beta_1^t}\\;
        Q_L \\frac{Q_L^H M_t Q_R}{\\sqrt{V_t} + \\epsilon} Q_R^H, \\qquad
        L \\leftarrow \\beta_s L + (1 - \\beta_s) G_t G_t^H, \\quad
        R \\leftarrow \\beta_s R + (1 - \\beta_s) G_t^H G_t

    The first call only sets :math:`L, R` and :math:`Q = \\operatorname{eigh}` (its update is
    zero, so the projection never contains the current gradient). Every
    ``precondition_frequency`` steps each basis is refreshed by one power-iteration step,
    :math:`Q \\leftarrow \\operatorname{qr}(P Q)`, after sorting its columns by
    :math:`\\operatorname{diag}(Q^H P Q)` (and permuting :math:`V` to match), as in the
    authors' implementation. Axes longer than ``max_precond_dim`` keep the identity basis;
    1-D leaves do too unless ``precondition_1d``; ``merge_small_dims`` first merges runs of
    small axes (product <= ``max_precond_dim``) so a conv kernel gets a few big factors.
    With no factor, a leaf gets Adam (with SOAP's bias correction placement).
    ``normalize_grads`` divides each leaf's update by its RMS. Complex parameters use
    :math:`Q^H` and :math:`|G'|^2`.

    Storage: ``mu`` (:math:`M`, in the parameters' basis, as in the paper's Algorithm 1) and
    ``nu`` (:math:`V`, in the eigenbasis) are shaped like the parameters, in ``mu_dtype`` /
    ``nu_dtype`` (default: the parameters' dtype, stochastic rounding when narrower). The
    factors :math:`P_i` and bases :math:`Q_i` are stored in ``factor_dtype``, by default
    float32 (float64/complex for such parameters) whatever the parameters' dtype: an
    eigendecomposition in bfloat16 is not meaningful, and the authors keep them in float32
    too. All arithmetic runs in float32 or wider.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        shampoo_beta: :math:`\\beta_s` in [0, 1) for the factors; None uses ``b2`` (the
            reference's ``shampoo_beta=-1``).
        eps: :math:`\\epsilon` >= 0.
        precondition_frequency: refresh the bases every this many steps (int >= 1).
        max_precond_dim: axes longer than this (int >= 0) are not preconditioned.
        merge_small_dims: merge consecutive small axes before preconditioning.
        precondition_1d: precondition 1-D leaves (biases, norm scales) too.
        normalize_grads: divide each leaf's update by its RMS.
        correct_bias: the factor :math:`\\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t)`.
        mu_dtype: dtype of :math:`M` (default: each parameter's dtype).
        nu_dtype: dtype of :math:`V` (default: each parameter's dtype).
        factor_dtype: dtype of the factors and bases (default: float32 or wider).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower dtypes.

    Returns:
        A `GradientTransformation` with state `ScaleBySoapState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_soap(), dlopt.scale_by_learning_rate(3e-3))

    References:
        Vyas et al., 2025, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR,
        arXiv:2409.11321; the authors' implementation, github.com/nikhilvyas/SOAP
        (soap.py, commit f42d296), whose defaults these are.
    """
    numerics.check_betas(b1, b2)
    if shampoo_beta is not None:
        validation.check_in_range("shampoo_beta", shampoo_beta, 0.0, 1.0)
    validation.check_non_negative("eps", eps)
    if not isinstance(precondition_frequency, jax.core.Tracer):
        validation.check_int("precondition_frequency", precondition_frequency, 1)
    validation.check_int("max_precond_dim", max_precond_dim, 0)
    layout = {"max_dim": max_precond_dim, "merge": merge_small_dims,
              "precondition_1d": precondition_1d}  # fmt: skip
    cfg = {
        "layout": layout, "b1": b1, "b2": b2, "eps": eps, "correct_bias": correct_bias,
        "shampoo_beta": b2 if shampoo_beta is None else shampoo_beta,
        "normalize_grads": normalize_grads,
    }  # fmt: skip

    def factors_like(p, factor_dtype, eye: bool):
        shape, flags = _layout(tuple(p.shape), **layout)
        dtype = factor_dtype or numerics.compute_dtype(tree_lib.dtype_of(p))
        make = jnp.eye if eye else jnp.zeros
        return tuple(
            (make(d, dtype=dtype) if eye else make((d, d), dtype)) if on else None
            for d, on in zip(shape, flags, strict=True)
        )

    def factors(eye: bool) -> rule.Init:
        return lambda params, dtype: jax.tree.map(lambda p: factors_like(p, dtype, eye), params)

    def step(state, count, params):
        taken = state.count  # Adam steps taken so far, this one included
        refresh = (taken > 0) & (taken % precondition_frequency == 0)
        return {"first": state.count == 0, "refresh": refresh, "step": taken}

    return rule.moment_rule(
        ScaleBySoapState,
        functools.partial(_soap_leaf, cfg=cfg),
        moments={
            "mu": mu_dtype,
            "nu": nu_dtype,
            "preconditioners": rule.Moment(factor_dtype, factors(False), like_params=False),
            "eigenbases": rule.Moment(factor_dtype, factors(True), like_params=False),
        },
        rounding=state_rounding,
        step=step,
    )


def soap(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.95,
    b2: chex.Numeric = 0.95,
    shampoo_beta: chex.Numeric | None = None,
    eps: chex.Numeric = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    mask: Mask | None = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    *,
    merge_small_dims: bool = False,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    factor_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """SOAP: Shampoo's eigenbasis, refreshed every few steps, with Adam running inside it.

    .. math::
        W \\leftarrow W - \\eta \\left(\\frac{\\sqrt{1 - \\beta_2^t}}{1 - \\beta_1^t}\\,
        Q_L \\frac{Q_L^H M Q_R}{\\sqrt{V} + \\epsilon} Q_R^H + \\lambda W\\right)

    with :math:`M, V, Q_L, Q_R` as in `scale_by_soap`. The authors recommend
    :math:`\\eta = 3 \\cdot 10^{-3}`, ``b1 = b2 = 0.95``, weight decay 0.01 and
    ``precondition_frequency=10`` (these defaults), and large batches. Not in optax.

    The weight decay is decoupled and applied to the parameters before the step, as in
    optax's AdamW (the reference decays the already-updated parameters; the two differ by
    :math:`O(\\eta^2 \\lambda)`).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim,
            merge_small_dims, precondition_1d, normalize_grads, correct_bias, mu_dtype,
            nu_dtype, factor_dtype, state_rounding: as in `scale_by_soap`.
        weight_decay: :math:`\\lambda` >= 0 (decoupled, scaled by :math:`\\eta`).
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.

    Returns:
        ``chain(scale_by_soap(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.soap(3e-3)
        >>> state = tx.init({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})

    References:
        Vyas et al., 2025, "SOAP: Improving and Stabilizing Shampoo using Adam", ICLR,
        arXiv:2409.11321.
    """
    return chain(
        scale_by_soap(
            b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim,
            merge_small_dims=merge_small_dims, precondition_1d=precondition_1d,
            normalize_grads=normalize_grads, correct_bias=correct_bias, mu_dtype=mu_dtype,
            nu_dtype=nu_dtype, factor_dtype=factor_dtype, state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
