"""The zoom line search: a step satisfying the strong Wolfe conditions, by bracketing then
zooming (Nocedal and Wright, Algorithms 3.5 and 3.6), with Hager and Zhang's approximate
Wolfe condition near a minimum. The default line search of `lbfgs`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformationExtraArgs
from dlopt.linesearch import zoom_diagnostics
from dlopt.linesearch.backtracking import (
    add_scale,
    as_real,
    require_objective,
    scale_updates,
    split_fn_kwargs,
)

GUESSES = ("one", "keep")


class ZoomLinesearchInfo(NamedTuple):
    num_linesearch_steps: chex.Array  # int32: evaluations of value_fn in the last search
    decrease_error: chex.Array  # > 0: the step does not decrease f enough (worrying)
    curvature_error: chex.Array  # > 0: the curvature condition failed (often harmless)


class ScaleByZoomLinesearchState(NamedTuple):
    learning_rate: chex.Array  # the step size of the last search
    value: chex.Array  # f at the accepted step (reused by value_and_grad_from_state)
    grad: chex.ArrayTree  # the gradient there
    info: ZoomLinesearchInfo


class ZoomLinesearchState(NamedTuple):
    """The search's loop carry: the last trial, the bracket and the best safe step.

    ``low``/``high`` bracket a step satisfying both conditions with ``value_low <=
    value_high`` (``low`` need not be the smaller); ``safe_*`` is the best trial with
    sufficient decrease, returned when the curvature condition cannot be met.
    """

    count: chex.Array
    stepsize: chex.Array
    value: chex.Array
    grad: chex.ArrayTree
    slope: chex.Array
    decrease_error: chex.Array
    curvature_error: chex.Array
    error: chex.Array
    interval_found: chex.Array
    done: chex.Array
    failed: chex.Array
    low: chex.Array
    value_low: chex.Array
    slope_low: chex.Array
    high: chex.Array
    value_high: chex.Array
    slope_high: chex.Array
    cubic_ref: chex.Array
    value_cubic_ref: chex.Array
    safe_stepsize: chex.Array
    safe_value: chex.Array
    safe_grad: chex.ArrayTree


class _Line(NamedTuple):  # what one search holds fixed (plain Python, never a carry)
    params: Any
    updates: Any
    value_init: chex.Array
    slope_init: chex.Array
    guess: chex.Array
    value_and_grad: Callable[[Any], tuple[chex.Array, Any]]
    dtype: Any


class _Hyper(NamedTuple):
    max_steps: int
    max_stepsize: Any
    tol: Any
    increase_factor: Any
    slope_rtol: Any
    curv_rtol: Any
    approx_dec_rtol: Any
    interval_threshold: Any
    verbose: bool


def _cubicmin(a, fa, fpa, b, fb, c, fc):
    """The minimizer of the cubic through (a, fa), (b, fb), (c, fc) with slope fpa at a
    (NaN when it has none; the caller then falls back). As in scipy's line search."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    d1 = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    rhs = jnp.array([fb - fa - fpa * db, fc - fa - fpa * dc])
    cubic, square = jnp.dot(d1, rhs, precision=jax.lax.Precision.HIGHEST) / denom
    radical = square * square - 3.0 * cubic * fpa
    return a + (-square + jnp.sqrt(radical)) / (3.0 * cubic)


def _quadmin(a, fa, fpa, b, fb):
    """The minimizer of the quadratic through (a, fa), (b, fb) with slope fpa at a."""
    db = b - a
    square = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * square)


def _trial(line: _Line, stepsize):
    """f, its gradient, and the slope of eta -> f(w + eta u), at ``stepsize``."""
    value, grad = line.value_and_grad(add_scale(line.params, stepsize, line.updates))
    grad = tree_lib.cast_like(grad, line.params)
    slope = numerics.real_vdot(jax.tree.map(jnp.conj, grad), line.updates, line.dtype)
    return as_real(value, line.dtype), grad, slope


def _errors(hp: _Hyper, line: _Line, stepsize, value, slope):
    """How far (>= 0; NaN -> inf) a trial is from sufficient decrease and small curvature."""
    s = functools.partial(as_real, dtype=line.dtype)
    v0, d0 = line.value_init, line.slope_init
    decrease = value - v0 - s(hp.slope_rtol) * stepsize * d0  # Armijo, N&W (3.7a)
    if hp.approx_dec_rtol is not None:  # Hager and Zhang (2006), (23), once f is near f(w)
        approx = slope - s(2 * hp.slope_rtol - 1.0) * d0
        approx = jnp.maximum(approx, value - v0 - s(hp.approx_dec_rtol) * jnp.abs(v0))
        decrease = jnp.minimum(approx, decrease)
    curvature = jnp.abs(slope) - s(hp.curv_rtol) * jnp.abs(d0)  # strong Wolfe, N&W (3.7b)

    def clean(err):
        err = jnp.maximum(err, 0.0)
        return jnp.where(jnp.isnan(err), jnp.inf, err)

    decrease, curvature = clean(decrease), clean(curvature)
    return decrease, curvature, jnp.maximum(decrease, curvature)


def _where(cond, new, old):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _search_interval(c: ZoomLinesearchState, line: _Line, hp: _Hyper) -> ZoomLinesearchState:
    """Grows the step until it brackets an acceptable one (N&W Algorithm 3.5)."""
    s = functools.partial(as_real, dtype=line.dtype)
    stepsize = jnp.where(c.count == 0, line.guess, s(hp.increase_factor) * c.stepsize)
    reached = jnp.asarray(False)
    if hp.max_stepsize is not None:
        reached = stepsize >= s(hp.max_stepsize)
        stepsize = jnp.minimum(stepsize, s(hp.max_stepsize))
    value, grad, slope = _trial(line, stepsize)
    decrease, curvature, error = _errors(hp, line, stepsize, value, slope)
    safe = _where(decrease <= s(hp.tol), (stepsize, value, grad),
                  (c.safe_stepsize, c.safe_value, c.safe_grad))  # fmt: skip
    high_is_new = (decrease > 0.0) | ((value >= c.value) & (c.count > 0))
    low_is_new = (slope >= 0.0) & ~high_is_new
    previous, new = (c.stepsize, c.value, c.slope), (stepsize, value, slope)
    (low, value_low, slope_low), (high, value_high, slope_high) = _where(
        low_is_new, (new, previous), (previous, new)
    )
    interval_found = high_is_new | low_is_new | (error <= s(hp.tol))
    done = (error <= s(hp.tol)) | (reached & ~interval_found)
    if hp.verbose:
        zoom_diagnostics.report_interval_not_found(
            reached & ~interval_found, line.value_init, line.slope_init, stepsize, decrease,
            curvature,
        )  # fmt: skip
    return ZoomLinesearchState(
        tree_lib.safe_increment(c.count), stepsize, value, grad, slope, decrease, curvature,
        error, interval_found, done, (c.count + 1 >= hp.max_steps) & ~done,
        low, value_low, slope_low, high, value_high, slope_high, low, value_low, *safe,
    )  # fmt: skip


def _zoom(c: ZoomLinesearchState, line: _Line, hp: _Hyper) -> ZoomLinesearchState:
    """Shrinks the bracket by cubic, quadratic or bisection steps (N&W Algorithm 3.6)."""
    s = functools.partial(as_real, dtype=line.dtype)
    low, high = c.low, c.high
    delta = jnp.abs(high - low)
    left, right = jnp.minimum(high, low), jnp.maximum(high, low)
    cubic = _cubicmin(low, c.value_low, c.slope_low, high, c.value_high, c.cubic_ref,
                      c.value_cubic_ref)  # fmt: skip
    use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
    quad = _quadmin(low, c.value_low, c.slope_low, high, c.value_high)
    use_quad = ~use_cubic & (quad > left + 0.1 * delta) & (quad < right - 0.1 * delta)
    middle = jnp.where(use_cubic, cubic, c.cubic_ref)
    middle = jnp.where(use_quad, quad, middle)
    middle = jnp.where(~use_cubic & ~use_quad, (low + high) / 2.0, middle)

    value, grad, slope = _trial(line, middle)
    decrease, curvature, error = _errors(hp, line, middle, value, slope)
    better_safe = (decrease <= s(hp.tol)) & (value < c.safe_value)
    safe = _where(better_safe, (middle, value, grad),
                  (c.safe_stepsize, c.safe_value, c.safe_grad))  # fmt: skip
    done = error <= s(hp.tol)
    high_to_middle = (decrease > 0.0) | (value >= c.value_low)
    high_to_low = (slope * (high - low) >= 0.0) & ~high_to_middle
    trial, old_low, old_high = (middle, value, slope), (low, c.value_low, c.slope_low), (
        high, c.value_high, c.slope_high)  # fmt: skip
    new_high = _where(high_to_low, old_low, _where(high_to_middle, trial, old_high))
    new_low = _where(~high_to_middle, trial, old_low)
    cubic_ref = _where(high_to_middle | high_to_low, old_high[:2], old_low[:2])
    # stop once the bracket is below the threshold if a sufficient decrease is known;
    # without one, keep going (some steep functions need very small steps)
    presumably_failed = (c.count + 1 >= hp.max_steps) | (
        (delta <= s(hp.interval_threshold)) & (safe[0] > 0.0)
    )
    return ZoomLinesearchState(
        tree_lib.safe_increment(c.count), middle, value, grad, slope, decrease, curvature,
        error, c.interval_found, done, presumably_failed & ~done, *new_low, *new_high,
        *cubic_ref, *safe,
    )  # fmt: skip


def _try_safe_step(c: ZoomLinesearchState, line: _Line, hp: _Hyper) -> ZoomLinesearchState:
    """After a failure: the best step with sufficient decrease if any, else the last trial
    (or no step at all when the values are not finite)."""
    use_safe = (c.safe_stepsize > 0.0) | jnp.isinf(c.decrease_error)
    stepsize, value, grad = _where(use_safe, (c.safe_stepsize, c.safe_value, c.safe_grad),
                                   (c.stepsize, c.value, c.grad))  # fmt: skip
    if hp.verbose:
        zoom_diagnostics.report_failure(c, line.value_init, line.slope_init,
                                        as_real(hp.interval_threshold, line.dtype))  # fmt: skip
    return c._replace(stepsize=stepsize, value=value, grad=grad)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: chex.Numeric | None = None,
    tol: chex.Numeric = 0.0,
    increase_factor: chex.Numeric = 2.0,
    slope_rtol: chex.Numeric = 1e-4,
    curv_rtol: chex.Numeric = 0.9,
    approx_dec_rtol: chex.Numeric | None = 1e-6,
    stepsize_precision: chex.Numeric = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    """Zoom line search: a step size satisfying the strong Wolfe conditions.

    Finds :math:`\\eta` with sufficient decrease (Armijo) and small curvature,

    .. math::
        f(w + \\eta u) \\le f(w) + c_1 \\eta \\langle u, \\nabla f(w)\\rangle + \\epsilon,
        \\qquad |\\langle \\nabla f(w + \\eta u), u\\rangle| \\le c_2 |\\langle \\nabla f(w),
        u\\rangle| + \\epsilon

    (:math:`c_1` = ``slope_rtol``, :math:`c_2` = ``curv_rtol``, :math:`\\epsilon` = ``tol``).
    Phase 1 multiplies the step by ``increase_factor`` until it brackets an acceptable step;
    phase 2 shrinks the bracket by cubic or quadratic interpolation (bisection as a
    fallback). Near a minimum, where the Armijo test drowns in rounding, Hager and Zhang's
    approximate condition :math:`\\langle \\nabla f(w + \\eta u), u\\rangle \\le (2c_1 - 1)
    \\langle \\nabla f(w), u\\rangle` is accepted instead once :math:`f(w + \\eta u) \\le
    f(w) + c_3 |f(w)|` (:math:`c_3` = ``approx_dec_rtol``; None turns it off). When the
    steps run out, the best step with sufficient decrease is taken.

    Deliberate difference from optax (also in `scale_by_backtracking_linesearch`): step
    sizes, values, slopes and errors are float32 (float64 with 64-bit params) whatever the
    parameters' precision (optax: the first leaf's real dtype, e.g. bfloat16), trial points
    are formed at that precision and cast to each parameter's dtype, and the state keeps
    those dtypes (int32 step counts); a ``value_fn`` taking ``**kwargs`` receives every extra
    argument (optax passes only its named parameters and raises on the rest); a missing
    ``value=``, ``grad=`` or ``value_fn=`` raises a ``TypeError`` saying how to call it;
    every argument is validated. Identical to optax for float32/float64/complex params.

    Args:
        max_linesearch_steps: int >= 1, evaluations of ``value_fn`` per search.
        max_learning_rate: > 0, or None (or inf) for no cap.
        tol: :math:`\\epsilon` >= 0.
        increase_factor: > 0 (> 1 to grow), the phase-1 growth.
        slope_rtol: :math:`c_1` in [0, 1).
        curv_rtol: :math:`c_2` >= 0; inf turns the curvature condition off.
        approx_dec_rtol: :math:`c_3` >= 0, or None.
        stepsize_precision: >= 0; a bracket this narrow ends the search when a step with
            sufficient decrease is known.
        initial_guess_strategy: ``"one"`` (first trial 1: for L-BFGS and Newton steps) or
            ``"keep"`` (the last step size: for gradient descent).
        verbose: print diagnostics when a search fails.

    Returns:
        A `GradientTransformationExtraArgs` with state `ScaleByZoomLinesearchState`;
        ``update(updates, state, params, *, value, grad, value_fn, **fn_kwargs)``, the
        extra ``fn_kwargs`` going to ``value_fn``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> f = lambda w: jnp.sum(w**2)
        >>> tx = dlopt.chain(dlopt.sgd(1.0), dlopt.scale_by_zoom_linesearch(15))
        >>> w = jnp.array([1.0, 2.0]); state = tx.init(w)
        >>> v, g = jax.value_and_grad(f)(w)
        >>> u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)
        >>> dlopt.apply_updates(w, u)
        Array([0., 0.], dtype=float32)

    References:
        Nocedal and Wright, 2006, "Numerical Optimization", 2nd ed., Springer, Alg. 3.5, 3.6.
        Hager and Zhang, 2006, "Algorithm 851: CG_DESCENT", ACM TOMS 32(1).
    """
    validation.check_int("max_linesearch_steps", max_linesearch_steps, low=1)
    if max_learning_rate is not None:
        validation.check_positive_or_inf("max_learning_rate", max_learning_rate)
    validation.check_non_negative("tol", tol)
    validation.check_positive_or_inf("increase_factor", increase_factor)
    validation.check_in_range("slope_rtol", slope_rtol, 0.0, 1.0)
    validation.check_non_negative_or_inf("curv_rtol", curv_rtol)
    if approx_dec_rtol is not None:
        validation.check_non_negative("approx_dec_rtol", approx_dec_rtol)
    validation.check_non_negative("stepsize_precision", stepsize_precision)
    validation.check_choice("initial_guess_strategy", initial_guess_strategy, GUESSES)
    validation.check_flag("verbose", verbose)
    hp = _Hyper(
        max_linesearch_steps, max_learning_rate, tol, increase_factor, slope_rtol, curv_rtol,
        approx_dec_rtol, stepsize_precision, verbose,
    )  # fmt: skip
    owner = "scale_by_zoom_linesearch"

    def init_fn(params):
        dtype = numerics.scalar_dtype(params)
        inf = jnp.full((), jnp.inf, dtype)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones((), dtype),
            value=inf,
            grad=tree_lib.zeros_like(params),
            info=ZoomLinesearchInfo(jnp.zeros((), jnp.int32), inf, inf),
        )

    def update_fn(updates, state, params=None, *, value=None, grad=None, value_fn=None,
                  **extra_args):  # fmt: skip
        require_objective(owner, params, value, grad, value_fn)
        params, updates = jax.tree.map(jnp.asarray, (params, updates))  # numpy in, jax dtypes
        fn_kwargs = split_fn_kwargs(value_fn, extra_args, owner)
        dtype = numerics.scalar_dtype(params)
        grad = tree_lib.cast_like(grad, params)
        value = as_real(value, dtype)
        slope = numerics.real_vdot(updates, grad, dtype)
        guess = jnp.ones((), dtype)
        if initial_guess_strategy == "keep":
            guess = as_real(state.learning_rate, dtype)
        line = _Line(params, updates, value, slope, guess,
                     lambda w: jax.value_and_grad(value_fn)(w, **fn_kwargs), dtype)  # fmt: skip
        zero, inf = jnp.zeros((), dtype), jnp.full((), jnp.inf, dtype)
        no = jnp.asarray(False)
        start = ZoomLinesearchState(
            jnp.zeros((), jnp.int32), zero, value, grad, slope, inf, inf, inf, no, no, no,
            zero, value, slope, zero, value, slope, zero, value, zero, value, grad,
        )  # fmt: skip

        zoom, search, safe = (functools.partial(f, line=line, hp=hp)
                              for f in (_zoom, _search_interval, _try_safe_step))  # fmt: skip

        def step(c):
            c = jax.lax.cond(c.interval_found, zoom, search, c)
            return jax.lax.cond(c.failed, safe, lambda c: c, c)

        final = jax.lax.while_loop(lambda c: ~(c.done | c.failed), step, start)
        new_state = ScaleByZoomLinesearchState(
            learning_rate=final.stepsize,
            value=final.value,
            grad=final.grad,
            info=ZoomLinesearchInfo(final.count, final.decrease_error, final.curvature_error),
        )
        return scale_updates(final.stepsize, updates, params), new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
