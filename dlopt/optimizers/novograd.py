"""NovoGrad: momentum of gradients normalized by a layer-wise second moment."""

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
from dlopt.core.combine import chain
from dlopt.core.per_leaf import per_leaf
from dlopt.transforms.scaling import scale_by_learning_rate


def _novograd_leaf(g, mu, nu, p, leaf, out_dtype, *, b1, b2, eps, eps_root, decay, writer):
    first = writer.count == 1
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g = g.astype(f)
    norm_sq = jnp.sum(numerics.abs_sq(g)).astype(f)  # ||g||^2 of the whole layer (leaf)
    nu = writer.put(jnp.where(first, norm_sq, numerics.ema(nu.astype(f), norm_sq, b2)), nu, leaf, 2)
    n = nu.astype(f)
    denominator = jnp.sqrt(n + tree_lib.scalar_like(eps_root, n))
    step = g / (denominator + tree_lib.scalar_like(eps, denominator))
    if decay is not None:  # may be traced (inject_hyperparams)
        step = step + tree_lib.scalar_like(decay, step) * p.astype(f)
    momentum = jnp.where(first, step, tree_lib.scalar_like(b1, step) * mu.astype(f) + step)
    mu = writer.put(momentum, mu, leaf, 1)
    return mu.astype(f).astype(out_dtype), mu, nu


class ScaleByNovogradState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the momentum of normalized gradients (in mu_dtype)
    nu: chex.ArrayTree  # v, one scalar per leaf: the EMA of ||g||^2 over the leaf


@per_leaf
def scale_by_novograd(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.25,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    weight_decay: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by NovoGrad's step: momentum of gradients divided by the root of a per-layer
    (per-leaf) moving average of the squared gradient norm.

    .. math::
        v_1 = \\|g_1\\|^2, \\quad v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) \\|g_t\\|^2, \\quad
        s_t = \\frac{g_t}{\\sqrt{v_t + \\epsilon_{root}} + \\epsilon} + \\lambda w_t

    .. math::
        m_1 = s_1, \\quad m_t = \\beta_1 m_{t-1} + s_t, \\quad u_t = m_t

    :math:`\\|\\cdot\\|` is the norm of the whole leaf, so :math:`v` is one scalar per leaf
    (half Adam's memory); the weight decay :math:`\\lambda w` enters before the momentum.
    Complex parameters use :math:`\\|g\\|^2 = \\sum |g_i|^2`.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        weight_decay: :math:`\\lambda` >= 0 (a number); ``update`` needs ``params`` when it
            is not 0.
        mu_dtype: storage dtype of :math:`m` (default: each parameter's).
        nu_dtype: storage dtype of :math:`v` (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower storage
            dtypes; dlopt only.

    Returns:
        A `GradientTransformation` with state `ScaleByNovogradState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_novograd(), dlopt.scale_by_learning_rate(1e-2))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    validation.check_non_negative("weight_decay", weight_decay)
    decays = not (isinstance(weight_decay, int | float) and weight_decay == 0)

    def inputs(updates, state, params):
        if decays and params is None:
            raise ValueError(
                f"scale_by_novograd with weight_decay={weight_decay!r} needs params: call "
                "update(updates, state, params)."
            )
        return (params if params is not None else updates,)

    def layer_scalars(params, dtype):  # one v per leaf
        return jax.tree.map(lambda p: jnp.zeros([], dtype or tree_lib.dtype_of(p)), params)

    leaf_fn = functools.partial(
        _novograd_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
        decay=weight_decay if decays else None,
    )  # fmt: skip
    return rule.moment_rule(
        ScaleByNovogradState,
        leaf_fn,
        moments={"mu": mu_dtype, "nu": rule.Moment(nu_dtype, layer_scalars, like_params=False)},
        rounding=state_rounding,
        inputs=inputs,
    )


def novograd(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.25,
    eps: chex.Numeric = 1e-6,
    eps_root: chex.Numeric = 0.0,
    weight_decay: chex.Numeric = 0.0,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """NovoGrad: SGD with momentum on gradients normalized layer by layer.

    .. math::
        w \\leftarrow w - \\eta\\, m_t, \\quad
        m_t = \\beta_1 m_{t-1} + \\frac{g_t}{\\sqrt{v_t + \\epsilon_{root}} + \\epsilon} +
        \\lambda w_t

    with the per-leaf :math:`v_t` of `scale_by_novograd`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1, b2, eps, eps_root, weight_decay: as in `scale_by_novograd`.
        mu_dtype, nu_dtype, state_rounding: as in `scale_by_novograd` (dlopt only here).

    Returns:
        ``chain(scale_by_novograd(...), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.novograd(1e-2)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Ginsburg et al., 2019, "Stochastic Gradient Methods with Layer-wise Adaptive Moments
        for Training of Deep Networks", arXiv:1905.11286.
    """
    return chain(
        scale_by_novograd(
            b1, b2, eps, eps_root, weight_decay, mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
