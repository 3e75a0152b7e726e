"""MoMo and MoMo-Adam: momentum with a Polyak-type step from a model of the loss."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformationExtraArgs, ScalarOrSchedule

_TINY = float(jnp.finfo(float).eps)  # optax's "no step" threshold on the squared norm


class MomoState(NamedTuple):
    """State of `momo` (optax's field names)."""

    exp_avg: chex.ArrayTree  # d_k, the momentum of the gradients
    barf: chex.Array  # f_bar_k, the momentum of the loss values
    gamma: chex.Array  # gamma_k, the momentum of <g_k, x_k>
    lb: chex.Array  # f_*, the (possibly adapted) lower bound of the loss
    count: chex.Array  # int32 step, saturating


class MomoAdamState(NamedTuple):
    """State of `momo_adam` (optax's field names)."""

    exp_avg: chex.ArrayTree  # d_k, the momentum of the gradients
    exp_avg_sq: chex.ArrayTree  # v_k, the second moment
    barf: chex.Array
    gamma: chex.Array
    lb: chex.Array
    count: chex.Array


def _check(learning_rate, lower_bound, weight_decay, adapt_lower_bound) -> None:
    validation.check_learning_rate(learning_rate)
    validation.check_finite("lower_bound", lower_bound)
    validation.check_non_negative("weight_decay", weight_decay)
    validation.check_flag("adapt_lower_bound", adapt_lower_bound)


def _init(params, lower_bound, *, second_moment: bool):
    tree_lib.check_float_params(params)
    dtype = numerics.scalar_dtype(params)
    zero = jnp.zeros([], dtype)
    moments = (tree_lib.zeros_like(params),) * (2 if second_moment else 1)
    return (*moments, zero, zero, jnp.asarray(lower_bound, dtype), jnp.zeros([], jnp.int32))


def _inputs(name, updates, params, value, barf):
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params, value=loss).")
    if value is None:
        raise ValueError(f"{name} needs the loss: call update(..., value=loss).")
    tree_lib.check_matching_trees(params, updates, "params", "updates")
    return jnp.asarray(value).astype(barf.dtype)


def _polyak_step(*, barf, gamma, iprod, sq_norm, lb, alpha, weight_decay, lower_bound, bc1, adapt):
    """MoMo's truncated Polyak step ``tau`` and next lower bound (``bc1 = 1`` for `momo`)."""
    shrink = 1 + alpha * weight_decay
    this_lb = lb
    if adapt:
        cap = shrink * (barf - gamma) + iprod
        this_lb = jnp.where(
            cap < shrink * bc1 * lb, jnp.maximum(cap / (2 * bc1 * shrink), lower_bound), lb
        )
    gap = jnp.maximum(shrink * (barf - bc1 * this_lb - gamma) + iprod, 0.0)
    t1 = jnp.where(sq_norm <= _TINY, 0.0, gap / sq_norm)  # a zero direction: no step
    tau = jnp.minimum(alpha / bc1, t1)
    new_lb = lb
    if adapt:
        new_lb = jnp.maximum(((barf + iprod - gamma) - 0.5 * tau * sq_norm) / bc1, lower_bound)
    return tau, new_lb.astype(lb.dtype), shrink


def _decayed_step(direction, params, updates, *, alpha, weight_decay, shrink, tau):
    """``-(alpha lambda / (1 + alpha lambda)) x - tau d`` per leaf, in each parameter's dtype."""

    def one(d, p, out):
        f = numerics.compute_dtype(p.dtype, tau.dtype)
        p = p.astype(f)
        return (-(alpha * weight_decay) / shrink * p - tau * d.astype(f)).astype(out)

    return jax.tree.map(one, direction, params, numerics.out_dtypes(updates, params))


def _alpha(learning_rate, count, dtype):
    alpha = learning_rate(count) if callable(learning_rate) else learning_rate
    return jnp.asarray(alpha).astype(dtype)


def momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: chex.Numeric = 0.9,
    lower_bound: chex.Numeric = 0.0,
    weight_decay: chex.Numeric = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformationExtraArgs:
    """MoMo: SGD with momentum and the step size of a momentum model of the loss.

    With :math:`\\beta_k = 0` at the first step and :math:`\\beta` after,

    .. math::
        d_k = \\beta_k d_{k-1} + (1 - \\beta_k) g_k, \\quad
        \\bar f_k = \\beta_k \\bar f_{k-1} + (1 - \\beta_k) f(x_k), \\quad
        \\gamma_k = \\beta_k \\gamma_{k-1} + (1 - \\beta_k) \\langle g_k, x_k \\rangle,

        \\tau_k = \\min\\left(\\alpha_k, \\frac{\\big((1 + \\alpha_k\\lambda)(\\bar f_k - f_*
        - \\gamma_k) + \\langle d_k, x_k \\rangle\\big)_+}{\\|d_k\\|^2}\\right), \\quad
        x_{k+1} = \\frac{x_k - \\tau_k d_k}{1 + \\alpha_k \\lambda}

    (the update is :math:`x_{k+1} - x_k`; no step when :math:`\\|d_k\\|^2` is below float64's
    machine epsilon). ``adapt_lower_bound=True`` estimates :math:`f_*` on the fly (Sec. 5 of
    the paper). Pass the batch loss: ``update(grads, state, params, value=loss)``.

    Deliberate difference from optax: the scalar state is float32 (float64 with float64
    params), not the params' lowest dtype.

    Args:
        learning_rate: :math:`\\alpha` >= 0, or a schedule; large is fine (default 1).
        beta: :math:`\\beta` in [0, 1), the momentum.
        lower_bound: :math:`f_*`, a lower bound of the loss (finite; 0 for most losses).
        weight_decay: :math:`\\lambda` >= 0.
        adapt_lower_bound: estimate :math:`f_*` on the fly.

    Returns:
        A `GradientTransformationExtraArgs` with state `MomoState`; ``update`` needs
        ``params`` and ``value``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.momo()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> value, grads = jax.value_and_grad(lambda w: jnp.sum(w**2))(params)
        >>> updates, state = tx.update(grads, state, params, value=value)
        >>> print(jnp.sum(dlopt.apply_updates(params, updates) ** 2))
        3.5

    References:
        Schaipp, Ohana, Eickenberg, Defazio and Gower, 2024, "MoMo: Momentum Models for
        Adaptive Learning Rates", ICML (arXiv:2305.07583).
    """
    _check(learning_rate, lower_bound, weight_decay, adapt_lower_bound)
    validation.check_in_range("beta", beta, 0.0, 1.0)

    def init_fn(params):
        return MomoState(*_init(params, lower_bound, second_moment=False))

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del extra_args
        value = _inputs("momo", updates, params, value, state.barf)
        dtype = state.barf.dtype
        bt = jnp.where(state.count == 0, jnp.zeros([], dtype), jnp.asarray(beta, dtype))
        barf = bt * state.barf + (1 - bt) * value
        exp_avg = jax.tree.map(
            lambda d, g: (bt.astype(d.dtype) * d + (1 - bt).astype(d.dtype) * g).astype(d.dtype),
            state.exp_avg,
            updates,
        )
        gamma = bt * state.gamma + (1 - bt) * numerics.real_vdot(updates, params, dtype)
        alpha = _alpha(learning_rate, state.count, dtype)
        tau, lb, shrink = _polyak_step(
            barf=barf, gamma=gamma, iprod=numerics.real_vdot(exp_avg, params, dtype),
            sq_norm=numerics.squared_norm(exp_avg, dtype), lb=state.lb, alpha=alpha,
            weight_decay=weight_decay, lower_bound=lower_bound, bc1=1.0, adapt=adapt_lower_bound,
        )  # fmt: skip

        new_updates = _decayed_step(
            exp_avg, params, updates, alpha=alpha, weight_decay=weight_decay, shrink=shrink, tau=tau
        )
        count = tree_lib.safe_increment(state.count)
        return new_updates, MomoState(exp_avg, barf, gamma, lb, count)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def momo_adam(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    lower_bound: chex.Numeric = 0.0,
    weight_decay: chex.Numeric = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformationExtraArgs:
    """MoMo-Adam: Adam(W) with MoMo's Polyak-type step size.

    As `momo` with :math:`\\beta = \\beta_1` from the first step, Adam's preconditioner
    :math:`D_k = \\epsilon + \\sqrt{v_k / (1 - \\beta_2^k)}` (:math:`v_k` the EMA of
    :math:`g^2`) and the bias correction :math:`\\rho_k = 1 - \\beta_1^k`:

    .. math::
        \\tau_k = \\min\\left(\\frac{\\alpha_k}{\\rho_k}, \\frac{\\big((1 + \\alpha_k\\lambda)
        (\\bar f_k - \\rho_k f_* - \\gamma_k) + \\langle d_k, x_k \\rangle\\big)_+}
        {\\langle d_k, d_k / D_k \\rangle}\\right), \\quad
        x_{k+1} = \\frac{x_k - \\tau_k d_k / D_k}{1 + \\alpha_k \\lambda}

    Pass the batch loss: ``update(grads, state, params, value=loss)``. Same deliberate dtype
    difference from optax as `momo`.

    Args:
        learning_rate: :math:`\\alpha` >= 0, or a schedule.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` > 0 in the preconditioner.
        lower_bound, weight_decay, adapt_lower_bound: as in `momo` (the decay is AdamW's).

    Returns:
        A `GradientTransformationExtraArgs` with state `MomoAdamState`; ``update`` needs
        ``params`` and ``value``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.momo_adam()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     value, grads = jax.value_and_grad(lambda w: jnp.sum(w**2))(params)
        ...     updates, state = tx.update(grads, state, params, value=value)
        ...     params = dlopt.apply_updates(params, updates)
        >>> print(f"{jnp.sum(params**2):.2f}")
        13.64

    References:
        Schaipp, Ohana, Eickenberg, Defazio and Gower, 2024, "MoMo: Momentum Models for
        Adaptive Learning Rates", ICML (arXiv:2305.07583).
    """
    _check(learning_rate, lower_bound, weight_decay, adapt_lower_bound)
    numerics.check_betas(b1, b2)
    validation.check_positive("eps", eps)

    def init_fn(params):
        return MomoAdamState(*_init(params, lower_bound, second_moment=True))

    def update_fn(updates, state, params=None, *, value, **extra_args):
        del extra_args
        value = _inputs("momo_adam", updates, params, value, state.barf)
        dtype = state.barf.dtype
        count = tree_lib.safe_increment(state.count)
        barf = numerics.ema(state.barf, value, b1)
        exp_avg = jax.tree.map(lambda d, g: numerics.ema(d, g, b1), state.exp_avg, updates)
        exp_avg_sq = jax.tree.map(
            lambda v, g: numerics.ema(v, numerics.abs_sq(g), b2), state.exp_avg_sq, updates
        )
        bc1 = numerics.bias_correction(b1, count).astype(dtype)
        bc2 = numerics.bias_correction(b2, count)

        def precondition(v):
            v = numerics.widen(v)
            return tree_lib.scalar_like(eps, v) + jnp.sqrt(v / bc2.astype(v.dtype))

        precond = jax.tree.map(precondition, exp_avg_sq)
        weighted = jax.tree.map(lambda d, q: numerics.widen(d) / q, exp_avg, precond)
        gamma = numerics.ema(state.gamma, numerics.real_vdot(updates, params, dtype), b1)
        alpha = _alpha(learning_rate, state.count, dtype)
        tau, lb, shrink = _polyak_step(
            barf=barf, gamma=gamma, iprod=numerics.real_vdot(exp_avg, params, dtype),
            sq_norm=numerics.real_vdot(exp_avg, weighted, dtype), lb=state.lb, alpha=alpha,
            weight_decay=weight_decay, lower_bound=lower_bound, bc1=bc1, adapt=adapt_lower_bound,
        )  # fmt: skip

        new_updates = _decayed_step(
            weighted,
            params,
            updates,
            alpha=alpha,
            weight_decay=weight_decay,
            shrink=shrink,
            tau=tau,
        )
        new_state = MomoAdamState(exp_avg, exp_avg_sq, barf, gamma, lb, count)
        return new_updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
