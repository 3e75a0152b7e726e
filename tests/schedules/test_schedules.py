"""Schedules: closed forms, parity with optax and with torch.optim.lr_scheduler, validation, jit."""

from __future__ import annotations

import inspect
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dlopt

STEPS = np.arange(0, 90)


def _eval(schedule, steps=STEPS):
    """Evaluates a schedule on a vector of int32 steps (every schedule is elementwise)."""
    return np.asarray(schedule(jnp.asarray(steps, jnp.int32)))


def _optax_eval(schedule, steps=STEPS):
    with jax.numpy_dtype_promotion("standard"):
        return np.asarray(jax.vmap(schedule)(jnp.asarray(steps, jnp.int32)), np.float32)


# --- closed forms (float64 numpy) -----------------------------------------------------------


def _linear(t, i, e, n, b=0):
    return i + np.clip(t - b, 0, n) / n * (e - i)


def _cosine(t, i, n, alpha=0.0, p=1.0):
    return i * ((1 - alpha) * (0.5 * (1 + np.cos(np.pi * np.minimum(t, n) / n))) ** p + alpha)


def _exp(t, i, n, r, b=0, staircase=False, end=None):
    p = (t - b) / n
    p = np.floor(p) if staircase else p
    v = np.where(t - b <= 0, i, i * r ** np.maximum(p, 0))
    if end is not None:
        v = np.maximum(v, end) if r < 1 else np.minimum(v, end)
    return v


def _cos_interp(a, b, x):
    return b + (a - b) / 2 * (np.cos(np.pi * x) + 1)


def _onecycle(t, n, peak, pct, d, f):
    s = int(pct * n)
    up = _cos_interp(peak / d, peak, t / max(s, 1))
    down = _cos_interp(peak, peak / (d * f), (t - s) / max(n - s, 1))
    return np.where(t < s, up, np.where(t < n, down, peak / (d * f)))


def _join_reference(t):
    return np.where(t < 5, 1.0, np.where(t < 15, _linear(t - 5, 1.0, 0.0, 10), 0.5))


CLOSED_FORMS = [
    ("constant", dlopt.constant_schedule(0.3), lambda t: np.full(t.shape, 0.3)),
    ("step_decay", dlopt.step_decay_schedule(2.0, 7, 0.5), lambda t: 2.0 * 0.5 ** (t // 7)),
    ("exp", dlopt.exponential_decay(1.0, 10, 0.8), lambda t: _exp(t, 1.0, 10, 0.8)),
    (
        "exp_staircase_begin_end",
        dlopt.exponential_decay(1.0, 10, 0.5, transition_begin=5, staircase=True, end_value=0.1),
        lambda t: _exp(t, 1.0, 10, 0.5, 5, True, 0.1),
    ),
    (
        "exp_growth_capped",
        dlopt.exponential_decay(0.1, 5, 1.5, end_value=1.0),
        lambda t: _exp(t, 0.1, 5, 1.5, end=1.0),
    ),
    (
        "piecewise",
        dlopt.piecewise_constant_schedule(1.0, {30: 0.1, 10: 0.5, 60: 0.0}),
        lambda t: 1.0 * np.where(t >= 10, 0.5, 1) * np.where(t >= 30, 0.1, 1) * (t < 60),
    ),
    ("linear", dlopt.linear_schedule(0.1, 1.0, 40, 10), lambda t: _linear(t, 0.1, 1.0, 40, 10)),
    (
        "polynomial",
        dlopt.polynomial_schedule(1.0, 0.01, 2.0, 50, 5),
        lambda t: (1.0 - 0.01) * (1 - np.clip(t - 5, 0, 50) / 50) ** 2 + 0.01,
    ),
    ("cosine", dlopt.cosine_decay_schedule(1.0, 60), lambda t: _cosine(t, 1.0, 60)),
    (
        "cosine_alpha_exponent",
        dlopt.cosine_decay_schedule(0.5, 40, alpha=0.1, exponent=2.0),
        lambda t: _cosine(t, 0.5, 40, 0.1, 2.0),
    ),
    (
        "warmup_cosine",
        dlopt.warmup_cosine_decay_schedule(0.0, 1.0, 10, 70, end_value=0.05),
        lambda t: np.where(
            t < 10, _linear(t, 0.0, 1.0, 10), 0.05 + 0.95 * _cosine(t - 10, 1.0, 60)
        ),
    ),
    (
        "warmup_exponential",
        dlopt.warmup_exponential_decay_schedule(0.0, 1.0, 8, 10, 0.5, transition_begin=4),
        lambda t: np.where(t < 8, _linear(t, 0.0, 1.0, 8), _exp(t - 8, 1.0, 10, 0.5, 4)),
    ),
    (
        "onecycle",
        dlopt.cosine_onecycle_schedule(70, 2.0, pct_start=0.25, div_factor=10.0),
        lambda t: _onecycle(t, 70, 2.0, 0.25, 10.0, 1e4),
    ),
    (
        "join",
        dlopt.join_schedules(
            [
                dlopt.constant_schedule(1.0),
                dlopt.linear_schedule(1.0, 0.0, 10),
                dlopt.constant_schedule(0.5),
            ],
            [5, 15],
        ),
        _join_reference,
    ),
]
CLOSED_IDS = [c[0] for c in CLOSED_FORMS]


@pytest.mark.parametrize("name,schedule,reference", CLOSED_FORMS, ids=CLOSED_IDS)
def test_matches_closed_form(name, schedule, reference):
    values = _eval(schedule)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, reference(STEPS.astype(np.float64)), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("name,schedule,reference", CLOSED_FORMS, ids=CLOSED_IDS)
def test_jit_with_traced_step_returns_float32_without_retracing(name, schedule, reference):
    traces = []
    jitted = jax.jit(lambda t: traces.append(t) or schedule(t))
    for t in (0, 9, 33, 85):
        out = jitted(jnp.int32(t))
        chex.assert_shape(out, ())
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(out, reference(np.float64(t)), rtol=2e-6, atol=1e-7)
    assert len(traces) == 1  # the step is traced, not baked in
    # A Python int step, outside jit, gives a float32 too.
    assert jnp.asarray(schedule(3)).dtype == jnp.float32


# --- parity with optax ----------------------------------------------------------------------

OPTAX_SHARED = [
    ("constant_schedule", (0.3,), {}),
    ("exponential_decay", (1.0, 10, 0.8), {}),
    ("exponential_decay", (1.0, 10, 0.5), dict(transition_begin=5, staircase=True, end_value=0.1)),
    ("exponential_decay", (0.1, 5, 1.5), dict(end_value=1.0)),
    ("piecewise_constant_schedule", (1.0, {30: 0.1, 10: 0.5}), {}),
    ("linear_schedule", (0.1, 1.0, 40, 10), {}),
    ("linear_schedule", (0.1, 1.0, 0), {}),
    ("polynomial_schedule", (1.0, 0.01, 2.0, 50, 5), {}),
    ("cosine_decay_schedule", (1.0, 60), {}),
    ("cosine_decay_schedule", (0.5, 40), dict(alpha=0.1, exponent=2.0)),
    ("warmup_cosine_decay_schedule", (0.0, 1.0, 10, 70), dict(end_value=0.05)),
    ("warmup_cosine_decay_schedule", (0.1, 1.0, 0, 50), dict(exponent=0.5)),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 8, 10, 0.5), dict(transition_begin=4)),
    ("warmup_exponential_decay_schedule", (0.0, 1.0, 8, 10, 0.5), dict(staircase=True)),
    ("cosine_onecycle_schedule", (70, 2.0), dict(pct_start=0.25, div_factor=10.0)),
    ("cosine_onecycle_schedule", (50, 1.0), {}),
]
SHARED_NAMES = sorted({name for name, _, _ in OPTAX_SHARED} | {"join_schedules"})


@pytest.mark.parametrize("name", SHARED_NAMES)
def test_signature_is_optax(name):
    ours = inspect.signature(getattr(dlopt, name)).parameters
    theirs = inspect.signature(getattr(optax, name)).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


@pytest.mark.parametrize(
    "name,args,kwargs", OPTAX_SHARED, ids=lambda v: v if isinstance(v, str) else ""
)
def test_values_equal_optax(name, args, kwargs):
    ours = _eval(getattr(dlopt, name)(*args, **kwargs))
    theirs = _optax_eval(getattr(optax, name)(*args, **kwargs))
    np.testing.assert_allclose(ours, np.broadcast_to(theirs, ours.shape), rtol=1e-5, atol=1e-7)


def test_join_schedules_equals_optax():
    parts = lambda lib: [lib.constant_schedule(1.0), lib.linear_schedule(1.0, 0.0, 10)]  # noqa: E731
    ours = _eval(dlopt.join_schedules(parts(dlopt), [5]))
    theirs = _optax_eval(optax.join_schedules(parts(optax), [5]))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@given(
    init_value=st.floats(0.01, 10.0),
    transition_steps=st.integers(1, 40),
    decay_rate=st.floats(0.05, 2.0),
    transition_begin=st.integers(0, 20),
    staircase=st.booleans(),
    end_value=st.none() | st.floats(0.0, 5.0),
)
def test_exponential_decay_equals_optax_for_random_hyperparameters(
    init_value, transition_steps, decay_rate, transition_begin, staircase, end_value
):
    args = (init_value, transition_steps, decay_rate, transition_begin, staircase, end_value)
    ours = _eval(dlopt.exponential_decay(*args))
    theirs = _optax_eval(optax.exponential_decay(*args))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-30)


# --- parity with torch.optim.lr_scheduler ---------------------------------------------------


def _torch_curve(make_scheduler, lr: float, epochs: int) -> np.ndarray:
    """The learning rate torch uses in each of ``epochs`` epochs."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.asarray(lrs)


S = torch.optim.lr_scheduler
TORCH_CASES = [
    (
        "StepLR",
        lambda o: S.StepLR(o, step_size=3, gamma=0.5),
        dlopt.step_decay_schedule(0.2, 3, 0.5),
    ),
    (
        "ExponentialLR",
        lambda o: S.ExponentialLR(o, gamma=0.9),
        dlopt.exponential_decay(0.2, 1, 0.9),
    ),
    (
        "MultiStepLR",
        lambda o: S.MultiStepLR(o, milestones=[4, 9, 15], gamma=0.3),
        dlopt.piecewise_constant_schedule(0.2, {4: 0.3, 9: 0.3, 15: 0.3}),
    ),
    (
        "CosineAnnealingLR",
        lambda o: S.CosineAnnealingLR(o, T_max=24, eta_min=0.01),
        dlopt.cosine_decay_schedule(0.2, 24, alpha=0.01 / 0.2),
    ),
]


@pytest.mark.parametrize(
    "name,make_scheduler,schedule", TORCH_CASES, ids=[c[0] for c in TORCH_CASES]
)
def test_curve_equals_torch(name, make_scheduler, schedule):
    epochs = 25  # CosineAnnealingLR is periodic past T_max; ours holds, so stop at T_max.
    expected = _torch_curve(make_scheduler, 0.2, epochs)
    assert len(np.unique(expected)) > 3  # the curve really moves
    np.testing.assert_allclose(_eval(schedule, np.arange(epochs)), expected, rtol=1e-5)


@given(step_size=st.integers(1, 12), gamma=st.floats(0.05, 1.0), lr=st.floats(1e-4, 1.0))
def test_step_decay_equals_torch_steplr_for_random_hyperparameters(step_size, gamma, lr):
    make = lambda o: S.StepLR(o, step_size=step_size, gamma=gamma)  # noqa: E731
    expected = _torch_curve(make, lr, 40)
    ours = _eval(dlopt.step_decay_schedule(lr, step_size, gamma), np.arange(40))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-30)


# --- validation -----------------------------------------------------------------------------

_const = dlopt.constant_schedule(1.0)
INVALID = [
    ("value", lambda: dlopt.constant_schedule(math.inf)),
    ("value", lambda: dlopt.constant_schedule(math.nan)),
    ("step_size", lambda: dlopt.step_decay_schedule(1.0, 0, 0.5)),
    ("init_value", lambda: dlopt.step_decay_schedule(math.nan, 10, 0.5)),
    ("transition_steps", lambda: dlopt.exponential_decay(1.0, 0, 0.5)),
    ("decay_rate", lambda: dlopt.exponential_decay(1.0, 10, -0.5)),
    ("transition_begin", lambda: dlopt.exponential_decay(1.0, 10, 0.5, transition_begin=-1)),
    ("end_value", lambda: dlopt.exponential_decay(1.0, 10, 0.5, end_value=math.inf)),
    ("boundaries_and_scales", lambda: dlopt.piecewise_constant_schedule(1.0, {10: math.nan})),
    ("power", lambda: dlopt.polynomial_schedule(1.0, 0.0, -1.0, 10)),
    ("transition_steps", lambda: dlopt.linear_schedule(1.0, 0.0, -5)),
    ("end_value", lambda: dlopt.linear_schedule(1.0, math.nan, 5)),
    ("decay_steps", lambda: dlopt.cosine_decay_schedule(1.0, 0)),
    ("decay_steps", lambda: dlopt.cosine_decay_schedule(1.0, -10)),
    ("alpha", lambda: dlopt.cosine_decay_schedule(1.0, 10, alpha=math.inf)),
    ("exponent", lambda: dlopt.cosine_decay_schedule(1.0, 10, exponent=0.0)),
    ("decay_steps", lambda: dlopt.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10)),
    ("warmup_steps", lambda: dlopt.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10)),
    ("peak_value", lambda: dlopt.warmup_cosine_decay_schedule(0.0, math.nan, 1, 10)),
    ("transition_steps", lambda: dlopt.warmup_exponential_decay_schedule(0.0, 1.0, 5, 0, 0.5)),
    ("warmup_steps", lambda: dlopt.warmup_exponential_decay_schedule(0.0, 1.0, -5, 5, 0.5)),
    ("transition_steps", lambda: dlopt.cosine_onecycle_schedule(0, 1.0)),
    ("pct_start", lambda: dlopt.cosine_onecycle_schedule(10, 1.0, pct_start=1.5)),
    ("div_factor", lambda: dlopt.cosine_onecycle_schedule(10, 1.0, div_factor=0.0)),
    ("final_div_factor", lambda: dlopt.cosine_onecycle_schedule(10, 1.0, final_div_factor=-1.0)),
    ("boundaries", lambda: dlopt.join_schedules([_const, _const], [])),
    ("boundaries", lambda: dlopt.join_schedules([_const, _const], [-1])),
    ("boundaries", lambda: dlopt.join_schedules([_const, _const, _const], [10, 5])),
]


@pytest.mark.parametrize(
    "argument,build", INVALID, ids=[f"{a}-{i}" for i, (a, _) in enumerate(INVALID)]
)
def test_invalid_argument_raises_naming_it(argument, build):
    with pytest.raises(ValueError, match=argument):
        build()


NOT_NUMBERS = [
    ("init_value", lambda: dlopt.linear_schedule("1.0", 0.0, 5)),
    ("end_value", lambda: dlopt.linear_schedule(1.0, None, 5)),
    ("decay_rate", lambda: dlopt.exponential_decay(1.0, 10, "0.5")),
    ("value", lambda: dlopt.constant_schedule(True)),
]


@pytest.mark.parametrize("argument,build", NOT_NUMBERS, ids=[a for a, _ in NOT_NUMBERS])
def test_a_non_number_raises_a_type_error_naming_it(argument, build):
    with pytest.raises(TypeError, match=argument):
        build()


def test_negative_values_and_zero_decay_rate_are_valid():
    # A schedule is not only a learning rate: values of any sign are computed as written.
    np.testing.assert_allclose(float(dlopt.linear_schedule(1.0, -1.0, 4)(2)), 0.0, atol=1e-7)
    assert float(dlopt.linear_schedule(1.0, -1.0, 4)(9)) == -1.0
    assert float(dlopt.constant_schedule(-0.5)(3)) == -0.5
    np.testing.assert_allclose(float(dlopt.cosine_decay_schedule(-2.0, 10)(5)), -1.0, rtol=1e-6)
    zero_rate = dlopt.exponential_decay(1.0, transition_steps=2, decay_rate=0.0)
    assert float(zero_rate(0)) == 1.0 and float(zero_rate(1)) == 0.0 and float(zero_rate(7)) == 0.0
    assert float(dlopt.step_decay_schedule(1.0, 3, -0.5)(3)) == -0.5


def test_schedule_drives_an_optimizer_inside_jit():
    """A schedule as sgd's learning rate: the step count reaches it traced, once compiled."""
    schedule = dlopt.step_decay_schedule(1.0, 2, 0.5)
    tx = dlopt.sgd(schedule)
    params = {"w": jnp.zeros(2)}
    update = jax.jit(chex.assert_max_traces(tx.update, n=1))
    state, steps = tx.init(params), []
    for _ in range(6):
        updates, state = update({"w": jnp.ones(2)}, state)
        steps.append(float(-updates["w"][0]))
    np.testing.assert_allclose(steps, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25])


# --- the range of a schedule's values, known when it is built

RANGES = [
    (lambda: dlopt.constant_schedule(0.1), (0.1, 0.1)),
    (lambda: dlopt.linear_schedule(0.1, -0.1, 10), (-0.1, 0.1)),
    (lambda: dlopt.polynomial_schedule(0.0, 1.0, 2.0, 10), (0.0, 1.0)),
    (lambda: dlopt.piecewise_constant_schedule(0.1, {10: -1.0, 20: 0.5}), (-0.1, 0.1)),
    (lambda: dlopt.cosine_decay_schedule(0.1, 100, alpha=0.1), (0.01, 0.1)),
    (lambda: dlopt.cosine_decay_schedule(-0.1, 100), (-0.1, 0.0)),
    (lambda: dlopt.exponential_decay(1.0, 10, 0.5), (0.0, 1.0)),
    (lambda: dlopt.exponential_decay(1.0, 10, 0.5, end_value=0.2), (0.2, 1.0)),
    (lambda: dlopt.exponential_decay(1.0, 10, 2.0), (1.0, math.inf)),
    (lambda: dlopt.step_decay_schedule(1.0, 10, 0.5), (0.0, 1.0)),
    (lambda: dlopt.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100, 0.1), (0.0, 1.0)),
    (lambda: dlopt.warmup_exponential_decay_schedule(0.0, 1.0, 10, 10, 0.5), (0.0, 1.0)),
    (lambda: dlopt.cosine_onecycle_schedule(100, 1.0, div_factor=10.0), (1e-5, 1.0)),
]


@pytest.mark.parametrize(("make", "expected"), RANGES)
def test_value_range_bounds_every_value(make, expected):
    schedule = make()
    low, high = schedule.value_range
    assert (low, high) == pytest.approx(expected)
    values = np.asarray(schedule(jnp.arange(0, 150)))
    assert values.min() >= low - 1e-6 and values.max() <= high + 1e-6


@pytest.mark.parametrize(
    "make",
    [
        lambda: dlopt.cosine_decay_schedule(-0.1, 100),
        lambda: dlopt.linear_schedule(0.1, -0.1, 10),
        lambda: dlopt.piecewise_constant_schedule(0.1, {10: -1.0}),
        lambda: dlopt.join_schedules(
            [dlopt.constant_schedule(0.1), dlopt.constant_schedule(-0.1)], [5]
        ),
    ],
)
@pytest.mark.parametrize("optimizer", [dlopt.adam, dlopt.sgd, dlopt.lamb])
def test_a_schedule_going_below_zero_is_refused_as_a_learning_rate(make, optimizer):
    with pytest.raises(ValueError, match="learning_rate is a schedule whose values go down to"):
        optimizer(make())


def test_a_schedule_may_go_negative_elsewhere_and_stays_a_callable():
    schedule = dlopt.linear_schedule(0.1, -0.1, 10)  # e.g. for a hyperparameter of any sign
    assert float(schedule(10)) == pytest.approx(-0.1)
    assert float(jax.jit(schedule)(10)) == pytest.approx(-0.1)


def test_an_unknown_callable_is_the_callers_responsibility():
    dlopt.adam(lambda count: -0.1)  # nothing known about its values: not called to check


def test_cosine_decay_alpha_above_one_is_refused():
    with pytest.raises(ValueError, match="alpha .* must be <= 1"):
        dlopt.cosine_decay_schedule(0.1, 100, alpha=5)
    # a warmup whose end_value is above its peak still rises, as in optax
    schedule = dlopt.warmup_cosine_decay_schedule(0.0, 0.1, 10, 100, end_value=0.2)
    assert float(schedule(100)) == pytest.approx(0.2)
