"""The callbacks' part of a saved run: collecting, encoding and loading their ``state_dict``s.

A callback's ``state_dict()`` is a dict of JSON values (numbers, strings, None, bools, lists,
dicts with string keys) and arrays (jax or numpy). `encode` splits the states of a run's
callbacks into a JSON tree, where each array is a ``{"__array__": key}`` placeholder, and a flat
``{key: array}`` dict; `decode` puts them back. States are keyed by the callback's position
and class (``"2:EarlyStopping"``), so a run is resumed with the same callbacks in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

ARRAY = "__array__"


def key(index: int, callback: Any) -> str:
    """``"<index>:<class name>"``, the name a callback's state is saved under."""
    return f"{index}:{type(callback).__name__}"


def collect(callbacks: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """``{key: callback.state_dict()}`` for the callbacks that have a ``state_dict``."""
    return {
        key(i, cb): dict(cb.state_dict())
        for i, cb in enumerate(callbacks)
        if callable(getattr(cb, "state_dict", None))
    }


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic)


def encode(states: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(json_tree, arrays)``: ``states`` with every array replaced by a placeholder."""
    arrays: dict[str, Any] = {}

    def walk(x: Any, where: str) -> Any:
        if _is_array(x):
            name = f"{len(arrays):06d}"
            arrays[name] = x
            return {ARRAY: name}
        if isinstance(x, Mapping):
            if not all(isinstance(k, str) for k in x):
                raise TypeError(f"state_dict keys must be strings, got {list(x)} at {where}.")
            return {k: walk(v, f"{where}/{k}") for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise TypeError(
            f"state_dict values must be JSON values or arrays, got {type(x).__name__} at "
            f"{where}. Flatten pytrees to lists of arrays (jax.tree.leaves)."
        )

    return {k: walk(v, k) for k, v in states.items()}, arrays


def decode(tree: Mapping[str, Any], arrays: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `encode` (arrays come back as numpy arrays)."""

    def walk(x: Any) -> Any:
        if isinstance(x, Mapping):
            if set(x) == {ARRAY}:
                return np.asarray(arrays[x[ARRAY]])
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return {k: walk(v) for k, v in tree.items()}


def load(callbacks: Sequence[Any], states: Mapping[str, Any], where: str) -> None:
    """Gives each callback with a ``load_state_dict`` its saved state.

    Raises:
        ValueError: the saved run had other callbacks (names the first difference).
    """
    wanted = {
        key(i, cb): cb
        for i, cb in enumerate(callbacks)
        if callable(getattr(cb, "load_state_dict", None))
    }
    missing = [k for k in wanted if k not in states]
    extra = [k for k in states if k not in wanted]
    if missing or extra:
        detail = (
            f"no saved state for callback {missing[0]}"
            if missing
            else f"a saved state for callback {extra[0]} that this run lacks"
        )
        raise ValueError(
            f"{where} holds the state of the callbacks {sorted(states)}, this run has "
            f"{sorted(wanted)}: {detail}. Pass the same callbacks, in the same order, as the "
            "run that saved it."
        )
    for k, cb in wanted.items():
        cb.load_state_dict(states[k])
