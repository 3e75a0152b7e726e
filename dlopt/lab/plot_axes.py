"""Axis touches that keep a figure readable at a glance: whole-number epoch ticks, plain
decimal labels on a log axis that spans less than a decade.

Matplotlib's defaults fail on short or narrow data: two epochs get ticks at 0.2, 0.4, ...,
and a log axis from 1.5 to 2.4 is labelled by its minor ticks in scientific notation
("2.4x10^0"). These helpers fix each axis after the data is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, NullLocator


def _plain(value: float, _pos: Any = None) -> str:
    return f"{value:g}"


def epoch_ticks(ax: Any) -> None:
    """Whole-number ticks on the x axis (epochs), however few the epochs."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def readable_log_axis(ax: Any, values: Iterable[Any], *, axis: str = "y") -> None:
    """Plain labels on a log axis: under a decade, 3-6 evenly spaced decimal ticks.

    A log axis over ``values`` (the finite positive ones decide) that spans less than a
    factor of 10 gets decimal major ticks (``1.6, 1.8, ..., 2.4``) and no labelled minor
    ticks; a wider one keeps the decades, labelled ``0.01``, ``0.1``, ``1`` rather than as
    powers of ten.

    Args:
        ax: the axes, already on a log scale for ``axis``.
        values: the data drawn on that axis (any nesting of sequences).
        axis: ``"x"`` or ``"y"``.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis=}.")
    target = ax.yaxis if axis == "y" else ax.xaxis
    flat = [np.ravel(np.asarray(v, float)) for v in values]
    data = np.concatenate(flat) if flat else np.empty(0)
    data = data[np.isfinite(data) & (data > 0)]
    if data.size and math.log10(data.max() / data.min()) < 1:
        target.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
        target.set_minor_locator(NullLocator())
    target.set_major_formatter(FuncFormatter(_plain))
    target.set_minor_formatter(NullFormatter())
