"""AMSGrad: Adam dividing by the running maximum of its second moment."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.transforms.scaling import scale_by_learning_rate


def _amsgrad_leaf(
    g, mu, nu, nu_max, leaf, out_dtype, *, b1, b2, eps, eps_root, correct_mu, correct_nu, writer
):
    count = writer.count
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype, nu_max.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, b1), mu, leaf, 1)
    nu = writer.put(numerics.ema(nu.astype(f), numerics.abs_sq(g), b2), nu, leaf, 2)
    m, v = mu.astype(f), nu.astype(f)
    m_hat = numerics.unbias(m, b1, count) if correct_mu else m
    v_eff = numerics.unbias(v, b2, count) if correct_nu else v
    v_max = jnp.maximum(jnp.real(nu_max.astype(f)), jnp.real(v_eff)).astype(f)  # real parts
    nu_max = writer.put(v_max, nu_max, leaf, 3)
    v_max = nu_max.astype(f)
    denominator = jnp.sqrt(v_max + tree_lib.scalar_like(eps_root, v_max))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (m_hat / denominator).astype(out_dtype), mu, nu, nu_max


class ScaleByAmsgradState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the first moment (in mu_dtype)
    nu: chex.ArrayTree  # v, the second moment
    nu_max: chex.ArrayTree  # the running maximum of (bias-corrected) v


def scale_by_amsgrad(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by AMSGrad's step: Adam's, over the running maximum of the second moment.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        \\hat v^{\\max}_t = \\max\\left(\\hat v^{\\max}_{t-1}, \\frac{v_t}{1 - \\beta_2^t}\\right),
        \\quad u_t = \\frac{m_t / (1 - \\beta_1^t)}{\\sqrt{\\hat v^{\\max}_t +
        \\epsilon_{root}} + \\epsilon}

    ``bias_correction_mu=False`` / ``bias_correction_nu=False`` drop the divisions by
    :math:`1 - \\beta^t` (the paper has none). The maximum keeps the effective step size
    non-increasing, which is what restores Adam's convergence guarantee. Complex parameters
    use :math:`|g_t|^2` and the maximum of real parts.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: storage dtype of :math:`m` (default: each parameter's).
        bias_correction_mu: divide :math:`m_t` by :math:`1 - \\beta_1^t`.
        bias_correction_nu: divide :math:`v_t` by :math:`1 - \\beta_2^t` before the maximum.
        nu_dtype: storage dtype of :math:`v` and its maximum (dlopt only; optax keeps them
            in the parameters' dtype).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByAmsgradState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_amsgrad(), dlopt.scale_by_learning_rate(1e-3))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    leaf_fn = functools.partial(
        _amsgrad_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root, correct_mu=bias_correction_mu,
        correct_nu=bias_correction_nu,
    )  # fmt: skip
    return rule.moment_rule(
        ScaleByAmsgradState,
        leaf_fn,
        moments={"mu": mu_dtype, "nu": nu_dtype, "nu_max": nu_dtype},
        rounding=state_rounding,
    )


def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """AMSGrad: Adam with a non-increasing effective step size.

    .. math::
        \\hat v^{\\max}_t = \\max(\\hat v^{\\max}_{t-1}, \\hat v_t), \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m_t}{\\sqrt{\\hat v^{\\max}_t + \\epsilon_{root}}
        + \\epsilon}

    with :math:`\\hat m_t, \\hat v_t` as in `adam` (see `scale_by_amsgrad` for the options).
    torch.optim.Adam(amsgrad=True) keeps the maximum of the uncorrected :math:`v_t` and
    divides it by :math:`1 - \\beta_2^t` afterwards: a denominator never larger than this one.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu: as in
            `scale_by_amsgrad`.
        nu_dtype, state_rounding: as in `scale_by_amsgrad` (dlopt only).

    Returns:
        ``chain(scale_by_amsgrad(...), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.amsgrad(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Reddi, Kale and Kumar, 2018, "On the Convergence of Adam and Beyond", ICLR.
    """
    return chain(
        scale_by_amsgrad(
            b1, b2, eps, eps_root, mu_dtype, bias_correction_mu, bias_correction_nu,
            nu_dtype=nu_dtype, state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
