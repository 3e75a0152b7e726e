"""ACProp: AdaBelief's centered second moment, applied one step late (asynchronously)."""

from __future__ import annotations

import functools

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, ScalarOrSchedule
from dlopt.core.combine import Mask, chain
from dlopt.optimizers.adabelief import ScaleByBeliefState
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


def _acprop_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, eps_root, writer, first, t):
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)
    g, m_prev, s_prev = g.astype(f), mu.astype(f), nu.astype(f)
    # the denominator uses s_{t-1} only: the current gradient never scales itself
    s_hat = jnp.where(first, jnp.ones_like(s_prev), numerics.unbias(s_prev, b2, t))
    update = g / (jnp.sqrt(s_hat) + tree_lib.scalar_like(eps, s_hat))
    mu = writer.put(numerics.ema(m_prev, g, b1), mu, leaf, 1)
    s = numerics.ema(s_prev, numerics.abs_sq(g - m_prev), b2)
    nu = writer.put(s + tree_lib.scalar_like(eps_root, s), nu, leaf, 2)
    return update.astype(out_dtype), mu, nu


def scale_by_acprop(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-16,
    eps_root: chex.Numeric = 1e-16,
) -> GradientTransformation:
    """Scales the gradient by ACProp's asynchronous, centered second moment.

    .. math::
        u_t = \\frac{g_t}{\\sqrt{s_{t-1} / (1 - \\beta_2^{t-1})} + \\epsilon}, \\quad
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        s_t = \\beta_2 s_{t-1} + (1 - \\beta_2)(g_t - m_{t-1})^2 + \\epsilon_{root}

    with :math:`\\sqrt{\\hat s_0} := 1` at the first step. The numerator is the raw gradient;
    the denominator holds information up to step :math:`t - 1` only (asynchronous update).

    Args:
        b1: :math:`\\beta_1` in [0, 1), the decay of the gradient's mean.
        b2: :math:`\\beta_2` in [0, 1), the decay of the centered second moment.
        eps: :math:`\\epsilon` >= 0, added to the denominator.
        eps_root: :math:`\\epsilon_{root}` >= 0, added to :math:`s_t` at every step (must be
            > 0 when differentiating through the update).

    Returns:
        A `GradientTransformation` with state `ScaleByBeliefState` (``count``, ``mu``, ``nu``).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_acprop(), dlopt.scale_by_learning_rate(1e-3))

    References:
        Zhuang et al., 2021, "Momentum Centering and Asynchronous Update for Adaptive Gradient
        Methods", NeurIPS (arXiv:2110.05454).
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)

    def step(state, count, params):
        first = state.count == 0
        return {"first": first, "t": jnp.where(first, count, state.count)}

    return rule.moment_rule(
        ScaleByBeliefState,
        functools.partial(_acprop_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        moments={"mu": None, "nu": None},
        rounding="nearest",
        step=step,
    )


def acprop(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-16,
    eps_root: chex.Numeric = 1e-16,
    weight_decay: chex.Numeric = 0.0,
    mask: Mask | None = None,
) -> GradientTransformation:
    """ACProp: momentum centering and asynchronous update (Zhuang et al., 2021).

    .. math::
        w \\leftarrow w - \\eta_t \\left(\\frac{g_t}{\\sqrt{\\hat s_{t-1}} + \\epsilon}
        + \\lambda w\\right)

    with :math:`\\hat s_{t-1}` the bias-corrected centered second moment of the previous step
    (see `scale_by_acprop`). Follows the authors' PyTorch implementation, as optax does.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1, b2, eps, eps_root: as in `scale_by_acprop`.
        weight_decay: :math:`\\lambda` >= 0, decoupled weight decay (multiplied by the
            learning rate, as in PyTorch).
        mask: which leaves are decayed: a tree of bools or a function of the params.

    Returns:
        ``chain(scale_by_acprop(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.acprop(0.1)
        >>> params = jnp.array([1.0, -2.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update(jax.grad(lambda w: jnp.sum(w**2))(params), state, params)
        ...     params = dlopt.apply_updates(params, updates)
        >>> bool(jnp.sum(params**2) < 5.0)
        True

    References:
        Zhuang et al., 2021, "Momentum Centering and Asynchronous Update for Adaptive Gradient
        Methods", NeurIPS (arXiv:2110.05454).
    """
    return chain(
        scale_by_acprop(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
