"""The moment-rule builder: one home for what every per-leaf update rule repeats.

An optimizer file writes its update for ONE parameter (``leaf_fn``), its state NamedTuple and
its docs; `moment_rule` turns them into a `GradientTransformation` and owns the rest:

* the saturating int32 step ``count`` (`dlopt.core.tree.safe_increment`), whatever the
  state calls it (``count``, ``t``);
* the per-parameter state buffers ("moments"), made at init in their storage dtypes (zeros
  via `dlopt.core.tree.moments_like`, or a given init) and written back each step through a
  `dlopt.core.numerics.StateWriter` (stochastic or nearest rounding into narrow dtypes);
* the dtype each update comes back in: the parameter's, read from ``params`` or, without
  them, from a moment kept in the parameters' dtypes (`dlopt.core.numerics.out_dtypes`);
* the lifting of ``leaf_fn`` over the tree with `dlopt.core.tree.map_unzip`, each leaf told its
  position (which seeds its rounding) and its output dtype.

``leaf_fn(g, *moments, *inputs, leaf, out_dtype, *, writer, **step_kwargs)`` returns
``(update, *new_moments, *extras)``: the update in ``out_dtype``, each new moment already
stored with ``writer.put``, and optional per-leaf extras (e.g. partial sums) that
``extra_update`` reduces into scalar state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation

Init = Callable[[chex.ArrayTree, Any], chex.ArrayTree]


class Moment(NamedTuple):
    """One per-parameter state buffer of a rule.

    ``dtype``: its storage dtype (None: each parameter's). ``init(params, dtype)``: its
    starting tree (None: zeros, `dlopt.core.tree.moments_like`). ``like_params``: whether,
    with ``dtype=None``, each leaf is one array in its parameter's dtype, so it can tell the
    update's dtype when ``update`` gets no params (False for per-leaf scalars or lists).
    """

    dtype: Any | None = None
    init: Init | None = None
    like_params: bool = True


def filled(value: chex.Numeric) -> Init:
    """A `Moment` init: every element starts at ``value`` (`dlopt.core.tree.full_like`)."""
    return lambda params, dtype: tree_lib.full_like(params, value, dtype)


# the optimizer argument that sets a state field's storage dtype, for error messages
_DTYPE_ARGS = {
    **dict.fromkeys(
        ("mu", "m", "exp_avg", "grad_sum", "previous_gradient", "ax", "clipped_linear"),
        "mu_dtype",
    ),
    **dict.fromkeys(
        ("nu", "n", "exp_avg_sq", "nu_max", "e_g", "e_x", "accumulator", "sum_of_squares"),
        "nu_dtype",
    ),
    "trace": "accumulator_dtype",
    "preconditioners": "factor_dtype",
    "eigenbases": "factor_dtype",
}


def _dtype_arg(field: str) -> str:
    """How a message names the argument behind state field ``field``'s storage dtype."""
    arg = _DTYPE_ARGS.get(field)
    return arg or f"the storage dtype of state field {field!r} (its *_dtype argument)"


def _check_state(state: Any, state_cls: Any, fields: tuple[str, ...]) -> None:
    """A ``TypeError`` naming ``state_cls`` when ``state`` lacks one of its ``fields`` (the
    state of another transform was passed); any object with the fields passes (optax's)."""
    missing = [name for name in fields if not hasattr(state, name)]
    if missing:
        raise TypeError(
            f"expected a {state_cls.__name__} as this transform's state, got a "
            f"{type(state).__name__} (no field {missing[0]!r}). Pass the state that this "
            "transform's own init(params) returned."
        )


def check_moment_hyperparameters(
    b1: chex.Numeric, b2: chex.Numeric, eps: chex.Numeric, eps_root: chex.Numeric = 0.0
) -> None:
    """The Adam-family checks: ``b1``, ``b2`` in [0, 1); ``eps``, ``eps_root`` >= 0."""
    numerics.check_betas(b1, b2)
    validation.check_non_negative("eps", eps)
    validation.check_non_negative("eps_root", eps_root)


def lift(
    leaf_fn: Callable[..., tuple],
    updates: chex.ArrayTree,
    trees: tuple[chex.ArrayTree, ...],
    *,
    count: chex.Array,
    rounding: str,
    params: chex.ArrayTree | None,
    like: chex.ArrayTree | None = None,
    **kwargs: Any,
) -> tuple:
    """``leaf_fn(g, *tree_leaves, leaf, out_dtype, writer=..., **kwargs)`` mapped over the
    leaves of ``updates``; a tuple of trees shaped like ``updates`` (empty for no leaves).

    ``writer`` stores state at step ``count`` with ``rounding``; ``out_dtype`` is the
    parameter's dtype (from ``params``, else ``like``, else the gradient's)."""
    writer = numerics.StateWriter(count, rounding)
    return tree_lib.map_unzip(
        functools.partial(leaf_fn, writer=writer, **kwargs),
        updates,
        *trees,
        numerics.leaf_indices(updates),
        numerics.out_dtypes(updates, params, like),
    )


def moment_rule(
    state_cls: Callable[..., Any],
    leaf_fn: Callable[..., tuple],
    *,
    moments: Mapping[str, Any],
    rounding: str,
    count: str = "count",
    needs_params: str | None = None,
    inputs: Callable[[Any, Any, Any], tuple] | None = None,
    step: Callable[[Any, chex.Array, Any], dict] | None = None,
    extra_init: Callable[[chex.ArrayTree], dict] | None = None,
    extra_update: Callable[[Any, chex.Array, dict, tuple], dict] | None = None,
) -> GradientTransformation:
    """A `GradientTransformation` from a per-leaf rule and its state NamedTuple.

    Args:
        state_cls: the state NamedTuple; built by field name, so field order is free.
        leaf_fn: the update for one parameter (see the module docstring).
        moments: state field -> storage dtype (or None: the parameter's) or a `Moment`, in
            the order ``leaf_fn`` takes them. Dtypes are canonicalized (float64 -> float32
            without x64); a non-floating one raises naming the field's ``*_dtype`` argument.
        rounding: ``"stochastic"`` or ``"nearest"`` (validated here).
        count: the state field holding the int32 step; a state saved with None there
            (optional in optax's state) counts from zero.
        needs_params: the rule's name if ``update`` requires params (then checked to match
            the updates); None if it does not.
        inputs: ``(updates, state, params) -> trees`` passed to ``leaf_fn`` after the
            moments, leaf by leaf (e.g. ``(params,)``).
        step: ``(state, count, params) -> kwargs`` for ``leaf_fn`` at this step, from the
            old state and the new ``count`` (schedules, rectification terms, flags).
        extra_init: ``params -> fields`` for scalar state beyond count and moments.
        extra_update: ``(state, count, step_kwargs, extras) -> fields`` updating that scalar
            state from the per-leaf extras; fields it does not return are kept.

    Returns:
        A `GradientTransformation` whose ``update`` returns each update in its parameter's
        dtype and ``state_cls`` with the new count, moments and extra fields.

    Example:
        >>> from typing import Any, NamedTuple
        >>> import jax.numpy as jnp
        >>> from dlopt.core import rule
        >>> class TraceState(NamedTuple):
        ...     count: Any
        ...     mu: Any
        >>> def trace_leaf(g, mu, leaf, out_dtype, *, writer):
        ...     mu = writer.put(0.9 * mu + g, mu, leaf, 1)
        ...     return mu.astype(out_dtype), mu
        >>> tx = rule.moment_rule(TraceState, trace_leaf, moments={"mu": None}, rounding="nearest")
        >>> updates, state = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
        >>> updates["w"], state.count
        (Array([1., 1.], dtype=float32), Array(1, dtype=int32))
    """
    numerics.check_rounding(rounding)
    specs = {
        name: (spec if isinstance(spec, Moment) else Moment(spec)) for name, spec in moments.items()
    }
    specs = {
        name: s._replace(dtype=validation.check_storage_dtype(_dtype_arg(name), s.dtype))
        for name, s in specs.items()
    }
    # a moment kept in the parameters' dtypes tells the update's dtype when params are absent
    like = next((n for n, s in specs.items() if s.dtype is None and s.like_params), None)

    def init_fn(params):
        tree_lib.check_float_params(params)
        fields = {count: jnp.zeros([], jnp.int32)}
        for name, spec in specs.items():
            make = spec.init or tree_lib.moments_like
            fields[name] = make(params, spec.dtype)
        if extra_init is not None:
            fields.update(extra_init(params))
        return state_cls(**fields)

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        _check_state(state, state_cls, (count, *specs))
        if needs_params is not None:
            if params is None:
                raise ValueError(
                    f"{needs_params} needs params: call update(updates, state, params)."
                )
            tree_lib.check_matching_trees(params, updates, "params", "updates")
        old = getattr(state, count)
        new_count = tree_lib.safe_increment(jnp.zeros([], jnp.int32) if old is None else old)
        kwargs = {} if step is None else step(state, new_count, params)
        olds = tuple(getattr(state, name) for name in specs)
        extra_trees = () if inputs is None else tuple(inputs(updates, state, params))
        out = lift(
            leaf_fn, updates, olds + extra_trees, count=new_count, rounding=rounding,
            params=params, like=None if like is None else getattr(state, like), **kwargs,
        ) or (updates, *olds)  # fmt: skip
        fields = {count: new_count, **dict(zip(specs, out[1 : 1 + len(specs)], strict=True))}
        if extra_update is not None:
            fields.update(extra_update(state, new_count, kwargs, out[1 + len(specs) :]))
        return out[0], state_cls(**{**state._asdict(), **fields})

    return GradientTransformation(init_fn, update_fn)
