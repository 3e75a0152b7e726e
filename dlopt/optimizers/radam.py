"""RAdam: Adam whose adaptive step is switched on and scaled by a variance rectification."""

from __future__ import annotations

import functools
import math
from typing import Any

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
from dlopt.core.combine import chain
from dlopt.optimizers.adam import ScaleByAdamState
from dlopt.transforms.scaling import scale_by_learning_rate

# B_2k / (2k)!, the Taylor coefficients of x / (e^x - 1) = 1 - x/2 + sum_k c_k x^(2k).
_BERNOULLI = (
    1 / 12, -1 / 720, 1 / 30240, -1 / 1209600, 1 / 47900160, -691 / 1307674368000,
    1 / 74724249600,
)  # fmt: skip
_SERIES_UP_TO = 1.0  # the series is used for t * log(1 / b2) <= this (it converges below 2 pi)


def _b2_constants(b2: chex.Numeric) -> tuple[Any, Any, Any]:
    """``log(1 / b2)``, ``rho_inf = 2 / (1 - b2) - 1`` and ``rho_inf / ((rho_inf - 4)
    (rho_inf - 2))``, in float64 when ``b2`` is a number (then rounded once to float32)."""
    if isinstance(b2, jax.core.Tracer) or (isinstance(b2, jax.Array) and b2.size != 1):
        b2 = jnp.asarray(b2).astype(jnp.float32)
        rho_inf = 2 / (1 - b2) - 1
        k = jnp.where(rho_inf > 4, rho_inf / ((rho_inf - 4) * (rho_inf - 2)), 0.0)
        return -jnp.log(b2), rho_inf, k
    b2 = float(b2)
    rho_inf = 2 / (1 - b2) - 1
    k = rho_inf / ((rho_inf - 4) * (rho_inf - 2)) if rho_inf > 4 else 0.0
    log_inv = -math.log(b2) if b2 > 0 else math.inf
    return tuple(jnp.asarray(v, jnp.float32) for v in (log_inv, rho_inf, k))


def rectification(count: chex.Array, b2: chex.Numeric) -> tuple[chex.Array, chex.Array]:
    """RAdam's ``(rho_t, r_t)`` at step ``count`` (t = 1, 2, ...), in float32, accurate to a
    few float32 ulps (relative) for every t and ``b2``.

    .. math::
        \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1 - \\beta_2^t}, \\quad
        r_t = \\sqrt{\\frac{(\\rho_t - 4)(\\rho_t - 2)\\rho_\\infty}
        {(\\rho_\\infty - 4)(\\rho_\\infty - 2)\\rho_t}}

    Written as above, :math:`\\rho_t` is the difference of two numbers near
    :math:`\\rho_\\infty = 2 / (1 - \\beta_2) - 1` (2e4 for :math:`\\beta_2 = 0.9999`) while
    it is itself about :math:`t`: float32 loses up to 1e-3 absolute in the first steps. With
    :math:`L = \\log(1/\\beta_2)` and :math:`x = tL`, the identity
    :math:`\\rho_t = t - \\frac{2}{L}\\sum_{k \\ge 1} \\frac{B_{2k}}{(2k)!}(x^{2k} - L^{2k})`
    (from the Bernoulli series of :math:`x / (e^x - 1)`) has no cancellation; it is used for
    :math:`x \\le 1`, and :math:`\\rho_\\infty - 2t / \\operatorname{expm1}(x)` (which loses
    at most a factor 2.4 there) beyond. :math:`r_t` is meaningful where :math:`\\rho_t > 4`.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.optimizers.radam import rectification
        >>> rho, r = rectification(jnp.asarray(6, jnp.int32), 0.999)
        >>> round(float(rho), 5)
        5.99416
    """
    log_inv, rho_inf, k = _b2_constants(b2)
    t = jnp.asarray(count).astype(jnp.float32)
    x = t * log_inv
    x2, l2 = x * x, log_inv * log_inv
    x_pow, l_pow, total = x2, l2, jnp.zeros_like(x)
    for c in _BERNOULLI:
        total = total + jnp.float32(c) * (x_pow - l_pow)
        x_pow, l_pow = x_pow * x2, l_pow * l2
    small = x <= _SERIES_UP_TO
    series = t - 2 * total / jnp.where(small, log_inv, 1.0)
    direct = rho_inf - 2 * t / jnp.expm1(jnp.where(small, 1.0, x))
    rho = jnp.where(small, series, direct)
    ratio = (rho - 4) * (rho - 2) / rho
    r = jnp.sqrt(jnp.maximum(k * ratio, 0.0))
    return rho, r


def _radam_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, eps_root, nesterov, writer, rect):
    count = writer.count
    rectified, r = rect
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, b1), mu, leaf, 1)
    nu = writer.put(numerics.ema(nu.astype(f), numerics.abs_sq(g), b2), nu, leaf, 2)
    m, v = mu.astype(f), nu.astype(f)
    m_hat = numerics.unbias_momentum(m, g, b1, count, nesterov=nesterov)
    v_hat = numerics.unbias(v, b2, count)
    denominator = jnp.sqrt(v_hat + tree_lib.scalar_like(eps_root, v_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    adaptive = r.astype(m_hat.dtype) * m_hat / denominator
    return jnp.where(rectified, adaptive, m_hat).astype(out_dtype), mu, nu


def scale_by_radam(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    threshold: chex.Numeric = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by Rectified Adam's step: bias-corrected momentum until the variance of the
    adaptive step is tractable, then the Adam step times the rectification :math:`r_t`.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        \\hat m_t = \\frac{m_t}{1 - \\beta_1^t}, \\quad \\hat v_t = \\frac{v_t}{1 - \\beta_2^t}

    .. math::
        u_t = \\begin{cases} r_t \\dfrac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} +
        \\epsilon} & \\rho_t \\ge \\text{threshold} \\\\ \\hat m_t & \\text{otherwise}
        \\end{cases}

    with :math:`\\rho_t, r_t` as in `rectification`. ``nesterov=True`` uses Nadam's
    :math:`\\hat m_t` (see `scale_by_adam`). Complex parameters use :math:`|g_t|^2`.

    Deliberate difference from optax: :math:`\\rho_t` and :math:`r_t` are computed without
    optax's float32 cancellation (`rectification`), so they equal the float64 values to
    1e-6 relative (optax's rectified step is off by up to 7e-5 relative in the first 200
    steps for :math:`\\beta_2 = 0.99`, 6e-3 for 0.999 and 0.58 for 0.9999); ``threshold``
    must be >= 4 (below it, :math:`\\rho_t \\in (2, 4)` makes :math:`r_t` the root of a
    negative number and optax's step NaN).
    Against torch.optim.RAdam: the same except that torch switches on at :math:`\\rho_t > 5`
    (strictly) and adds :math:`\\epsilon` to :math:`\\sqrt{v_t}` rather than to
    :math:`\\sqrt{\\hat v_t}`.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0, added outside the root.
        eps_root: :math:`\\epsilon_{root}` >= 0, added inside the root.
        threshold: the :math:`\\rho_t` from which the rectified adaptive step is taken, >= 4
            (optax and torch: 5; the paper: 4).
        nesterov: use Nesterov momentum.
        mu_dtype, nu_dtype: storage dtypes of :math:`m` and :math:`v` (default: each
            parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState` (optax's too).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_radam(), dlopt.scale_by_learning_rate(1e-3))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    validation.check_in_range("threshold", threshold, 4.0, math.inf)

    def step(state, count, params):
        rho, r = rectification(count, b2)
        return {"rect": (rho >= jnp.asarray(threshold).astype(rho.dtype), r)}

    leaf_fn = functools.partial(
        _radam_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov
    )
    return rule.moment_rule(
        ScaleByAdamState,
        leaf_fn,
        moments={"mu": mu_dtype, "nu": nu_dtype},
        rounding=state_rounding,
        step=step,
    )


def radam(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    threshold: chex.Numeric = 5.0,
    *,
    nesterov: bool = False,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """RAdam (Rectified Adam): SGD with momentum while Adam's adaptive step has intractable
    variance, then Adam scaled by the rectification :math:`r_t`.

    .. math::
        \\rho_\\infty = \\frac{2}{1 - \\beta_2} - 1, \\quad
        \\rho_t = \\rho_\\infty - \\frac{2 t \\beta_2^t}{1 - \\beta_2^t}, \\quad
        r_t = \\sqrt{\\frac{(\\rho_t - 4)(\\rho_t - 2)\\rho_\\infty}
        {(\\rho_\\infty - 4)(\\rho_\\infty - 2)\\rho_t}}

    .. math::
        w \\leftarrow w - \\eta\\, r_t \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}}
        + \\epsilon} \\ \\text{if } \\rho_t \\ge \\text{threshold}, \\quad\\text{else}\\quad
        w \\leftarrow w - \\eta\\, \\hat m_t

    with :math:`\\hat m_t, \\hat v_t` as in `adam`. See `scale_by_radam` for the deliberate
    differences from optax (an exact :math:`r_t`, ``threshold >= 4``) and from torch.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1, b2, eps, eps_root, threshold, nesterov: as in `scale_by_radam`.
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_radam` (dlopt only).

    Returns:
        ``chain(scale_by_radam(...), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.radam(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and Beyond", ICLR.
    """
    return chain(
        scale_by_radam(
            b1, b2, eps, eps_root, threshold, nesterov=nesterov, mu_dtype=mu_dtype,
            nu_dtype=nu_dtype, state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
