"""SM3: AdaGrad with one accumulator per row, column, ... of each tensor (sublinear memory)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax.tree_util import keystr, tree_flatten_with_path

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.core.per_leaf import per_leaf
from dlopt.transforms.scaling import scale_by_learning_rate


def _zeros_along_axis(p: Any, axis: int, dtype: Any) -> chex.Array:
    """Zeros shaped (and sharded) like axis ``axis`` of ``p``; ``p`` may be abstract."""
    others = tuple(i for i in range(len(p.shape)) if i != axis)
    return jnp.zeros_like(jax.eval_shape(lambda x: jnp.sum(x, axis=others), p), dtype=dtype)


def _cover(p: Any, dtype: Any) -> list[chex.Array]:
    """One accumulator per axis of ``p``: ``[zeros(n_0), zeros(n_1), ...]`` (a scalar has one)."""
    if len(p.shape) == 0:
        return [jnp.zeros_like(p, dtype=dtype)]
    return [_zeros_along_axis(p, i, dtype) for i in range(len(p.shape))]


def _sum_weight(b2: chex.Numeric) -> chex.Numeric:
    """The weight of :math:`g^2` in the accumulator: 1 for a plain sum (b2 = 1), else 1 - b2."""
    if isinstance(b2, int | float):
        return 1.0 if b2 == 1.0 else 1.0 - b2
    return jnp.where(jnp.asarray(b2) == 1, 1.0, 1.0 - jnp.asarray(b2))


def _sm3_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, writer):
    f = numerics.compute_dtype(g.dtype, nu.dtype, *(m.dtype for m in mu))
    g = g.astype(f)
    if g.ndim < 2:
        prior = mu[0].astype(f)
    else:  # nu'(i) = min over the accumulators covering i
        shapes = [[1] * i + [n] + [1] * (g.ndim - i - 1) for i, n in enumerate(g.shape)]
        prior = functools.reduce(
            jnp.minimum, [m.astype(f).reshape(s) for m, s in zip(mu, shapes, strict=True)]
        )
    accum = tree_lib.scalar_like(_sum_weight(b2), g) * jnp.square(g) + (
        tree_lib.scalar_like(b2, g) * prior
    )
    inverse_root = jnp.where(accum > 0, jax.lax.rsqrt(accum + tree_lib.scalar_like(eps, g)), 0.0)
    nu = writer.put(numerics.ema(nu.astype(f), g * inverse_root.astype(f), b1), nu, leaf, 1)
    if g.ndim < 2:
        new_mu = [accum]
    else:  # mu'(r) = max of accum over the entries r covers
        new_mu = [
            jnp.max(accum, axis=tuple(j for j in range(g.ndim) if j != i)) for i in range(g.ndim)
        ]
    pairs = enumerate(zip(new_mu, mu, strict=True))
    mu = [writer.put(m, old, leaf, 2 + i) for i, (m, old) in pairs]
    return nu.astype(f).astype(out_dtype), mu, nu


def _reject_complex(params: chex.ArrayTree) -> None:
    for path, leaf in tree_flatten_with_path(params)[0]:
        if jnp.issubdtype(tree_lib.dtype_of(leaf), jnp.complexfloating):
            raise TypeError(
                f"sm3 does not support complex parameters (as in optax), but params{keystr(path)} "
                f"has dtype {tree_lib.dtype_of(leaf)}. Optimize the real and imaginary parts as "
                "two real leaves."
            )


class ScaleBySM3State(NamedTuple):
    mu: chex.ArrayTree  # per leaf, a list of accumulators of g^2: one per axis (in nu_dtype)
    nu: chex.ArrayTree  # the momentum of the scaled gradients (in mu_dtype)
    count: chex.Array | None = None  # int32 step (dlopt only): seeds stochastic rounding


@per_leaf
def scale_by_sm3(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 1.0,
    eps: chex.Numeric = 1e-8,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by SM3-II's cover-based AdaGrad accumulators, then adds momentum.

    For a leaf of shape :math:`(n_1, \\ldots, n_k)` the cover is its rows along each axis;
    accumulator :math:`\\mu^{(a)}` has :math:`n_a` entries (:math:`\\sum_a n_a` numbers
    instead of :math:`\\prod_a n_a`). For each entry :math:`i`:

    .. math::
        \\nu'_t(i) = w\\, g_t(i)^2 + \\beta_2 \\min_a \\mu^{(a)}_{t-1}(i_a), \\qquad
        \\mu^{(a)}_t(r) = \\max_{i:\\, i_a = r} \\nu'_t(i),

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) \\frac{g_t}{\\sqrt{\\nu'_t + \\epsilon}}
        \\ (0 \\text{ where } \\nu'_t = 0), \\qquad u_t = m_t

    with :math:`w = 1` for :math:`\\beta_2 = 1` (AdaGrad's sum, the paper) and
    :math:`1 - \\beta_2` otherwise. Vectors and scalars keep one accumulator per entry
    (plain AdaGrad). Real parameters only, as in optax.

    Deliberate difference from optax: scalar leaves work (optax raises an IndexError), and
    ``state.count`` is added (last field) for the rounding seeds.

    Args:
        b1: :math:`\\beta_1` in [0, 1), the momentum.
        b2: :math:`\\beta_2` in [0, 1]; 1 sums the squared gradients.
        eps: :math:`\\epsilon` >= 0.
        mu_dtype: dtype of the momentum ``state.nu`` (first-moment-like; dlopt only).
        nu_dtype: dtype of the accumulators ``state.mu`` (second-moment-like; dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower dtypes.

    Returns:
        A `GradientTransformation` with state `ScaleBySM3State`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_sm3(), dlopt.scale_by_learning_rate(0.1))

    References:
        Anil, Gupta, Koren and Singer, 2019, "Memory-Efficient Adaptive Optimization",
        NeurIPS.
    """
    validation.check_in_range("b1", b1, 0.0, 1.0)
    validation.check_in_range("b2", b2, 0.0, 1.0, high_closed=True)
    validation.check_non_negative("eps", eps)

    def covers(params, dtype):  # optax's names: mu holds the covers, nu the momentum
        _reject_complex(params)
        return jax.tree.map(lambda p: _cover(p, dtype or tree_lib.dtype_of(p)), params)

    return rule.moment_rule(
        ScaleBySM3State,
        functools.partial(_sm3_leaf, b1=b1, b2=b2, eps=eps),
        moments={
            "mu": rule.Moment(validation.check_storage_dtype("nu_dtype", nu_dtype), covers, False),
            "nu": validation.check_storage_dtype("mu_dtype", mu_dtype),
        },
        rounding=state_rounding,
    )


def sm3(
    learning_rate: ScalarOrSchedule,
    momentum: chex.Numeric = 0.9,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """SM3: AdaGrad's per-coordinate steps from per-row and per-column accumulators.

    .. math::
        w \\leftarrow w - \\eta\\, m, \\qquad
        m \\leftarrow \\beta m + (1 - \\beta) \\frac{g}{\\sqrt{\\nu'}}

    with :math:`\\nu'` the cover-based AdaGrad accumulator of `scale_by_sm3` (a sum of
    squared gradients, bounded through row/column maxima).

    Deliberate difference from optax: ``learning_rate`` may be a schedule (optax's
    ``scale(-learning_rate)`` takes a number only); scalar leaves work.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        momentum: :math:`\\beta` in [0, 1).
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_sm3` (dlopt only).

    Returns:
        ``chain(scale_by_sm3(momentum), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.sm3(0.1)
        >>> state = tx.init({"w": jnp.zeros((300, 200))})  # 500 accumulators, not 60000

    References:
        Anil, Gupta, Koren and Singer, 2019, "Memory-Efficient Adaptive Optimization",
        NeurIPS.
    """
    validation.check_in_range("momentum", momentum, 0.0, 1.0)
    return chain(
        scale_by_sm3(momentum, mu_dtype=mu_dtype, nu_dtype=nu_dtype, state_rounding=state_rounding),
        scale_by_learning_rate(learning_rate),
    )
