"""D-Adaptation: AdamW whose step size is a running estimate of the distance to the solution.

`dadapt_adamw` (D-Adapt Adam) and `prodigy` (its faster-adapting variant) estimate
:math:`d \\approx \\|x_0 - x_*\\|` from the gradients seen so far and step with it, so the
``learning_rate`` is only a schedule multiplier around 1.0. Both run one update,
`_d_adaptation` (state, step size, moments, the estimate of :math:`d`); they differ only in
their per-leaf moments and in how the numerator :math:`r` of the estimate accumulates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    with_extra_args_support,
)


def _real_vdot(a: chex.Array, b: chex.Array) -> chex.Array:
    """``Re <a, b> = Re sum(conj(a) * b)`` for one leaf, summed in its own dtype."""
    product = jnp.conj(a) * b if jnp.iscomplexobj(a) else a * b
    return jnp.sum(jnp.real(product))


def _total(values: chex.ArrayTree, dtype: Any) -> chex.Array:
    """The sum of a tree of scalars, in ``dtype`` (0 for an empty tree)."""
    total = jnp.zeros([], dtype)
    for v in jax.tree.leaves(values):
        total = total + v.astype(dtype)
    return total


def _d_adaptation(
    name: str,
    state_cls: Callable[..., Any],
    leaf_fn: Callable[..., tuple],
    estimate: Callable[..., tuple[chex.Array, chex.Array, chex.Numeric]],
    *,
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric,
    b2: chex.Numeric,
    estim_lr0: chex.Numeric,
    mu_dtype: Any | None,
    nu_dtype: Any | None,
    state_rounding: str,
    keep_params0: bool = False,
    final: Callable[..., chex.ArrayTree] | None = None,
) -> GradientTransformationExtraArgs:
    """The update `prodigy` and `dadapt_adamw` share: the moments ``m, v, s`` (one pass of
    ``leaf_fn``, which also returns per-leaf sums of the numerator and of ``|s|``), the step
    size ``dlr = d * lr(t) * sqrt(1 - b2^t) / (1 - b1^t)`` and the distance estimate
    ``d <- max(d, coef * r / sum|s|)``, which never shrinks.

    ``estimate(r_old, d, dlr, d0, numerator, s_norm)`` gives the rule's ``(r, sum|s|, coef)``;
    ``final(state, params, dlr, out_dtypes)``, if given, recomputes the updates from the new
    state (Prodigy steps with the new ``d``); otherwise they are ``leaf_fn``'s own.
    """

    def step_size(state):
        d, dtype = state.estim_lr, state.estim_lr.dtype
        count = tree_lib.safe_increment(state.count)
        sched = learning_rate(state.count) if callable(learning_rate) else learning_rate
        bc = numerics.bias_correction(b2, count) ** 0.5 / numerics.bias_correction(b1, count)
        return (d * jnp.asarray(sched).astype(dtype) * bc.astype(dtype)).astype(dtype)

    def step(state, count, params):
        d = state.estim_lr
        return {"d": d, "dlr": step_size(state), "d0": jnp.asarray(estim_lr0).astype(d.dtype)}

    def extra_init(params):
        dtype = numerics.scalar_dtype(params)
        fields = {"estim_lr": jnp.asarray(estim_lr0).astype(dtype)}
        fields["numerator_weighted"] = jnp.zeros([], dtype)
        return fields | ({"params0": tree_lib.copy(params)} if keep_params0 else {})

    def extra_update(state, count, kw, extras):
        numerators, s_norms = extras or ({}, {})
        d, dtype = kw["d"], state.estim_lr.dtype
        r, denominator, coef = estimate(
            state.numerator_weighted, d, kw["dlr"], kw["d0"], _total(numerators, dtype),
            _total(s_norms, dtype),
        )  # fmt: skip
        safe = jnp.where(denominator > 0, denominator, jnp.ones_like(denominator))
        d_next = jnp.maximum(d, jnp.where(denominator > 0, coef * r / safe, d).astype(dtype))
        return {"estim_lr": d_next, "numerator_weighted": r}

    tx = rule.moment_rule(
        state_cls,
        leaf_fn,
        moments={"exp_avg": mu_dtype, "exp_avg_sq": nu_dtype, "grad_sum": mu_dtype},
        rounding=state_rounding,
        needs_params=name,
        inputs=lambda updates, state, params: (
            (params, state.params0) if keep_params0 else (params,)
        ),
        step=step,
        extra_init=extra_init,
        extra_update=extra_update,
    )
    if final is None:
        return with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        del extra_args
        _, new_state = tx.update(updates, state, params)
        dtypes = numerics.out_dtypes(updates, params)
        return final(new_state, params, step_size(state), dtypes), new_state

    return GradientTransformationExtraArgs(tx.init, update_fn)


class ProdigyState(NamedTuple):
    exp_avg: chex.ArrayTree  # m, the EMA of d * g (mu_dtype)
    exp_avg_sq: chex.ArrayTree  # v, the EMA of (d * g)^2 (nu_dtype)
    grad_sum: chex.ArrayTree  # s, the weighted sum of d * g (mu_dtype)
    params0: chex.ArrayTree  # x_0, the initial params
    estim_lr: chex.Array  # d, the distance estimate (float32)
    numerator_weighted: chex.Array  # r, the weighted sum of <g, x_0 - x>
    count: chex.Array  # int32 step, saturating


def _prodigy_moments_leaf(
    g, m, v, s, p, p0, leaf, out_dtype, *, b1, b2, b3, safeguard_warmup, writer, d, dlr, d0
):
    f = numerics.compute_dtype(g.dtype, p.dtype, p0.dtype, m.dtype, v.dtype, s.dtype)
    g = g.astype(f)
    dg = tree_lib.scalar_like(d, g) * g
    numerator = _real_vdot(g, p0.astype(f) - p.astype(f))
    m = writer.put(numerics.ema(m.astype(f), dg, b1), m, leaf, 1)
    v = writer.put(numerics.ema(v.astype(f), numerics.abs_sq(dg), b2), v, leaf, 2)
    s_step = tree_lib.scalar_like(d if safeguard_warmup else dlr, g)
    d0 = tree_lib.scalar_like(d0, g)
    s_new = tree_lib.scalar_like(b3, g) * s.astype(f) + s_step * dg / d0
    s = writer.put(s_new, s, leaf, 3)
    return None, m, v, s, numerator, jnp.sum(jnp.abs(s.astype(f)))


def _prodigy_update_leaf(m, v, p, out_dtype, *, dlr, d_eps, weight_decay):
    f = numerics.compute_dtype(m.dtype, v.dtype, p.dtype)
    m, v, p = m.astype(f), v.astype(f), p.astype(f)
    dlr, d_eps = tree_lib.scalar_like(dlr, m), tree_lib.scalar_like(d_eps, v)
    step = dlr * m / (jnp.sqrt(v) + d_eps)
    return (-tree_lib.scalar_like(weight_decay, p) * dlr * p - step).astype(out_dtype)


def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[chex.Numeric, chex.Numeric] = (0.9, 0.999),
    beta3: chex.Numeric | None = None,
    eps: chex.Numeric = 1e-8,
    estim_lr0: chex.Numeric = 1e-6,
    estim_lr_coef: chex.Numeric = 1.0,
    weight_decay: chex.Numeric = 0.0,
    safeguard_warmup: bool = False,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Prodigy: AdamW with its step size :math:`d` estimated from the gradients (parameter-free).

    With the schedule multiplier :math:`\\eta_t` (``learning_rate``), the step
    :math:`d_t \\eta_t \\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t) =: \\lambda_t` and
    :math:`\\beta_3` (default :math:`\\sqrt{\\beta_2}`):

    .. math::
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) d_t g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) d_t^2 g_t^2, \\\\
        r_t &= \\beta_3 r_{t-1} + \\frac{d_t}{d_0} \\lambda_t \\langle g_t, x_0 - x_t \\rangle,
        \\quad s_t = \\beta_3 s_{t-1} + \\frac{\\lambda_t}{d_0} d_t g_t, \\\\
        d_{t+1} &= \\max\\left(d_t, \\frac{c\\, r_t}{\\|s_t\\|_1}\\right), \\quad
        x_{t+1} = x_t - \\lambda_t \\left(\\frac{m_t}{\\sqrt{v_t} + d_{t+1} \\epsilon} +
        \\lambda x_t\\right)

    (with ``safeguard_warmup`` the :math:`\\lambda_t` in :math:`s_t` becomes :math:`d_t`:
    a warmup's small :math:`\\eta_t` then cannot inflate :math:`d`). :math:`d_0` =
    ``estim_lr0`` is an under-estimate; :math:`c` = ``estim_lr_coef``. A single update rule
    (not a chain): the learning rate and the weight decay enter the estimate of :math:`d`.

    Moments are stored in ``mu_dtype`` / ``nu_dtype`` (stochastic rounding when narrower),
    arithmetic runs in float32 (or wider); :math:`d, r` are float32 scalars.

    Deliberate differences from optax: when :math:`\\|s_t\\|_1 = 0` (all gradients zero so
    far) :math:`d` is kept (optax's 0/0 makes every later step NaN); :math:`d, r` are float32
    (float64 with float64 params), not the params' lowest dtype; complex params use
    :math:`|d g|^2` and :math:`\\mathrm{Re}\\langle g, x_0 - x \\rangle` (optax mixes in
    complex squares).

    Args:
        learning_rate: :math:`\\eta_t`, a multiplier of the estimated step (1.0, or a schedule
            with 1.0 as its peak, e.g. warmup then linear decay to 0).
        betas: :math:`(\\beta_1, \\beta_2)`, each in [0, 1).
        beta3: :math:`\\beta_3` in [0, 1), or None for :math:`\\sqrt{\\beta_2}`.
        eps: :math:`\\epsilon` >= 0.
        estim_lr0: :math:`d_0` > 0.
        estim_lr_coef: :math:`c` > 0, multiplies every estimate of :math:`d`.
        weight_decay: :math:`\\lambda` >= 0, decoupled (AdamW-style), scaled by
            :math:`\\lambda_t`.
        safeguard_warmup: leave :math:`\\eta_t` out of :math:`s_t`.
        mu_dtype: dtype of :math:`m` and :math:`s` (dlopt only).
        nu_dtype: dtype of :math:`v` (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` (dlopt only).

    Returns:
        A `GradientTransformationExtraArgs` with state `ProdigyState`; ``update`` needs
        ``params``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.prodigy(dlopt.cosine_decay_schedule(1.0, 10_000), weight_decay=1e-2)

    References:
        Mishchenko and Defazio, 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free
        Learner", ICML.
    """
    validation.check_learning_rate(learning_rate)
    b1, b2 = validation.check_beta_pair("betas", betas)
    if beta3 is None:
        beta3 = b2**0.5
    else:
        validation.check_in_range("beta3", beta3, 0.0, 1.0)
    validation.check_non_negative("eps", eps)
    validation.check_positive("estim_lr0", estim_lr0)
    validation.check_positive("estim_lr_coef", estim_lr_coef)
    validation.check_non_negative("weight_decay", weight_decay)

    def estimate(r_old, d, dlr, d0, numerator, s_norm):
        b3 = jnp.asarray(beta3).astype(d.dtype)
        r = b3 * r_old
        return r + (d / d0) * dlr * numerator, s_norm, estim_lr_coef

    def final(state, params, dlr, out_dtypes):  # the step with the new d
        leaf_fn = functools.partial(
            _prodigy_update_leaf, dlr=dlr, d_eps=state.estim_lr * eps, weight_decay=weight_decay
        )
        return jax.tree.map(leaf_fn, state.exp_avg, state.exp_avg_sq, params, out_dtypes)

    leaf_fn = functools.partial(
        _prodigy_moments_leaf, b1=b1, b2=b2, b3=beta3, safeguard_warmup=safeguard_warmup
    )
    return _d_adaptation(
        "prodigy", ProdigyState, leaf_fn, estimate, learning_rate=learning_rate, b1=b1, b2=b2,
        estim_lr0=estim_lr0, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
        state_rounding=state_rounding, keep_params0=True, final=final,
    )  # fmt: skip


class DAdaptAdamWState(NamedTuple):
    exp_avg: chex.ArrayTree  # m, the EMA of lambda * g (mu_dtype)
    exp_avg_sq: chex.ArrayTree  # v, the EMA of g^2 (nu_dtype)
    grad_sum: chex.ArrayTree  # s, the EMA of lambda * g (mu_dtype)
    estim_lr: chex.Array  # d, the distance estimate (float32)
    numerator_weighted: chex.Array  # r, the EMA of lambda <g, s / (sqrt(v) + eps)>
    count: chex.Array  # int32 step, saturating


def _dadapt_leaf(
    g, m, v, s, p, leaf, out_dtype, *, b1, b2, sb2, eps, weight_decay, writer, d, dlr, d0
):
    del d, d0
    f = numerics.compute_dtype(g.dtype, p.dtype, m.dtype, v.dtype, s.dtype)
    g, p = g.astype(f), p.astype(f)
    eps_, dlr_ = tree_lib.scalar_like(eps, g), tree_lib.scalar_like(dlr, g)
    numerator = _real_vdot(g, s.astype(f) / (jnp.sqrt(v.astype(f)) + eps_))  # old s and v
    m = writer.put(numerics.ema(m.astype(f), dlr_ * g, b1), m, leaf, 1)
    v = writer.put(numerics.ema(v.astype(f), numerics.abs_sq(g), b2), v, leaf, 2)
    s = writer.put(numerics.ema(s.astype(f), dlr_ * g, sb2), s, leaf, 3)
    m_, v_ = m.astype(f), v.astype(f)
    update = -tree_lib.scalar_like(weight_decay, p) * dlr_ * p - m_ / (jnp.sqrt(v_) + eps_)
    return update.astype(out_dtype), m, v, s, numerator, jnp.sum(jnp.abs(s.astype(f)))


def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[chex.Numeric, chex.Numeric] = (0.9, 0.999),
    eps: chex.Numeric = 1e-8,
    estim_lr0: chex.Numeric = 1e-6,
    weight_decay: chex.Numeric = 0.0,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """D-Adapt AdamW: AdamW with its step size :math:`d` estimated from the gradients.

    With the schedule multiplier :math:`\\eta_t` (``learning_rate``), the step
    :math:`\\lambda_t = d_t \\eta_t \\sqrt{1 - \\beta_2^t} / (1 - \\beta_1^t)` and
    :math:`\\beta = \\sqrt{\\beta_2}`:

    .. math::
        r_t &= \\beta r_{t-1} + (1 - \\beta) \\lambda_t \\left\\langle g_t,
        \\frac{s_{t-1}}{\\sqrt{v_{t-1}} + \\epsilon} \\right\\rangle, \\quad
        s_t = \\beta s_{t-1} + (1 - \\beta) \\lambda_t g_t, \\\\
        m_t &= \\beta_1 m_{t-1} + (1 - \\beta_1) \\lambda_t g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\\\
        d_{t+1} &= \\max\\left(d_t, \\frac{r_t}{(1 - \\beta) \\|s_t\\|_1}\\right), \\quad
        x_{t+1} = x_t - \\frac{m_t}{\\sqrt{v_t} + \\epsilon} - \\lambda_t \\lambda x_t

    (:math:`\\lambda` the weight decay), from :math:`d_0` = ``estim_lr0``, an under-estimate
    of :math:`\\|x_0 - x_*\\|_\\infty`. A single update rule (not a chain): the step size
    lives inside :math:`m`. Moments are stored in ``mu_dtype`` / ``nu_dtype`` (stochastic
    rounding when narrower), arithmetic runs in float32 (or wider).

    Deliberate differences from optax: as in `prodigy` (:math:`d` is kept while
    :math:`\\|s\\|_1 = 0`, float32 scalars, real inner products for complex params).

    Args:
        learning_rate: :math:`\\eta_t`, a multiplier of the estimated step (1.0, or a schedule
            peaking at 1.0).
        betas: :math:`(\\beta_1, \\beta_2)`, each in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        estim_lr0: :math:`d_0` > 0.
        weight_decay: :math:`\\lambda` >= 0, decoupled, scaled by :math:`\\lambda_t`.
        mu_dtype: dtype of :math:`m` and :math:`s` (dlopt only).
        nu_dtype: dtype of :math:`v` (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` (dlopt only).

    Returns:
        A `GradientTransformationExtraArgs` with state `DAdaptAdamWState`; ``update`` needs
        ``params``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.dadapt_adamw(dlopt.linear_schedule(1.0, 0.0, 10_000))

    References:
        Defazio and Mishchenko, 2023, "Learning-Rate-Free Learning by D-Adaptation", ICML.
    """
    validation.check_learning_rate(learning_rate)
    b1, b2 = validation.check_beta_pair("betas", betas)
    validation.check_non_negative("eps", eps)
    validation.check_positive("estim_lr0", estim_lr0)
    validation.check_non_negative("weight_decay", weight_decay)
    sb2 = b2**0.5

    def estimate(r_old, d, dlr, d0, numerator, s_norm):
        return sb2 * r_old + (1 - sb2) * dlr * numerator, (1 - sb2) * s_norm, 1.0

    leaf_fn = functools.partial(
        _dadapt_leaf, b1=b1, b2=b2, sb2=sb2, eps=eps, weight_decay=weight_decay
    )
    return _d_adaptation(
        "dadapt_adamw", DAdaptAdamWState, leaf_fn, estimate, learning_rate=learning_rate,
        b1=b1, b2=b2, estim_lr0=estim_lr0, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
        state_rounding=state_rounding,
    )  # fmt: skip
