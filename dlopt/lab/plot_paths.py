"""Optimizer paths over the contours of a 2-D function: one panel or a grid of problems.

Each optimizer keeps one colour (its place in a list of names) in every panel and in an
animation's frames; a path starts at a black square and ends at a large dot edged in black;
earlier paths are drawn wider, so a path that runs over another leaves it visible at the
edges. Like `dlopt.lab.plots`, everything builds a `matplotlib.figure.Figure` without pyplot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dlopt.lab.plots import save

START = {"marker": "s", "color": "k", "ms": 7}
END = {"marker": "o", "ms": 7, "markeredgecolor": "k", "markeredgewidth": 0.8}
MINIMUM = {"marker": "*", "color": "r", "ms": 13, "markeredgecolor": "k", "markeredgewidth": 0.5}


def path_colors(names: Sequence[str], every: Sequence[str]) -> list[str]:
    """The colour of each of ``names``: ``C{k}`` for its place ``k`` in ``every``, so that a
    panel, a figure or an animation showing a subset keeps each optimizer's colour."""
    missing = [n for n in names if n not in every]
    if missing:
        raise ValueError(f"names must all be in every, got {missing} not in {list(every)}.")
    return [f"C{list(every).index(n) % 10}" for n in names]


def legend_handles(
    names: Sequence[str], colors: Sequence[str], *, minimum: bool = True
) -> tuple[list[Line2D], list[str]]:
    """Handles and labels for a legend of the paths and the start / end / minimum markers."""
    handles = [Line2D([], [], color=c, lw=2) for c in colors]
    handles += [
        Line2D([], [], ls="", **START),
        Line2D([], [], ls="", color="0.6", **END),
    ]
    labels = [*names, "start", "end of path"]
    if minimum:
        handles.append(Line2D([], [], ls="", **MINIMUM))
        labels.append("minimum")
    return handles, labels


def draw_trajectories(
    ax: Any,
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    paths: Mapping[str, np.ndarray],
    *,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    minimum: tuple[float, float] | None = None,
    log_levels: bool = True,
    title: str | None = None,
    colors: Sequence[str] | None = None,
) -> None:
    """Draws the contours of ``fn(x, y)`` and each optimizer's ``(T, 2)`` path on ``ax``.

    Path ``i`` is drawn in ``colors[i]`` (default ``C{i}``), labelled with its name, and
    wider the earlier it comes (3 points down to 1.2); then its end dot. The start (of the
    first path) and the ``minimum`` follow; the axes are labelled x and y.
    """
    xs, ys = np.linspace(*xlim, 200), np.linspace(*ylim, 200)
    grid_x, grid_y = np.meshgrid(xs, ys)
    z = np.asarray(fn(grid_x, grid_y), float)
    if log_levels:
        shifted = z - z.min() + 1e-3
        levels = np.geomspace(shifted.min(), shifted.max(), 25)
        ax.contour(grid_x, grid_y, shifted, levels=levels, colors="0.75", linewidths=0.5)
    else:
        ax.contour(grid_x, grid_y, z, levels=25, colors="0.75", linewidths=0.5)
    widths = np.linspace(3.0, 1.2, len(paths)) if len(paths) > 1 else [1.5]
    for i, (name, path) in enumerate(paths.items()):
        p = np.asarray(path, float)
        color = colors[i] if colors is not None else f"C{i % 10}"
        ax.plot(p[:, 0], p[:, 1], "-", color=color, lw=widths[i], label=name,
                alpha=0.9, zorder=2)  # fmt: skip
        ax.plot(p[-1:, 0], p[-1:, 1], ls="", color=color, zorder=4, **END)
    first = np.asarray(next(iter(paths.values())), float)
    ax.plot(first[:1, 0], first[:1, 1], ls="", zorder=5, **START)
    if minimum is not None:
        ax.plot([minimum[0]], [minimum[1]], ls="", zorder=3, **MINIMUM)  # under the ends
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("x", fontsize=9)
    ax.set_ylabel("y", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)


def plot_trajectories(
    problems: Mapping[str, Mapping[str, Any]],
    *,
    ncols: int = 2,
    path: str | os.PathLike | None = None,
) -> Figure:
    """One panel per problem: contours plus every optimizer's path (see `draw_trajectories`).

    An optimizer keeps its colour in every panel (by its first appearance), and one legend
    below the panels names them all, with the start (black square), each path's end (dot)
    and, when some panel marks one, the minimum (red star).

    Args:
        problems: ``title -> {"fn", "paths", "xlim", "ylim", optional "minimum", "log_levels"}``.
        ncols: panels per row.
        path: where to save the PNG.

    Returns:
        The figure; ``fig.legends[0]`` is the shared legend.

    Example:
        >>> import numpy as np
        >>> from dlopt.lab.plot_paths import plot_trajectories
        >>> walk = np.array([[-1.0, 1.0], [0.0, 0.0]])
        >>> fig = plot_trajectories({"bowl": {"fn": lambda x, y: x**2 + y**2,
        ...     "paths": {"sgd": walk}, "xlim": (-2, 2), "ylim": (-2, 2)}})
        >>> [t.get_text() for t in fig.legends[0].get_texts()]
        ['sgd', 'start', 'end of path']
    """
    names = list(dict.fromkeys(n for spec in problems.values() for n in spec["paths"]))
    nrows = math.ceil(len(problems) / ncols)
    fig = Figure(figsize=(5.2 * ncols, 4.3 * nrows + 0.6))
    for k, (title, spec) in enumerate(problems.items()):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        paths = spec["paths"]
        drawn = [n for n in names if n in paths]
        draw_trajectories(
            ax,
            title=title,
            **{**spec, "paths": {n: paths[n] for n in drawn}},
            colors=path_colors(drawn, names),
        )
    any_minimum = any(spec.get("minimum") is not None for spec in problems.values())
    handles, labels = legend_handles(names, path_colors(names, names), minimum=any_minimum)
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10), fontsize=9,
               frameon=False)  # fmt: skip
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    return save(fig, path)
