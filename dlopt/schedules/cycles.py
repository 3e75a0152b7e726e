"""Schedules built from interpolated pieces and restarts: `piecewise_interpolate_schedule`,
`linear_onecycle_schedule`, `warmup_constant_schedule` and `sgdr_schedule` (optax's names,
signatures and values)."""

from __future__ import annotations

from collections.abc import Iterable

import chex
import jax.numpy as jnp

from dlopt.core import validation
from dlopt.core.base import Schedule
from dlopt.schedules.decay import (
    cosine_interpolate,
    join_schedules,
    linear_schedule,
    warmup_cosine_decay_schedule,
)


def _linear_interpolate(start, end, pct):
    return (end - start) * pct + start


def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: chex.Numeric,
    boundaries_and_scales: dict[int, float] | None = None,
) -> Schedule:
    """Values scaled at boundaries, interpolated linearly or by a half cosine in between.

    With boundaries :math:`b_0 = 0 < b_1 < \\dots` and cumulative values
    :math:`v_0 = v_{init}`, :math:`v_i = v_{i-1} s_i`:

    .. math::
        f(t) = \\mathrm{interp}\\Big(v_{i-1}, v_i, \\frac{t - b_{i-1}}{b_i - b_{i-1}}\\Big)
        \\ \\ (b_{i-1} \\le t < b_i), \\qquad f(t) = v_n \\ \\ (t \\ge b_n)

    Args:
        interpolate_type: ``"linear"`` or ``"cosine"``.
        init_value: :math:`v_{init}`.
        boundaries_and_scales: ``{step: scale}``, scales >= 0 (multiplied into the value).

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> f = dlopt.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
        >>> [round(float(f(t)), 4) for t in (0, 2, 4, 6, 8)]
        [1.0, 0.55, 0.1, 0.0505, 0.001]
    """
    validation.check_choice("interpolate_type", interpolate_type, ("linear", "cosine"))
    interpolate = _linear_interpolate if interpolate_type == "linear" else cosine_interpolate
    if boundaries_and_scales:
        boundaries, scales = zip(*sorted(boundaries_and_scales.items()), strict=True)
        if not all(s >= 0.0 for s in scales):
            raise ValueError(
                f"boundaries_and_scales must have scales >= 0, got {boundaries_and_scales=}"
            )
    else:
        boundaries, scales = (), ()

    def schedule(count):
        t = jnp.asarray(count).astype(jnp.float32)
        bounds = jnp.asarray((0, *boundaries), jnp.float32)
        factors = [jnp.asarray(v).astype(jnp.float32) for v in (init_value, *scales)]
        values = jnp.cumprod(jnp.stack(factors))
        sizes = jnp.maximum(bounds[1:] - bounds[:-1], 1.0)
        inside = ((bounds[:-1] <= t) & (t < bounds[1:])).astype(jnp.float32)
        interp = interpolate(values[:-1], values[1:], (t - bounds[:-1]) / sizes)
        after = (bounds[-1] <= t).astype(jnp.float32)
        return jnp.dot(inside, interp) + after * values[-1]

    return schedule


def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: chex.Numeric,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The linear one-cycle policy: up, down, then an annealing tail.

    From :math:`p/d` (``peak_value / div_factor``) up to :math:`p` at
    ``pct_start * transition_steps``, back down to :math:`p/d` at
    ``pct_final * transition_steps``, then linearly to :math:`p/(d \\cdot d_f)` at
    ``transition_steps`` (held after).

    Example:
        >>> import dlopt
        >>> f = dlopt.linear_onecycle_schedule(100, 1.0)
        >>> round(float(f(30)), 3), round(float(f(85)), 3)
        (1.0, 0.04)

    References:
        Smith and Topin, `Super-Convergence: Very Fast Training of Neural Networks Using
        Large Learning Rates <https://arxiv.org/abs/1708.07120>`_, 2017.
    """
    validation.check_int("transition_steps", transition_steps, 1)
    validation.check_positive("div_factor", div_factor)
    validation.check_positive("final_div_factor", final_div_factor)
    return piecewise_interpolate_schedule(
        "linear",
        peak_value / div_factor,
        {
            int(pct_start * transition_steps): div_factor,
            int(pct_final * transition_steps): 1.0 / div_factor,
            transition_steps: 1.0 / final_div_factor,
        },
    )


def warmup_constant_schedule(
    init_value: chex.Numeric, peak_value: chex.Numeric, warmup_steps: int
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    constant: ``f(t) = v_0 + (p - v_0) min(t / T_w, 1)``.

    Example:
        >>> import dlopt
        >>> f = dlopt.warmup_constant_schedule(0.0, 1.0, warmup_steps=10)
        >>> float(f(5)), float(f(100))
        (0.5, 1.0)
    """
    return linear_schedule(
        init_value=init_value, end_value=peak_value, transition_steps=warmup_steps
    )


def sgdr_schedule(cosine_kwargs: Iterable[dict[str, chex.Numeric]]) -> Schedule:
    """SGD with warm restarts: `warmup_cosine_decay_schedule` cycles joined end to end.

    Each dict of ``cosine_kwargs`` is one cycle's arguments to `warmup_cosine_decay_schedule`
    (``init_value``, ``peak_value``, ``warmup_steps``, ``decay_steps``, ...); a cycle lasts
    ``decay_steps`` and the next restarts at its peak.

    Example:
        >>> import dlopt
        >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=0, decay_steps=10)
        >>> f = dlopt.sgdr_schedule([cycle, cycle])
        >>> float(f(0)), float(f(10))
        (1.0, 1.0)

    References:
        Loshchilov and Hutter, `SGDR: Stochastic Gradient Descent with Warm Restarts
        <https://arxiv.org/abs/1608.03983>`_, ICLR 2017.
    """
    boundaries, schedules, step = [], [], 0
    for kwargs in cosine_kwargs:
        if "decay_steps" not in kwargs:
            raise ValueError(f"each cosine_kwargs dict needs 'decay_steps', got {kwargs=}")
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    if not schedules:
        raise ValueError("cosine_kwargs must hold at least one cycle's dict, got none.")
    return join_schedules(schedules, boundaries[:-1])
