"""ADOPT: Adam with the second moment one step behind, so any beta2 converges."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

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
from dlopt.optimizers.adam import ScaleByAdamState
from dlopt.transforms.scaling import scale_by_learning_rate


def _clip_modulus(x: chex.Array, limit: chex.Array) -> chex.Array:
    """``x`` clipped to [-limit, limit]; for complex ``x`` its modulus is clipped, keeping
    the phase (optax cannot clip complex values)."""
    limit = limit.astype(jnp.real(x).dtype)
    if jnp.iscomplexobj(x):
        modulus = jnp.abs(x)
        shrink = jnp.minimum(1, limit / jnp.where(modulus > 0, modulus, jnp.ones_like(modulus)))
        return x * shrink.astype(x.dtype)
    return jnp.clip(x, -limit, limit)


def _adopt_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, nesterov, writer, clip, first):
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g, m, v = g.astype(f), mu.astype(f), nu.astype(f)
    denominator = jnp.maximum(jnp.sqrt(jnp.real(v)), tree_lib.scalar_like(eps, jnp.real(v)))
    x = g / denominator.astype(f)  # normalized by the PREVIOUS second moment
    if clip is not None:
        x = _clip_modulus(x, clip)
    # step 1 only initializes v <- g^2; m (and the update) stay zero
    mu = writer.put(jnp.where(first, m, numerics.ema(m, x, b1)), mu, leaf, 1)
    square = numerics.abs_sq(g).astype(f)
    nu = writer.put(jnp.where(first, square, numerics.ema(v, square, b2)), nu, leaf, 2)
    m = mu.astype(f)
    update = jnp.where(first, m, numerics.ema(m, x, b1)) if nesterov else m
    return update.astype(out_dtype), mu, nu


def _default_clip_value(count: chex.Array) -> chex.Array:
    return count**0.25


def scale_by_adopt(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.9999,
    eps: chex.Numeric = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[chex.Array], chex.Array] = _default_clip_value,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by ADOPT's momentum of gradients normalized by the previous second moment.

    .. math::
        v_0 = g_0^2, \\quad m_0 = 0, \\qquad\\text{then for } t \\ge 1:\\quad
        x_t = \\operatorname{clip}\\left(\\frac{g_t}{\\max(\\sqrt{v_{t-1}}, \\epsilon)},
        c(t)\\right), \\quad
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) x_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad u_t = m_t

    The first call only records :math:`v_0 = g_0^2` (its update is zero). Because
    :math:`g_t` is divided by :math:`v_{t-1}`, which does not contain :math:`g_t`, and the
    momentum is taken after the normalization, ADOPT converges for any :math:`\\beta_2`
    (Adam needs :math:`\\beta_2` tuned to the problem). The clip :math:`c(t) = t^{1/4}`
    (``clip_value_fn``, the authors' stabilization; ``use_clipping=False`` removes it)
    bounds early steps. ``nesterov=True`` returns :math:`\\beta_1 m_t + (1 - \\beta_1) x_t`.
    No bias correction (as in the paper and optax).

    Deliberate difference from optax: ``clip_value_fn`` receives the step count as a float32
    scalar (optax passes the int32 count; ``count ** 0.25`` then fails under strict dtype
    promotion). Complex parameters are supported: :math:`g^2` is :math:`|g|^2` and the clip
    bounds the modulus, keeping the phase (optax's ``jnp.clip`` raises on complex values).
    ``nu_dtype`` and ``state_rounding`` are dlopt-only.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0, the floor of :math:`\\sqrt{v}`.
        mu_dtype: dtype of :math:`m` (default: each parameter's dtype).
        nesterov: return the Nesterov look-ahead momentum.
        use_clipping: clip the normalized gradient to :math:`[-c(t), c(t)]`.
        clip_value_fn: :math:`c`, a function of the (0-based) step count.
        nu_dtype: dtype of :math:`v` (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower state dtypes
            (dlopt only).

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState` (``count``, ``mu``, ``nu``).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adopt(), dlopt.scale_by_learning_rate(1e-3))

    References:
        Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the
        Optimal Rate", NeurIPS.
    """
    rule.check_moment_hyperparameters(b1, b2, eps)
    if not callable(clip_value_fn):
        raise TypeError(f"clip_value_fn must be a function of the step, got {clip_value_fn!r}.")

    def step(state, count, params):
        clip = None
        if use_clipping:
            clip = jnp.asarray(clip_value_fn(state.count.astype(jnp.float32)))
        return {"clip": clip, "first": state.count == 0}

    return rule.moment_rule(
        ScaleByAdamState,
        functools.partial(_adopt_leaf, b1=b1, b2=b2, eps=eps, nesterov=nesterov),
        moments={"mu": mu_dtype, "nu": nu_dtype},
        rounding=state_rounding,
        step=step,
    )


def adopt(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.9999,
    eps: chex.Numeric = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[chex.Array], chex.Array] = _default_clip_value,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """ADOPT: Adam that converges with any :math:`\\beta_2` (Taniguchi et al., 2024).

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1)\\,
        \\operatorname{clip}\\left(\\frac{g}{\\max(\\sqrt{v}, \\epsilon)}, t^{1/4}\\right),
        \\quad v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad w \\leftarrow w - \\eta m

    with :math:`v` updated after it normalizes :math:`g`, and the first step only setting
    :math:`v = g^2` (see `scale_by_adopt`, which also lists the differences from optax).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1, b2, eps, mu_dtype, nesterov, use_clipping, clip_value_fn, nu_dtype,
            state_rounding: as in `scale_by_adopt`.

    Returns:
        ``chain(scale_by_adopt(...), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adopt(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Taniguchi et al., 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the
        Optimal Rate", NeurIPS.
    """
    return chain(
        scale_by_adopt(
            b1, b2, eps, mu_dtype, nesterov=nesterov, use_clipping=use_clipping,
            clip_value_fn=clip_value_fn, nu_dtype=nu_dtype, state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
