"""Line searches: the backtracking (Armijo) search, `value_and_grad_from_state`, and the
scalar-on-a-line helpers the zoom search (zoom_linesearch.py) and L-BFGS share.

A line search is a transform placed after a direction (``-g`` from sgd, ``-P g`` from
L-BFGS): ``update(updates, state, params, value=, grad=, value_fn=, **fn_kwargs)`` evaluates
``value_fn`` along ``params + eta * updates`` and returns ``eta * updates``. Scalars on the
line (step sizes, values, slopes) run in float32, or float64 when a parameter is 64-bit.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformationExtraArgs

# --- helpers shared by the second-order family


def as_real(x: chex.Numeric, dtype: Any) -> jax.Array:
    return jnp.asarray(x).astype(dtype)


def _axpy(x: chex.Array, s: chex.Array, y: chex.Array) -> chex.Array:
    x, y = jnp.asarray(x), jnp.asarray(y)
    f = numerics.compute_dtype(x.dtype, y.dtype)
    return (x.astype(f) + s.astype(f) * y.astype(f)).astype(x.dtype)


def add_scale(x: chex.ArrayTree, s: chex.Array, y: chex.ArrayTree) -> chex.ArrayTree:
    """``x + s y`` leaf by leaf, computed at full precision, in each leaf of ``x``'s dtype."""
    return jax.tree.map(lambda a, b: _axpy(a, s, b), x, y)


def _scale(s: chex.Array, u: chex.Array, out_dtype: Any) -> chex.Array:
    u = jnp.asarray(u)
    f = numerics.compute_dtype(u.dtype)
    return (s.astype(f) * u.astype(f)).astype(out_dtype)


def scale_updates(s: chex.Array, updates: chex.ArrayTree, params: Any) -> chex.ArrayTree:
    """``s u`` leaf by leaf, in each parameter's dtype."""
    return jax.tree.map(functools.partial(_scale, s), updates, numerics.out_dtypes(updates, params))


def split_fn_kwargs(value_fn: Callable[..., Any], extra_args: dict, owner: str) -> dict:
    """The extra arguments ``value_fn`` takes (by parameter name; all of them when it takes
    ``**kwargs``); any other raises a ``TypeError`` naming it, as in optax."""
    params = inspect.signature(value_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(extra_args)
    unused = sorted(k for k in extra_args if k not in params)
    if unused:
        raise TypeError(
            f"Unexpected keyword arguments passed to `{owner}.update`. These arguments were "
            f"not consumed by `value_fn`: {unused}. Ensure that all extra keyword arguments "
            "are accepted by `value_fn`."
        )
    return {k: v for k, v in extra_args.items() if k in params}


def require_objective(owner: str, params: Any, value: Any, grad: Any, value_fn: Any) -> None:
    missing = [n for n, v in (("params", params), ("value", value), ("grad", grad)) if v is None]
    if value_fn is None or missing:
        missing += [] if value_fn is not None else ["value_fn"]
        raise TypeError(
            f"{owner}.update needs params and the objective: value= (f at params), grad= (its "
            f"gradient) and value_fn= (params -> f); missing {missing}. Call "
            "tx.update(grad, state, params, value=value, grad=grad, value_fn=f). Inside "
            "optax.chain (which forwards extra arguments only to optax's own class), wrap it: "
            "optax.GradientTransformationExtraArgs(*tx)."
        )


def cond_print(condition: chex.Array, message: str, **kwargs: Any) -> None:
    """``jax.debug.print(message)`` when ``condition`` holds (for ``verbose=True``)."""
    jax.lax.cond(
        condition,
        lambda: jax.debug.print(message, **kwargs, ordered=True),
        lambda: None,
    )


# --- backtracking


class BacktrackingLinesearchInfo(NamedTuple):
    num_linesearch_steps: chex.Array  # int32: evaluations of value_fn in the last search
    decrease_error: chex.Array  # > 0: the accepted step does not decrease f enough


class ScaleByBacktrackingLinesearchState(NamedTuple):
    learning_rate: chex.Array  # the step size of the last search
    value: chex.Array  # f at the accepted step (reused by value_and_grad_from_state)
    grad: chex.ArrayTree | None  # its gradient with store_grad=True, else None
    info: BacktrackingLinesearchInfo


class _Backtrack(NamedTuple):  # the inner loop's carry
    learning_rate: chex.Array
    new_value: chex.Array
    new_grad: chex.ArrayTree | None
    decrease_error: chex.Array
    iter_num: chex.Array


def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: chex.Numeric = 1e-4,
    decrease_factor: chex.Numeric = 0.8,
    increase_factor: chex.Numeric = 1.5,
    max_learning_rate: chex.Numeric = 1.0,
    atol: chex.Numeric = 0.0,
    rtol: chex.Numeric = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformationExtraArgs:
    """Backtracking line search: shrinks the step until it decreases f enough (Armijo).

    Finds :math:`\\eta` with the sufficient-decrease (first Wolfe, Armijo) condition

    .. math::
        f(w + \\eta u) \\le (1 + \\delta) f(w) + \\eta\\, c\\, \\langle u, \\nabla f(w)\\rangle
        + \\epsilon

    (:math:`c` = ``slope_rtol``, :math:`\\delta` = ``rtol``, :math:`\\epsilon` = ``atol``),
    starting from :math:`\\min(\\text{increase\\_factor}\\cdot\\eta_{prev},
    \\text{max\\_learning\\_rate})` and multiplying by ``decrease_factor`` until it holds or
    ``max_backtracking_steps`` are spent. A NaN or infinite value at every tried step gives
    :math:`\\eta = 0`. ``u`` must be a descent direction (:math:`\\langle u, \\nabla
    f\\rangle < 0`, e.g. ``-g`` from ``sgd`` without momentum).

    Deliberate difference from optax: as in `scale_by_zoom_linesearch` (float32 scalars,
    ``**kwargs`` value functions, validation), and ``increase_factor=inf`` after a step of 0
    restarts at ``max_learning_rate``, its documented meaning (optax: NaN from inf * 0).

    Args:
        max_backtracking_steps: int >= 0, extra evaluations after the first.
        slope_rtol: :math:`c` in [0, 1).
        decrease_factor: shrink factor in (0, 1].
        increase_factor: > 0 (inf: start every search at ``max_learning_rate``; 1: at the
            last step size).
        max_learning_rate: > 0 (inf: no cap).
        atol: :math:`\\epsilon` >= 0. rtol: :math:`\\delta` >= 0.
        store_grad: also return the gradient at the accepted step in the state (one
            linearization instead of a plain evaluation), for `value_and_grad_from_state`.
        verbose: print a diagnostic when the search fails.

    Returns:
        A `GradientTransformationExtraArgs` with state `ScaleByBacktrackingLinesearchState`;
        ``update(updates, state, params, *, value, grad, value_fn, **fn_kwargs)`` where
        ``fn_kwargs`` go to ``value_fn`` (a batch, say); any other raises a ``TypeError``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> f = lambda w: jnp.sum(w**2)
        >>> tx = dlopt.chain(dlopt.sgd(1.0), dlopt.scale_by_backtracking_linesearch(15))
        >>> w = jnp.array([1.0, 2.0]); state = tx.init(w)
        >>> v, g = jax.value_and_grad(f)(w)
        >>> u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)

    References:
        Nocedal and Wright, 2006, "Numerical Optimization", 2nd ed., Springer, Alg. 3.1.
        Vaswani et al., 2019, "Painless Stochastic Gradient", NeurIPS.
    """
    validation.check_int("max_backtracking_steps", max_backtracking_steps)
    validation.check_in_range("slope_rtol", slope_rtol, 0.0, 1.0)
    validation.check_in_range(
        "decrease_factor", decrease_factor, 0.0, 1.0, low_closed=False, high_closed=True
    )
    validation.check_positive_or_inf("increase_factor", increase_factor)
    validation.check_positive_or_inf("max_learning_rate", max_learning_rate)
    validation.check_non_negative("atol", atol)
    validation.check_non_negative("rtol", rtol)
    validation.check_flag("store_grad", store_grad)
    validation.check_flag("verbose", verbose)
    owner = "scale_by_backtracking_linesearch"

    def init_fn(params):
        dtype = numerics.scalar_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones((), dtype),
            value=jnp.full((), jnp.inf, dtype),
            grad=tree_lib.zeros_like(params) if store_grad else None,
            info=BacktrackingLinesearchInfo(jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, dtype)),
        )

    def update_fn(updates, state, params=None, *, value=None, grad=None, value_fn=None,
                  **extra_args):  # fmt: skip
        require_objective(owner, params, value, grad, value_fn)
        params, updates = jax.tree.map(jnp.asarray, (params, updates))  # numpy in, jax dtypes
        fn = functools.partial(value_fn, **split_fn_kwargs(value_fn, extra_args, owner))
        dtype = numerics.scalar_dtype(params)
        s = functools.partial(as_real, dtype=dtype)
        value = as_real(value, dtype)
        # the slope of eta -> f(w + eta u) at 0, written as optax does: Re sum(conj(u)
        # conj(g)); for complex params that is the slope when grad is jax.grad's raw output
        # (the zoom search, like optax's, expects the conjugate: Re sum(conj(u) g))
        slope = numerics.real_vdot(updates, jax.tree.map(jnp.conj, grad), dtype)
        max_steps = max_backtracking_steps

        def decrease_error(lr, new_value):
            err = new_value - s(1.0 + rtol) * value - lr * s(slope_rtol) * slope
            return jnp.maximum(jnp.where(jnp.isnan(err), jnp.inf, err), 0.0)

        def body(c: _Backtrack) -> _Backtrack:
            lr = jnp.where(c.iter_num > 0, s(decrease_factor) * c.learning_rate, c.learning_rate)
            trial = add_scale(params, lr, updates)
            new_grad = c.new_grad
            if store_grad:
                raw, jvp = jax.linearize(fn, trial)
                new_value = as_real(raw, dtype)
                err = decrease_error(lr, new_value)
                new_grad = jax.lax.cond(
                    (err <= s(atol)) | (c.iter_num == max_steps),
                    lambda: tree_lib.cast_like(
                        jax.linear_transpose(jvp, trial)(jnp.ones_like(raw))[0], params
                    ),
                    lambda: c.new_grad,
                )
            else:
                new_value = as_real(fn(trial), dtype)
                err = decrease_error(lr, new_value)
            return _Backtrack(lr, new_value, new_grad, err, c.iter_num + 1)

        def cond(c: _Backtrack) -> chex.Array:
            return ~(c.decrease_error <= s(atol)) & (c.iter_num <= max_steps)

        guess = jnp.minimum(s(increase_factor) * as_real(state.learning_rate, dtype),
                            s(max_learning_rate))  # fmt: skip
        guess = jnp.where(jnp.isnan(guess), s(max_learning_rate), guess)  # inf * 0
        start = _Backtrack(
            guess, value, tree_lib.zeros_like(params) if store_grad else None,
            jnp.full((), jnp.inf, dtype), jnp.zeros((), jnp.int32),
        )  # fmt: skip
        final = jax.lax.while_loop(cond, body, start)
        failed_outright = jnp.isinf(final.decrease_error)
        learning_rate = jnp.where(failed_outright, jnp.zeros((), dtype), final.learning_rate)
        if verbose:
            cond_print(
                final.decrease_error > s(atol),
                "INFO: dlopt.scale_by_backtracking_linesearch:\nBacktracking linesearch "
                "failed to find a stepsize ensuring sufficent decrease.\nValue at current "
                "params: {value},\nSlope along update direction: {slope}\nStepsize: "
                "{stepsize}\nDecrease Error: {decrease_error}",
                value=value, slope=slope, stepsize=final.learning_rate,
                decrease_error=final.decrease_error,
            )  # fmt: skip
            cond_print(failed_outright, "Using a stepsize of 0 to avoid infinite or nan values.")
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=learning_rate,
            value=final.new_value,
            grad=final.new_grad,
            info=BacktrackingLinesearchInfo(final.iter_num, final.decrease_error),
        )
        return scale_updates(learning_rate, updates, params), new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


# --- reusing the last search's value and gradient


def _get(state: Any, name: str) -> Any:
    found = tree_lib.find_fields(state, name)
    if len(found) > 1:
        raise KeyError(
            f"found {len(found)} fields named {name!r} in the optimizer state; "
            "value_and_grad_from_state needs exactly one line search in the chain."
        )
    return found[0] if found else None


def value_and_grad_from_state(
    value_fn: Callable[..., chex.Numeric],
) -> Callable[..., tuple[chex.Array, chex.ArrayTree]]:
    """Like ``jax.value_and_grad(value_fn)``, but reuses the value and gradient a line
    search already computed at the current params (its state's ``value`` and ``grad``).

    The returned ``value_and_grad(params, *args, state, **kwargs)`` reads ``value`` and
    ``grad`` from ``state`` (the whole optimizer state); when that value is finite they are
    returned, else (the first step, or a search that ended on inf/NaN) it evaluates
    ``jax.value_and_grad(value_fn)(params, *args, **kwargs)``, cast to the stored dtypes.
    Only for deterministic objectives: with a new batch each step, call
    ``jax.value_and_grad`` yourself.

    Deliberate difference from optax: a fresh value and gradient are cast to the stored
    dtypes, so a ``value_fn`` returning another dtype (a bfloat16 loss, say) works; in optax
    the two branches of its ``lax.cond`` then disagree and it raises.

    Args:
        value_fn: the objective, ``params -> scalar`` (plus any extra arguments).

    Returns:
        ``value_and_grad(params, *args, state, **kwargs) -> (value, grad)``. Raises a
        ``ValueError`` when the state holds no value or gradient (e.g. a backtracking search
        without ``store_grad=True``), a ``KeyError`` when it holds several.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> f = lambda w: jnp.sum(w**2)
        >>> tx, w = dlopt.lbfgs(), jnp.array([1.0, 2.0])
        >>> state, value_and_grad = tx.init(w), dlopt.value_and_grad_from_state(f)
        >>> @jax.jit
        ... def step(w, state):
        ...     v, g = value_and_grad(w, state=state)  # the search's stored value and gradient
        ...     u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)
        ...     return dlopt.apply_updates(w, u), state
        >>> w, state = step(w, state)
        >>> w, state = step(w, state)
        >>> float(f(w)) < 1e-12
        True
    """

    def value_and_grad(params, *fn_args, state, **fn_kwargs):
        value, grad = _get(state, "value"), _get(state, "grad")
        if value is None or grad is None:
            raise ValueError(
                "Value or gradient not found in the state. Make sure that these values are "
                "stored in the state by the optimizer (a line search; "
                "scale_by_backtracking_linesearch needs store_grad=True)."
            )
        value = jnp.asarray(value)

        def fresh(p, args, kwargs):
            v, g = jax.value_and_grad(value_fn)(p, *args, **kwargs)
            return jnp.asarray(v).astype(value.dtype), tree_lib.cast_like(g, grad)

        return jax.lax.cond(
            jnp.isfinite(value), lambda *_: (value, grad), fresh, params, fn_args, fn_kwargs
        )

    return value_and_grad
