"""What `scale_by_zoom_linesearch` prints with ``verbose=True`` when a search fails.

The ``FLAG_*`` sentences are optax's, word for word (scripts and optax's own tests look for
them in the output). The reports run under ``jit`` (``jax.debug.print``, ordered).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from dlopt.linesearch.backtracking import cond_print

FLAG_INTERVAL_NOT_FOUND = (
    "No interval satisfying curvature condition. "
    "Consider increasing maximal possible stepsize of the linesearch."
)
FLAG_INTERVAL_TOO_SMALL = "Length of searched interval has been reduced below threshold."
FLAG_CURVATURE_COND_NOT_SATISFIED = (
    "Returning stepsize with sufficient decrease but curvature condition not satisfied."
)
FLAG_NO_STEPSIZE_FOUND = "Linesearch failed, no stepsize satisfying sufficient decrease found."
FLAG_NOT_A_DESCENT_DIRECTION = (
    "The linesearch failed because the provided direction is not a descent direction. "
)
_STATUS = (
    "INFO: dlopt.scale_by_zoom_linesearch:\nValue at current params: {v0}\nSlope along "
    "update direction: {d0}\nStepsize reached: {stepsize}\nDecrease Error: {decrease}\n"
    "Curvature Error: {curvature}"
)


def report_interval_not_found(condition, v0, d0, stepsize, decrease, curvature) -> None:
    """The largest allowed step still has sufficient decrease but too steep a slope."""
    message = _STATUS + FLAG_INTERVAL_NOT_FOUND + "\n" + FLAG_CURVATURE_COND_NOT_SATISFIED
    cond_print(condition, message, v0=v0, d0=d0, stepsize=stepsize, decrease=decrease,
               curvature=curvature)  # fmt: skip


def _no_sufficient_decrease(c: Any, d0: chex.Array) -> None:
    jax.debug.print(FLAG_NO_STEPSIZE_FOUND, ordered=True)
    descent = d0 < 0.0
    cond_print(~descent, FLAG_NOT_A_DESCENT_DIRECTION + "The slope (={slope}) at stepsize=0 "
               "should be negative", slope=d0)  # fmt: skip
    cond_print(descent, "Consider augmenting the maximal number of linesearch iterations.")
    eps = float(jnp.finfo(jnp.float32).eps)
    cond_print(
        descent & (c.stepsize < eps),
        "Computed stepsize (={stepsize}) is below machine precision (={eps}), consider "
        "passing to higher precision like x64, using jax.config.update('jax_enable_x64', "
        "True).",
        stepsize=c.stepsize, eps=eps,
    )  # fmt: skip
    cond_print(
        descent & (jnp.abs(d0) > 1e16),
        "Very large absolute slope at stepsize=0. (|slope|={slope}). The objective is badly "
        "conditioned. Consider reparameterizing objective (e.g., normalizing parameters) or "
        "finding a better guess for the initial parameters for the solver.",
        slope=jnp.abs(d0),
    )
    outside = jnp.isinf(c.decrease_error)
    cond_print(outside, "Cannot even make a step without getting Inf or Nan. The linesearch "
               "won't make a step and the optimizer is stuck.")  # fmt: skip
    cond_print(~outside, "Making an unsafe step, not decreasing enough the objective. "
               "Convergence of the solver is compromised as it does not reduce "
               "values.")  # fmt: skip


def report_failure(c: Any, v0: chex.Array, d0: chex.Array, threshold: chex.Array) -> None:
    """A search that ran out of steps (``c`` is its `ZoomLinesearchState` at that point)."""
    jax.debug.print(_STATUS, v0=v0, d0=d0, stepsize=c.stepsize, decrease=c.decrease_error,
                    curvature=c.curvature_error, ordered=True)  # fmt: skip
    length = jnp.abs(c.low - c.high)
    cond_print(length <= threshold, FLAG_INTERVAL_TOO_SMALL + " Interval length: {length}.",
               length=length)  # fmt: skip
    jax.lax.cond(
        c.safe_stepsize > 0.0,
        lambda: jax.debug.print(FLAG_CURVATURE_COND_NOT_SATISFIED + " Stepsize ensuring "
                                "sufficient decrease: {s}.", s=c.safe_stepsize, ordered=True),
        lambda: _no_sufficient_decrease(c, d0),
    )  # fmt: skip
