"""Eager checks shared by the losses: one-line errors naming the argument and the fix.

Only what is known before tracing is checked (dtypes, ranks, shapes, Python-number
hyperparameters); values inside arrays are the caller's business, since a loss runs under jit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def shape_of(x: Any) -> tuple[int, ...]:
    """The static shape of an array or of anything numpy can turn into one."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _check_kind(name: str, x: Any, kind: Any, fix: str) -> None:
    dtype = jax.dtypes.result_type(x)
    if not jnp.issubdtype(dtype, kind):
        raise TypeError(
            f"Expected the input to have a dtype that is a subdtype of {kind.__name__}, got "
            f"{dtype} instead for {name}; {fix}."
        )


def check_floating(name: str, x: Any) -> None:
    """``x`` has a floating dtype (a ``TypeError`` like optax's otherwise)."""
    _check_kind(name, x, jnp.floating, f"cast it, e.g. {name}.astype(jnp.float32)")


def check_integer(name: str, x: Any) -> None:
    """``x`` has an integer dtype (class indices)."""
    fix = "pass class indices as integers, e.g. jnp.argmax(one_hot, -1)"
    _check_kind(name, x, jnp.integer, fix)


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """``a`` and ``b`` have exactly the same shape (no implicit broadcasting)."""
    if shape_of(a) != shape_of(b):
        raise ValueError(
            f"Shape mismatch: got {shape_of(a)} and {shape_of(b)} ({name_a} and {name_b}); "
            f"pass {name_b} with the shape of {name_a}."
        )


def check_rank(name: str, x: Any, rank: int) -> None:
    """``x`` has ``rank`` dimensions."""
    got = len(shape_of(x))
    if got != rank:
        raise ValueError(
            f"Expected the input to have rank {rank}, got {got} instead for {name} "
            f"(shape {shape_of(x)})."
        )


def concrete(x: Any) -> bool:
    """``x`` holds values now (not a tracer under jit/vmap/grad), so it can be checked eagerly."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))
