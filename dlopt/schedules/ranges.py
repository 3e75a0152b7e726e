"""The range a schedule's values lie in, known from its parameters when it is built.

A dlopt schedule is still a plain callable ``step -> value`` (optax's contract); it also
carries ``value_range = (low, high)``, the smallest and largest value it takes over all
steps (``-inf``/``inf`` where it is unbounded). A schedule may take any sign (it may drive
momentum, a penalty or a temperature); where a learning rate must be >= 0,
`dlopt.core.validation.check_learning_rate` reads ``value_range`` at construction, so
``adam(cosine_decay_schedule(-0.1, 100))`` is refused before any step. A callable without
``value_range`` (your own function, a ``jax.jit``-ed schedule) cannot be checked: its sign
is the caller's responsibility.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

Range = tuple[float, float]


def _float(value: Any) -> float | None:
    """``value`` as a Python float, or None when it is not concrete (traced, an array)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value) if np.size(value) == 1 else None
    except (TypeError, ValueError):
        return None


def of(schedule: Any) -> Range | None:
    """``schedule.value_range`` when it has one, else None (unknown)."""
    value_range = getattr(schedule, "value_range", None)
    return None if value_range is None else (float(value_range[0]), float(value_range[1]))


def spanning(values: Iterable[Any]) -> Range | None:
    """The range from the smallest to the largest of ``values`` (None if one is unknown)."""
    floats = [_float(v) for v in values]
    if not floats or any(v is None for v in floats):
        return None
    return min(floats), max(floats)


def union(ranges: Iterable[Range | None]) -> Range | None:
    """The smallest range covering all ``ranges`` (None if one is unknown)."""
    ranges = list(ranges)
    if not ranges or any(r is None for r in ranges):
        return None
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def geometric(init: Any, rate: Any, end: Any = None) -> Range | None:
    """The range of ``init * rate**p`` over real ``p >= 0`` (staircase or not), clipped at
    ``end`` as `dlopt.exponential_decay` clips: ``max(v, end)`` for ``rate < 1``, else
    ``min(v, end)``."""
    i, r = _float(init), _float(rate)
    if i is None or r is None:
        return None
    if abs(r) <= 1:  # shrinks towards 0 (alternating in sign for a negative rate)
        low, high = (min(i, 0.0), max(i, 0.0)) if r >= 0 else (-abs(i), abs(i))
    elif i == 0:
        low, high = 0.0, 0.0
    else:  # grows without bound
        low, high = (i, math.inf) if i > 0 else (-math.inf, i)
        if r < 0:
            low, high = -math.inf, math.inf
    if end is not None:
        e = _float(end)
        if e is None:
            return None
        clip = max if r < 1 else min
        low, high = clip(low, e), clip(high, e)
    return low, high


def with_range(schedule: Callable, value_range: Range | None) -> Callable:
    """``schedule`` with ``value_range`` set (when known); returns it."""
    if value_range is not None:
        schedule.value_range = value_range  # type: ignore[attr-defined]
    return schedule
