"""Learning-rate schedules: pure functions ``step -> value``.

Every schedule is jit-safe with a traced integer step and returns a float32 scalar. Steps
before 0 count as 0. Hyperparameters are checked when the schedule is built: step counts
in range, values finite (of any sign: a schedule may drive momentum, a penalty or a
temperature, not only a learning rate) and decay rates >= 0, else an error names the
argument. The names and signatures of the schedules shared with optax are optax's, and so
are their values. Deliberate differences from optax: where optax silently falls back to a
constant (``transition_steps <= 0``, a negative ``transition_begin``), dlopt raises; and
``decay_rate=0`` in `exponential_decay` is the formula's value (0 after the first
transition), where optax returns a constant schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax.numpy as jnp

from dlopt.core import validation
from dlopt.core.base import Schedule
from dlopt.schedules import ranges

_F32 = jnp.float32


def _f32(x: chex.Numeric) -> chex.Array:
    return jnp.asarray(x).astype(_F32)


def _step(count: chex.Numeric) -> chex.Array:
    """The step as float32, clipped below at 0."""
    return jnp.maximum(_f32(count), 0.0)


def _floor_div(count: chex.Numeric, n: int) -> chex.Array:
    """``floor(count / n)`` as float32; exact integer division for integer steps."""
    count = jnp.asarray(count)
    if jnp.issubdtype(count.dtype, jnp.integer) and float(n).is_integer():
        n = int(n)
        return jnp.floor_divide(jnp.maximum(count, 0), n).astype(_F32)
    return jnp.floor(_step(count) / _F32(n))


def constant_schedule(value: chex.Numeric) -> Schedule:
    """``v(t) = value``.

    Example:
        >>> import dlopt
        >>> float(dlopt.constant_schedule(0.1)(1000))
        0.10000000149011612
    """
    validation.check_finite("value", value)

    def schedule(count):
        return jnp.full(jnp.shape(count), value, _F32)

    return ranges.with_range(schedule, ranges.spanning([value]))


def step_decay_schedule(init_value: chex.Numeric, step_size: int, decay_rate: float) -> Schedule:
    """Staircase decay, torch's ``StepLR``: ``v(t) = I * r ** floor(t / step_size)``.

    Args:
        init_value: ``I``, the value at step 0.
        step_size: steps between two decays, > 0.
        decay_rate: ``r``, the factor applied every ``step_size`` steps (``gamma``).

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> float(dlopt.step_decay_schedule(1.0, step_size=30, decay_rate=0.1)(65))
        0.010000000707805157
    """
    validation.check_finite("init_value", init_value)
    validation.check_finite("decay_rate", decay_rate)
    validation.check_positive("step_size", step_size)

    def schedule(count):
        return _f32(init_value) * _f32(decay_rate) ** _floor_div(count, step_size)

    return ranges.with_range(schedule, ranges.geometric(init_value, decay_rate))


def exponential_decay(
    init_value: chex.Numeric,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: chex.Numeric | None = None,
) -> Schedule:
    """Exponential decay, continuous or staircase (optax's meaning).

    .. math::
        v(t) = I \\cdot r^{p}, \\quad p = \\frac{t - B}{T} \\ (\\lfloor\\cdot\\rfloor
        \\text{ if staircase}), \\quad v(t) = I \\text{ for } t \\le B

    then clipped below at ``end_value`` when ``r < 1`` (above when ``r > 1``). With
    ``transition_steps=1`` this is torch's ``ExponentialLR(gamma=r)``.

    Args:
        init_value: ``I``.
        transition_steps: ``T`` > 0, the steps over which the value is multiplied by ``r``.
        decay_rate: ``r`` >= 0 (0: the value drops to 0, or ``end_value``, after ``B``).
        transition_begin: ``B`` >= 0, steps held at ``I`` before the decay starts.
        staircase: decay at multiples of ``T`` only.
        end_value: optional bound.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> float(dlopt.exponential_decay(1.0, transition_steps=10, decay_rate=0.5)(20))
        0.25
    """
    validation.check_finite("init_value", init_value)
    if end_value is not None:
        validation.check_finite("end_value", end_value)
    validation.check_positive("transition_steps", transition_steps)
    validation.check_non_negative("decay_rate", decay_rate)
    validation.check_non_negative("transition_begin", transition_begin)

    def schedule(count):
        since = jnp.asarray(count) - transition_begin
        p = (
            _floor_div(since, transition_steps)
            if staircase
            else _f32(since) / _F32(transition_steps)
        )
        rate, init = _f32(decay_rate), _f32(init_value)
        value = jnp.where(_f32(since) <= 0, init, init * rate**p)
        if end_value is not None:
            end = _f32(end_value)
            value = jnp.where(rate < 1, jnp.maximum(value, end), jnp.minimum(value, end))
        return value

    return ranges.with_range(schedule, ranges.geometric(init_value, decay_rate, end_value))


def piecewise_constant_schedule(
    init_value: chex.Numeric, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """Multiplies in a scale at each boundary, torch's ``MultiStepLR``.

    .. math:: v(t) = I \\prod_{i:\\, t \\ge b_i} s_i

    Args:
        init_value: ``I``.
        boundaries_and_scales: ``{b_i: s_i}``, each scale a finite number.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> float(dlopt.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.1})(250))
        0.010000000707805157
    """
    validation.check_finite("init_value", init_value)
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale in items:
        validation.check_finite(f"boundaries_and_scales[{boundary}]", scale)

    def schedule(count):
        t = _f32(count)
        value = _f32(init_value)
        for boundary, scale in items:
            value = value * jnp.where(t >= boundary, _f32(scale), _F32(1.0))
        return value

    values = [init_value]
    for _, scale in items:
        values.append(values[-1] * scale)
    return ranges.with_range(schedule, ranges.spanning(values))


def polynomial_schedule(
    init_value: chex.Numeric,
    end_value: chex.Numeric,
    power: chex.Numeric,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial transition from ``init_value`` to ``end_value``.

    .. math::
        v(t) = (I - E) \\left(1 - \\frac{\\min(\\max(t - B, 0), T)}{T}\\right)^{P} + E

    Args:
        init_value: ``I``.
        end_value: ``E``.
        power: ``P`` > 0.
        transition_steps: ``T`` >= 0; ``0`` holds ``I`` forever (as in optax).
        transition_begin: ``B`` >= 0.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> float(dlopt.polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)(5))
        0.25
    """
    validation.check_finite("init_value", init_value)
    validation.check_finite("end_value", end_value)
    validation.check_positive("power", power)
    validation.check_non_negative("transition_steps", transition_steps)
    validation.check_non_negative("transition_begin", transition_begin)
    if transition_steps == 0:
        return constant_schedule(init_value)

    def schedule(count):
        done = jnp.clip(_f32(count) - _F32(transition_begin), 0.0, _F32(transition_steps))
        frac = 1.0 - done / _F32(transition_steps)
        init, end = _f32(init_value), _f32(end_value)
        return (init - end) * frac ** _f32(power) + end

    return ranges.with_range(schedule, ranges.spanning([init_value, end_value]))


def linear_schedule(
    init_value: chex.Numeric,
    end_value: chex.Numeric,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    """Linear ramp: `polynomial_schedule` with ``power=1``.

    .. math:: v(t) = I + \\frac{\\min(\\max(t - B, 0), T)}{T} (E - I)

    Args: as `polynomial_schedule`.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> float(dlopt.linear_schedule(0.0, 1.0, transition_steps=4)(1))
        0.25
    """
    return polynomial_schedule(init_value, end_value, 1.0, transition_steps, transition_begin)


def cosine_decay_schedule(
    init_value: chex.Numeric,
    decay_steps: int,
    alpha: chex.Numeric = 0.0,
    exponent: chex.Numeric = 1.0,
) -> Schedule:
    """Cosine annealing (SGDR without restarts), torch's ``CosineAnnealingLR`` for ``t <= T``.

    .. math::
        v(t) = I \\left[(1 - \\alpha) \\left(\\tfrac{1}{2}\\left(1 + \\cos\\frac{\\pi
        \\min(t, T)}{T}\\right)\\right)^{p} + \\alpha\\right]

    Args:
        init_value: ``I``.
        decay_steps: ``T`` > 0.
        alpha: the final value as a fraction of ``I`` (torch's ``eta_min / lr``).
        exponent: ``p`` > 0.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> round(float(dlopt.cosine_decay_schedule(1.0, decay_steps=100)(50)), 6)
        0.5

    References:
        Loshchilov & Hutter, 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts".
    """
    validation.check_finite("init_value", init_value)
    validation.check_finite("alpha", alpha)
    a = ranges.spanning([alpha])
    if a is not None and a[0] > 1:
        raise ValueError(
            f"alpha is the final value as a fraction of init_value and must be <= 1 for a "
            f"decay, got alpha={alpha!r} (the schedule would rise to {alpha!r} * init_value)."
        )
    return _cosine_decay(init_value, decay_steps, alpha, exponent)


def _cosine_decay(
    init_value: chex.Numeric, decay_steps: int, alpha: chex.Numeric, exponent: chex.Numeric
) -> Schedule:
    """`cosine_decay_schedule` without the ``alpha <= 1`` check (a warmup's cosine part
    rises to an ``end_value`` above its peak, as in optax)."""
    validation.check_positive("decay_steps", decay_steps)
    validation.check_positive("exponent", exponent)

    def schedule(count):
        t = jnp.minimum(_step(count), _F32(decay_steps))
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * t / _F32(decay_steps)))
        a = _f32(alpha)
        return _f32(init_value) * ((1.0 - a) * cosine ** _f32(exponent) + a)

    a = ranges.spanning([alpha])  # the value moves from init_value to alpha * init_value
    bounds = None if a is None else ranges.spanning([init_value, init_value * a[0]])
    return ranges.with_range(schedule, bounds)


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs ``schedules[i]`` from ``boundaries[i - 1]`` on, each with its own step from 0.

    .. math:: v(t) = s_i(t - b_{i-1}) \\quad\\text{for } b_{i-1} \\le t < b_i

    Args:
        schedules: ``n`` schedules.
        boundaries: ``n - 1`` non-decreasing steps at which the next schedule takes over.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> warm = dlopt.linear_schedule(0.0, 1.0, 10)
        >>> s = dlopt.join_schedules([warm, dlopt.constant_schedule(1.0)], [10])
        >>> float(s(5)), float(s(20))
        (0.5, 1.0)
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if not schedules or len(boundaries) != len(schedules) - 1:
        raise ValueError(
            "join_schedules needs len(boundaries) == len(schedules) - 1 >= 0, got "
            f"{len(schedules)} schedules and boundaries={boundaries!r}."
        )
    for i, b in enumerate(boundaries):
        validation.check_non_negative(f"boundaries[{i}]", b)
    if boundaries != sorted(boundaries):
        raise ValueError(f"boundaries must be non-decreasing, got boundaries={boundaries!r}.")

    def schedule(count):
        count = jnp.asarray(count)
        value = _f32(schedules[0](count))
        for boundary, fn in zip(boundaries, schedules[1:], strict=True):
            value = jnp.where(count < boundary, value, _f32(fn(count - boundary)))
        return value

    return ranges.with_range(schedule, ranges.union(ranges.of(fn) for fn in schedules))


def warmup_cosine_decay_schedule(
    init_value: chex.Numeric,
    peak_value: chex.Numeric,
    warmup_steps: int,
    decay_steps: int,
    end_value: chex.Numeric = 0.0,
    exponent: chex.Numeric = 1.0,
) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    .. math::
        v(t) = I + (P - I) \\frac{t}{W} \\ (t < W), \\qquad
        v(t) = E + (P - E) \\left(\\tfrac{1}{2}\\left(1 + \\cos\\frac{\\pi \\min(t - W, D - W)}
        {D - W}\\right)\\right)^{p} \\ (t \\ge W)

    Args:
        init_value: ``I``.
        peak_value: ``P``.
        warmup_steps: ``W`` >= 0.
        decay_steps: ``D`` > ``W``, the total length including the warmup.
        end_value: ``E``.
        exponent: ``p`` > 0.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> s = dlopt.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=10, decay_steps=110)
        >>> round(float(s(10)), 6), round(float(s(60)), 6)
        (1.0, 0.5)
    """
    validation.check_finite("init_value", init_value)
    validation.check_finite("peak_value", peak_value)
    validation.check_finite("end_value", end_value)
    validation.check_non_negative("warmup_steps", warmup_steps)
    if not decay_steps > warmup_steps:
        raise ValueError(
            "decay_steps is the total length including the warmup and must exceed "
            f"warmup_steps, got {decay_steps=}, {warmup_steps=}."
        )
    peak = _f32(peak_value)
    alpha = jnp.where(peak == 0, _F32(0.0), _f32(end_value) / jnp.where(peak == 0, 1.0, peak))
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            _cosine_decay(peak_value, decay_steps - warmup_steps, alpha, exponent),
        ],
        [warmup_steps],
    )


def warmup_exponential_decay_schedule(
    init_value: chex.Numeric,
    peak_value: chex.Numeric,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: chex.Numeric,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: chex.Numeric | None = None,
) -> Schedule:
    """Linear warmup to ``peak_value``, then `exponential_decay` from it.

    .. math::
        v(t) = I + (P - I) \\frac{t}{W} \\ (t < W), \\qquad
        v(t) = \\text{exponential\\_decay}(P, T, r, B, \\ldots)(t - W) \\ (t \\ge W)

    Args: as `linear_schedule` (``init_value``, ``peak_value``, ``warmup_steps`` >= 0) and
    `exponential_decay` (the rest).

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> s = dlopt.warmup_exponential_decay_schedule(0.0, 1.0, 10, 10, 0.5)
        >>> float(s(20))
        0.5
    """
    validation.check_non_negative("warmup_steps", warmup_steps)
    return join_schedules(
        [
            linear_schedule(init_value, peak_value, warmup_steps),
            exponential_decay(
                peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value
            ),
        ],
        [warmup_steps],
    )


def cosine_interpolate(start: chex.Array, end: chex.Array, pct: chex.Array) -> chex.Array:
    """``end + (start - end) (1 + cos(pi pct)) / 2``: from ``start`` (pct 0) to ``end`` (1)."""
    return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1.0)


def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: chex.Numeric,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """One-cycle policy: cosine up from ``P / d`` to ``P``, then cosine down to ``P / (d f)``.

    With ``S = int(pct_start * T)`` and ``cos_interp(a, b, x) = b + (a - b)(1 + cos(pi x)) / 2``:

    .. math::
        v(t) = \\text{cos\\_interp}(P/d, P, t/S) \\ (t < S), \\quad
        \\text{cos\\_interp}(P, \\tfrac{P}{d f}, \\tfrac{t - S}{T - S}) \\ (S \\le t < T),
        \\quad \\tfrac{P}{d f} \\ (t \\ge T)

    Args:
        transition_steps: ``T`` > 0, the length of the cycle.
        peak_value: ``P``.
        pct_start: the fraction of the cycle spent going up, in [0, 1].
        div_factor: ``d`` > 0, the start value is ``P / d``.
        final_div_factor: ``f`` > 0, the final value is ``P / (d f)``.

    Returns:
        A schedule ``step -> value``.

    Example:
        >>> import dlopt
        >>> s = dlopt.cosine_onecycle_schedule(100, peak_value=1.0)
        >>> float(s(30))
        1.0

    References:
        Smith & Topin, 2017, "Super-Convergence: Very Fast Training of Neural Networks Using
        Large Learning Rates".
    """
    validation.check_positive("transition_steps", transition_steps)
    validation.check_finite("peak_value", peak_value)
    validation.check_in_range("pct_start", pct_start, 0.0, 1.0, high_closed=True)
    validation.check_positive("div_factor", div_factor)
    validation.check_positive("final_div_factor", final_div_factor)
    up = int(pct_start * transition_steps)

    def schedule(count):
        t = _step(count)
        peak = _f32(peak_value)
        start, final = peak / _F32(div_factor), peak / _F32(div_factor * final_div_factor)
        rising = cosine_interpolate(start, peak, t / _F32(max(up, 1)))
        falling = cosine_interpolate(
            peak, final, (t - _F32(up)) / _F32(max(transition_steps - up, 1))
        )
        return jnp.where(t < up, rising, jnp.where(t < transition_steps, falling, final))

    values = [peak_value, peak_value / div_factor, peak_value / (div_factor * final_div_factor)]
    return ranges.with_range(schedule, ranges.spanning(values))
