"""Interleaved timing: contenders take turns (A B C A B C ...), medians and per-round ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


class Runner:
    """One contender: a jitted ``step(carry, *args) -> carry`` and its carried state.

    ``call()`` runs one step, blocks until the result is ready and returns the seconds it took.
    The carry is donated by ``step`` (it is replaced by the result each call).
    """

    def __init__(self, step: Callable[..., Any], carry: Any, *args: Any):
        self.step, self.carry, self.args = step, carry, args
        self.first_call_s: float | None = None

    def call(self) -> float:
        start = time.perf_counter()
        self.carry = self.step(self.carry, *self.args)
        jax.block_until_ready(self.carry)
        elapsed = time.perf_counter() - start
        if self.first_call_s is None:
            self.first_call_s = elapsed  # trace + compile + one run
        return elapsed


def interleaved(
    runners: dict[str, Runner], *, reps: int, warmup: int = 3, baseline: str | None = None
) -> dict[str, dict[str, float]]:
    """Times ``runners`` round-robin; returns per contender the median time and ratios.

    Args:
        runners: name -> `Runner`; the first is the baseline unless ``baseline`` is given.
        reps: timed rounds (each contender is called once per round).
        warmup: untimed rounds after the first (compiling) call.
        baseline: the contender the ratios are taken against.

    Returns:
        ``{name: {"median_s", "min_s", "ratio", "compile_s", "reps"}}`` where ``ratio`` is the
        median over rounds of ``t(name) / t(baseline)`` in the same round (lower is faster).
    """
    names = list(runners)
    baseline = baseline or names[0]
    for name in names:  # the first call compiles; keep it apart from the timed calls
        runners[name].call()
    for _ in range(warmup):
        for name in names:
            runners[name].call()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]  # alternate who goes first
        for name in order:
            times[name].append(runners[name].call())
    result = {}
    for name in names:
        ratios = [t / b for t, b in zip(times[name], times[baseline], strict=True)]
        result[name] = {
            "median_s": statistics.median(times[name]),
            "min_s": min(times[name]),
            "ratio": statistics.median(ratios),
            "compile_s": runners[name].first_call_s,
            "reps": reps,
        }
    return result
