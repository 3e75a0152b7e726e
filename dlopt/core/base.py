"""The contract: a gradient transformation is a pair of pure functions.

``init(params) -> state`` builds the optimizer state; ``update(updates, state, params=None,
**extra_args) -> (updates, state)`` turns gradients into updates. Both are pure, so they jit,
vmap, pmap and scan. The NamedTuples here are duck-compatible with optax's in both directions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import chex
import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib

Params = chex.ArrayTree
Updates = chex.ArrayTree
OptState = chex.ArrayTree
Numeric = chex.Numeric
Schedule = Callable[[jax.typing.ArrayLike], jax.typing.ArrayLike]
# equal (==) to optax's ScalarOrSchedule, so an annotation check written for optax accepts it
ScalarOrSchedule = float | jax.Array | Schedule


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule with state (optax's protocol): ``init() -> state``, ``update(state,
    **extra_args) -> state`` and ``__call__(state, **extra_args) -> value``; e.g. a learning
    rate driven by the loss passed as ``value=``. `dlopt.inject_hyperparams` accepts it."""

    def init(self) -> Any: ...

    def update(self, state: Any, **extra_args: Any) -> Any: ...

    def __call__(self, state: Any, **extra_args: Any) -> chex.Numeric: ...


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class TransformUpdateExtraArgsFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """``init(params) -> state`` and ``update(updates, state, params=None) -> (updates, state)``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.sgd(0.1)
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones(3)}, state, params)
        >>> dlopt.apply_updates(params, updates)["w"]
        Array([0.9, 0.9, 0.9], dtype=float32)
    """

    init: TransformInitFn
    update: TransformUpdateFn


class GradientTransformationExtraArgs(GradientTransformation):
    """A transform whose ``update`` also takes keyword arguments such as ``value=``.

    ``update(updates, state, params=None, **extra_args) -> (updates, state)``. `chain`
    forwards extra arguments only to the transforms whose ``update`` accepts them.
    """


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


def init_empty_state(params: Params) -> EmptyState:
    """The ``init`` of a stateless transform: ignores ``params``, returns `EmptyState`.

    Example:
        >>> import dlopt
        >>> dlopt.init_empty_state({"w": 1.0})
        EmptyState()
    """
    del params
    return EmptyState()


def identity() -> GradientTransformation:
    """The transform that returns the updates unchanged: ``u <- u``."""

    def update_fn(updates, state, params=None):
        del params
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)


def set_to_zero() -> GradientTransformation:
    """The transform that maps every update to zero: ``u <- 0`` (freezes what it sees).

    Put it in a `partition` or `masked` group to keep those parameters fixed while the
    others train; under ``jit`` the frozen group's gradient computations are dropped.

    Returns:
        A stateless transform (state `EmptyState`), as ``optax.set_to_zero``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> params = {"backbone": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
        >>> tx = dlopt.partition(
        ...     {"frozen": dlopt.set_to_zero(), "train": dlopt.sgd(0.1)},
        ...     dlopt.path_labels(params, {"^backbone/": "frozen"}, default="train"),
        ... )
        >>> updates, _ = tx.update(params, tx.init(params), params)
        >>> updates["backbone"]["w"], updates["head"]["w"]
        (Array([0., 0.], dtype=float32), Array([-0.1, -0.1], dtype=float32))
    """

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(jnp.zeros_like, updates), state

    return GradientTransformation(init_empty_state, update_fn)


def stateless(
    f: Callable[[Updates, Params | None], Updates],
) -> GradientTransformation:
    """Lifts ``f(updates, params) -> updates`` to a transform with no state.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> halve = dlopt.stateless(lambda u, p: jax.tree.map(lambda x: x / 2, u))
        >>> halve.update({"w": jnp.ones(2)}, halve.init(None))[0]["w"]
        Array([0.5, 0.5], dtype=float32)
    """

    def update_fn(updates, state, params=None):
        del state
        return f(updates, params), EmptyState()

    return GradientTransformation(init_empty_state, update_fn)


def stateless_with_tree_map(
    f: Callable[[chex.Array, chex.Array | None], chex.Array],
) -> GradientTransformation:
    """Lifts a per-leaf ``f(update, param) -> update`` to a transform with no state.

    ``u_i <- f(u_i, p_i)`` for every leaf ``i``; without params, ``f(u_i, None)``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.stateless_with_tree_map(lambda u, p: -0.1 * u)
        >>> tx.update({"w": jnp.ones(2)}, tx.init(None))[0]["w"]
        Array([-0.1, -0.1], dtype=float32)
    """

    def update_fn(updates, state, params=None):
        del state
        if params is not None:
            return jax.tree.map(f, updates, params), EmptyState()
        return jax.tree.map(lambda u: f(u, None), updates), EmptyState()

    return GradientTransformation(init_empty_state, update_fn)


def apply_updates(params: Params, updates: Updates) -> Params:
    """``p <- p + u`` leaf by leaf, keeping each parameter's dtype.

    The update is cast to the parameter's dtype before the add, so bf16 parameters stay bf16
    and the sum is clean under ``jax_numpy_dtype_promotion="strict"``. ``None`` leaves pass
    through (``apply_updates(None, u)`` is None, as in optax). Mismatched trees raise a
    ``ValueError`` naming the first differing path.
    """
    if params is None:
        return None
    tree_lib.check_matching_trees(params, updates, "params", "updates")
    return jax.tree.map(
        lambda p, u: p + jnp.asarray(u).astype(jnp.asarray(p).dtype), params, updates
    )


def takes_extra_args(tx: Any) -> bool:
    """Whether ``tx.update`` takes extra keyword arguments, by the explicit marker: ``tx`` is
    a `GradientTransformationExtraArgs` (dlopt's, or optax's class of that name).

    The update function's signature is not inspected: a plain `GradientTransformation`
    gets no extra arguments, whatever its ``update`` accepts (optax's rule too).
    """
    return any(cls.__name__ == "GradientTransformationExtraArgs" for cls in type(tx).__mro__)


def with_extra_args_support(tx: GradientTransformation | Any) -> GradientTransformationExtraArgs:
    """``tx`` as a `GradientTransformationExtraArgs`: one marked as taking extra keyword
    arguments (`takes_extra_args`) keeps its ``update``; any other gets an ``update`` that
    accepts and drops them.
    """
    if takes_extra_args(tx):
        return (
            tx
            if isinstance(tx, GradientTransformationExtraArgs)
            else (GradientTransformationExtraArgs(tx.init, tx.update))
        )

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update)
