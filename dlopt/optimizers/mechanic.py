"""Mechanic: a black-box learning-rate tuner wrapped around any optimizer (Cutkosky et al.)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)


class MechanicState(NamedTuple):
    """State of `mechanize` (optax's field names); ``r, m, v, s`` have one entry per beta."""

    base_optimizer_state: Any
    count: chex.Array  # int32 step, saturating
    r: chex.Array  # the discounted reward of each bettor
    m: chex.Array  # the running max of |h|, the clipping bound
    v: chex.Array  # the discounted sum of h^2
    s: chex.Array  # the scale each bettor proposes; the step uses sum(s)
    x0: chex.ArrayTree  # the reference point (the params at the first update)


def mechanize(
    base_optimizer: GradientTransformation,
    weight_decay: chex.Numeric = 1e-2,
    eps: chex.Numeric = 1e-8,
    s_init: chex.Numeric = 1e-6,
    num_betas: int = 6,
) -> GradientTransformationExtraArgs:
    """Wraps ``base_optimizer`` and learns the scale of its updates (its learning rate).

    With :math:`u_t` the base optimizer's update, :math:`S = \\sum_i s_i` and
    :math:`\\Delta_t = (x_0 - x_t) / (S + \\epsilon)` the accumulated direction, each of the
    ``num_betas`` bettors (:math:`\\beta_i = 1 - 10^{-i}`) updates, from the gradient with
    Mechanic's own decay :math:`\\tilde g = g + \\lambda S \\|g\\| / (\\|x\\| + \\epsilon)\\, x`:

    .. math::
        h = \\langle \\tilde g, \\Delta_t \\rangle, \\quad
        m_i \\leftarrow \\max(\\beta_i m_i, |h| + \\epsilon), \\quad
        v_i \\leftarrow \\beta_i^2 v_i + h^2, \\quad
        r_i \\leftarrow \\beta_i r_i + \\operatorname{clip}(h, \\pm m_i^{old})\\, s_i,

        s_i = \\frac{s_{init} m_i / n + \\max(r_i, 0)}{\\sqrt{v_i} + \\epsilon}, \\quad
        x_{t+1} = x_0 - \\Big(\\sum_i s_i\\Big) (\\Delta_t - u_t)

    The update returned is :math:`x_{t+1} - x_t`. Keep the base optimizer's own schedule
    with its peak at 1: Mechanic learns the multiplier. ``x_0`` is reset to the params at the
    first update (so pre-trained weights loaded after ``init`` count).

    Args:
        base_optimizer: the optimizer whose updates are scaled (sgd, momentum, adam, lion;
            not normalized ones like LARS/LAMB).
        weight_decay: :math:`\\lambda` >= 0, Mechanic's own decay (not the base's).
        eps: :math:`\\epsilon` > 0.
        s_init: :math:`s_{init}` > 0, the starting scale.
        num_betas: :math:`n` >= 1 bettors, with decays :math:`1 - 10^{-i}`.

    Returns:
        A `GradientTransformationExtraArgs` with state `MechanicState`; ``update`` needs
        ``params`` and passes extra keyword arguments to the base optimizer.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.mechanize(dlopt.adam(1.0))  # Adam's own step size left at 1
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, -1.0]), tx.init(params), params)
        >>> state.s.shape, bool(jnp.max(jnp.abs(updates)) < 1e-5)  # starts from s_init
        ((6,), True)

    References:
        Cutkosky, Defazio and Mehta, 2023, "Mechanic: A Learning Rate Tuner", NeurIPS
        (arXiv:2306.00144).
    """
    validation.check_transformation("base_optimizer", base_optimizer)
    validation.check_non_negative("weight_decay", weight_decay)
    validation.check_positive("eps", eps)
    validation.check_positive("s_init", s_init)
    validation.check_int("num_betas", num_betas, low=1)
    base_optimizer = with_extra_args_support(base_optimizer)

    def init_fn(params):
        tree_lib.check_float_params(params)
        dtype = numerics.scalar_dtype(params)
        zeros = jnp.zeros([num_betas], dtype)
        return MechanicState(
            base_optimizer_state=base_optimizer.init(params),
            count=jnp.zeros([], jnp.int32),
            r=zeros,
            m=zeros,
            v=zeros,
            s=jnp.full([num_betas], s_init, dtype),
            x0=tree_lib.copy(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("mechanize needs params: call update(updates, state, params).")
        tree_lib.check_matching_trees(params, updates, "params", "updates")
        base_updates, base_state = base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args
        )
        first = state.count == 0
        x0 = jax.tree.map(lambda p, q: jnp.where(first, p, q), params, state.x0)
        dtype = state.s.dtype
        eps_ = jnp.asarray(eps, dtype)
        s_sum = jnp.sum(state.s)
        decay = (
            jnp.asarray(weight_decay, dtype) * s_sum * numerics.global_norm(updates).astype(dtype)
            / (numerics.global_norm(params).astype(dtype) + eps_)
        )  # fmt: skip

        def wide(x):  # at full precision, and at least as wide as the scalar state
            x = jnp.asarray(x)
            return x.astype(numerics.compute_dtype(x.dtype, dtype))

        grads = jax.tree.map(lambda g, p: wide(g) + decay * wide(p), updates, params)
        delta_prev = jax.tree.map(lambda p, p0: (wide(p0) - wide(p)) / (s_sum + eps_), params, x0)
        h = numerics.real_vdot(grads, delta_prev).astype(dtype)
        betas = jnp.asarray([1.0 - 0.1**i for i in range(1, num_betas + 1)], dtype)
        clipped_h = jnp.clip(h, -state.m, state.m)
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps_)
        v = betas**2 * state.v + h**2
        r = betas * state.r + clipped_h * state.s
        wealth = jnp.asarray(s_init / num_betas, dtype) * m + jnp.maximum(r, 0)
        s = wealth / (jnp.sqrt(v) + eps_)
        scale = jnp.sum(s)

        def step(p, p0, d, u, out):
            new = wide(p0) - scale * (d - wide(u))
            return (new - wide(p)).astype(out)

        new_updates = jax.tree.map(
            step, params, x0, delta_prev, base_updates, numerics.out_dtypes(updates, params)
        )
        new_state = MechanicState(
            base_optimizer_state=base_state,
            count=tree_lib.safe_increment(state.count),
            r=r,
            m=m,
            v=v,
            s=s,
            x0=x0,
        )
        return new_updates, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
