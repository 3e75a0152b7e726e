"""The `per_leaf` marker: a transform that reads leaf shapes runs leaf by leaf in the flat layout.

Elementwise rules (``u = f(g, state)`` per element) and whole-tree reductions give the same
numbers over flat `dlopt.core.flat.Buffers` as over the params tree. A transform that looks
at one leaf at a time — its shape (Muon, SOAP, Adafactor's factored moments), its own norm
(block-wise clipping, trust ratios) or its own random key — does not. Its factory carries
this marker: given `Buffers`, the transform sees the params tree (slices of the buffers,
free under ``jit``), runs as written, and its updates are packed back; its state keeps the
tree's shapes. On a pytree it is the transform itself.

A transform of your own: elementwise works in both layouts as is; one that reads shapes or
treats leaves separately is decorated with ``@dlopt.per_leaf`` (or run with ``flat=False``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)
from dlopt.core.flat import Buffers, active_probe

F = TypeVar("F", bound=Callable[..., GradientTransformation])


def leafwise(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """``tx`` that, given `Buffers`, runs on the params tree they hold (see the module doc)."""
    inner = with_extra_args_support(tx)

    def init_fn(params):
        if isinstance(params, Buffers):
            probe = active_probe()
            if probe is not None:
                probe.per_leaf = True
            return inner.init(params.unflatten())
        return inner.init(tree_lib.as_arrays(params))

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(updates, Buffers):
            updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
            return inner.update(updates, state, params, **extra_args)
        tree_params = params.unflatten() if isinstance(params, Buffers) else params
        new, state = inner.update(updates.unflatten(), state, tree_params, **extra_args)
        return updates.like(new), state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def per_leaf(factory: F) -> F:
    """Marks a transform factory whose transform reads each leaf on its own (shape, norm,
    key): in the flat layout it runs on the params tree (`leafwise`), so it means the same
    in both layouts. Use it as a decorator on the factory.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> @dlopt.per_leaf
        ... def scale_by_leaf_size():
        ...     return dlopt.stateless(lambda u, p: jax.tree.map(lambda x: x / x.size, u))
        >>> tx = scale_by_leaf_size()
    """

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> GradientTransformation:
        return leafwise(factory(*args, **kwargs))

    make.per_leaf = True  # type: ignore[attr-defined]
    return make  # type: ignore[return-value]
