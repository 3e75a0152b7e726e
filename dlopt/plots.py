"""Matplotlib figures: training curves, schedules, LR range tests, optimizer paths, activations.

Every function builds a `matplotlib.figure.Figure` without pyplot (no GUI backend, no global
state), saves it to ``path`` when given (PNG by the extension, parent folders created) and
returns it, so tests and notebooks can inspect the drawn data. Importing this module imports
matplotlib; ``import dlopt`` does not.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def save(fig: Figure, path: str | os.PathLike | None, *, dpi: int = 90) -> Figure:
    """Writes ``fig`` to ``path`` (creating its folder) when ``path`` is given; returns ``fig``.

    PNGs are stored with a 256-colour palette (small files for docs and repositories).
    """
    if path is not None:
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        if os.fspath(path).lower().endswith(".png"):
            _to_palette(path)
    return fig


def _to_palette(path: str | os.PathLike) -> None:
    """Rewrites a PNG with a 256-colour palette: a few times smaller, the same to the eye."""
    from PIL import Image  # pillow is a matplotlib dependency

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)


def _history_dict(history: Any) -> dict[str, list[float]]:
    if hasattr(history, "history"):
        history = history.history
    return {str(k): [float(x) for x in v] for k, v in history.items()}


def plot_curves(
    histories: Mapping[str, Any],
    *,
    keys: Sequence[str] = ("loss", "val_loss"),
    ylabel: str = "loss",
    title: str | None = None,
    logy: bool = False,
    mark_best: str | None = None,
    legend_loc: str = "best",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Per-epoch curves of several runs on one axis: one colour per run, one line style per key.

    Args:
        histories: ``run name -> History`` (or a dict ``name -> per-epoch list``).
        keys: the logged names to draw; the first solid, the next dashed, dotted, ...
        ylabel, title: axis label and title.
        logy: a logarithmic y axis.
        mark_best: a key whose minimum (or maximum, for names with "acc") gets a dot per run.
        legend_loc: matplotlib's legend location, or ``"outside"`` (right of the axes).
        path: where to save the PNG.

    Returns:
        The figure; line ``i * len(keys) + j`` is run ``i``, key ``j`` (runs lacking a key skip it).

    Example:
        >>> fig = plot_curves({"sgd": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}})
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    colors = [f"C{i % 10}" for i in range(len(histories))]
    for (name, history), color in zip(histories.items(), colors, strict=True):
        h = _history_dict(history)
        for j, key in enumerate(keys):
            if key not in h:
                continue
            label = name if j == 0 else f"{name} ({key})" if len(histories) == 1 else None
            ax.plot(range(len(h[key])), h[key], styles[j % 4], color=color, label=label)
        if mark_best in h and any(math.isfinite(x) for x in h[mark_best]):
            values = np.asarray(h[mark_best], float)
            best = np.nanargmax(values) if "acc" in mark_best else np.nanargmin(values)
            ax.plot([best], [values[best]], "o", color=color, markersize=5)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    legend_title = " / ".join(
        f"{k} {s}" for k, s in zip(keys[:3], ["solid", "dashed", "dotted"], strict=False)
    )
    where = {"loc": legend_loc, "ncol": 2}
    if legend_loc == "outside":
        where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "ncol": 1}
    ax.legend(fontsize=7, title=legend_title, title_fontsize=7, **where)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return save(fig, path)


def plot_bars(
    values: Mapping[str, float],
    *,
    ylabel: str = "",
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A labelled bar per entry (e.g. test accuracy per optimizer), the value written on top."""
    fig = Figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    names, heights = list(values), [float(v) for v in values.values()]
    bars = ax.bar(names, heights, color=[f"C{i % 10}" for i in range(len(names))])
    ax.bar_label(bars, labels=[f"{h:.3f}" for h in heights], fontsize=7)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if title:
        ax.set_title(title)
    return save(fig, path)


def plot_schedules(
    schedules: Mapping[str, Callable[[Any], Any] | Sequence[float]],
    *,
    num_steps: int | None = None,
    logy: bool = False,
    title: str | None = "learning-rate schedules",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Learning rate against step for each schedule (a ``step -> value`` function or values).

    Args:
        schedules: ``name -> schedule`` or ``name -> per-step values`` (e.g. a plateau trace).
        num_steps: steps to evaluate the functions on (required when any entry is callable).
        logy: a logarithmic y axis.
        title: the title.
        path: where to save the PNG.

    Returns:
        The figure, one line per schedule in order.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for name, schedule in schedules.items():
        if callable(schedule):
            if num_steps is None:
                raise ValueError(f"num_steps is required to draw the schedule {name!r}.")
            values = np.asarray(schedule(np.arange(num_steps)), float)
        else:
            values = np.asarray(schedule, float)
        ax.plot(np.arange(len(values)), values, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if len(schedules) > 1:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return save(fig, path)


def plot_lr_find(
    learning_rates: Sequence[float],
    losses: Sequence[float],
    *,
    suggested_lr: float | None = None,
    raw_losses: Sequence[float] | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """The learning-rate range test: (smoothed) loss against a log learning rate.

    Line 0 is ``losses`` against ``learning_rates``; ``raw_losses`` adds a faint line; a
    suggested learning rate is a vertical marker.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(learning_rates, losses, label="smoothed loss")
    if raw_losses is not None:
        ax.plot(learning_rates, raw_losses, alpha=0.3, label="batch loss")
    if suggested_lr is not None:
        ax.axvline(suggested_lr, color="C3", ls="--", label=f"suggested lr {suggested_lr:.2g}")
    finite = np.asarray(losses, float)
    if raw_losses is not None:
        stop = int(np.isfinite(finite).sum())
        finite = np.concatenate([finite, np.asarray(raw_losses, float)[:stop]])
    finite = finite[np.isfinite(finite)]
    if finite.size:
        low, high = finite.min(), min(finite.max(), abs(finite[0]) * 2 + 1e-12)
        if high > low:
            pad = 0.05 * (high - low)
            ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("learning-rate range test")
    return save(fig, path)


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
) -> None:
    """Draws the contours of ``fn(x, y)`` and each optimizer's ``(T, 2)`` path on ``ax``."""
    xs, ys = np.linspace(*xlim, 200), np.linspace(*ylim, 200)
    grid_x, grid_y = np.meshgrid(xs, ys)
    z = np.asarray(fn(grid_x, grid_y), float)
    if log_levels:
        shifted = z - z.min() + 1e-3
        levels = np.geomspace(shifted.min(), shifted.max(), 25)
        ax.contour(grid_x, grid_y, shifted, levels=levels, colors="0.7", linewidths=0.5)
    else:
        ax.contour(grid_x, grid_y, z, levels=25, colors="0.7", linewidths=0.5)
    for i, (name, path) in enumerate(paths.items()):
        p = np.asarray(path, float)
        ax.plot(p[:, 0], p[:, 1], "-", color=f"C{i % 10}", lw=1.2, label=name)
        ax.plot(p[-1:, 0], p[-1:, 1], "o", color=f"C{i % 10}", ms=3)
    ax.plot([paths[next(iter(paths))][0][0]], [paths[next(iter(paths))][0][1]], "ks", ms=4)
    if minimum is not None:
        ax.plot([minimum[0]], [minimum[1]], "r*", ms=10)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=9)


def plot_trajectories(
    problems: Mapping[str, Mapping[str, Any]],
    *,
    ncols: int = 2,
    path: str | os.PathLike | None = None,
) -> Figure:
    """One panel per problem: contours plus every optimizer's path (see `draw_trajectories`).

    Args:
        problems: ``title -> {"fn", "paths", "xlim", "ylim", optional "minimum", "log_levels"}``.
        ncols: panels per row.
        path: where to save the PNG.

    Returns:
        The figure (legend on the first panel).
    """
    nrows = math.ceil(len(problems) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.8 * nrows))
    for k, (title, spec) in enumerate(problems.items()):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        draw_trajectories(ax, title=title, **spec)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save(fig, path)


def plot_activation_histograms(
    activations: Mapping[str, Sequence[np.ndarray]],
    *,
    bins: int = 30,
    value_range: tuple[float, float] | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A grid of histograms: one row per setting (e.g. "tanh, xavier"), one column per layer.

    Args:
        activations: ``setting -> [layer activations]`` (arrays of any shape).
        bins: histogram bins.
        value_range: one x range for every panel, values outside it counted in the edge
            bins (so shrinking or exploding activations show); default each panel's own.
        path: where to save the PNG.

    Returns:
        The figure; axes in row-major order.
    """
    rows = list(activations)
    ncols = max(len(v) for v in activations.values())
    fig = Figure(figsize=(1.9 * ncols + 1.2, 1.35 * len(rows) + 0.5))
    for r, name in enumerate(rows):
        for c, act in enumerate(activations[name]):
            ax = fig.add_subplot(len(rows), ncols, r * ncols + c + 1)
            a = np.asarray(act, float).ravel()
            if value_range is not None:
                lo, hi = value_range
                a = np.clip(a, lo, hi)
            else:
                lo, hi = float(np.min(a)), float(np.max(a))
            if hi - lo < 1e-6:
                lo, hi = lo - 0.5, hi + 0.5
            ax.hist(a, bins=bins, range=(lo, hi), color=f"C{r % 10}")
            ax.set_yticks([])
            ax.locator_params(axis="x", nbins=3)
            ax.tick_params(labelsize=5)
            if r == 0:
                ax.set_title(f"layer {c + 1}", fontsize=8)
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    return save(fig, path)
