"""Matplotlib figures: training curves (one axis or small multiples), error counts, schedules,
LR range tests, activation histograms (optimizer paths: `dlopt.lab.plot_paths`).

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
from matplotlib.lines import Line2D

from dlopt.lab.plot_axes import epoch_ticks, readable_log_axis


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
        The figure; line ``i * len(keys) + j`` is run ``i``, key ``j`` (runs lacking a key skip
        it), drawn against epochs 1, 2, ... (whole-number ticks). The legend names only
        drawn lines.

    Example:
        >>> from dlopt.lab.plots import plot_curves
        >>> fig = plot_curves({"sgd": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]}})
        >>> [line.get_label() for line in fig.axes[0].lines]
        ['sgd', 'sgd (val_loss)']
        >>> fig.axes[0].lines[0].get_xdata().tolist()  # epochs counted from 1
        [1, 2]
    """
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    styles = ["-", "--", ":", "-."]
    colors = [f"C{i % 10}" for i in range(len(histories))]
    drawn: list[list[float]] = []
    for (name, history), color in zip(histories.items(), colors, strict=True):
        h = _history_dict(history)
        for j, key in enumerate(keys):
            if key not in h:
                continue
            label = name if j == 0 else f"{name} ({key})" if len(histories) == 1 else None
            ax.plot(_epochs(h[key]), h[key], styles[j % 4], color=color, label=label)
            drawn.append(h[key])
        if mark_best in h and any(math.isfinite(x) for x in h[mark_best]):
            values = np.asarray(h[mark_best], float)
            best = np.nanargmax(values) if "acc" in mark_best else np.nanargmin(values)
            ax.plot([best + 1], [values[best]], "o", color=color, markersize=5)
    if logy:
        ax.set_yscale("log")
        readable_log_axis(ax, drawn)
    epoch_ticks(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    used = {k for h in histories.values() for k in _history_dict(h)}
    legend_title = " / ".join(
        f"{k} {s}"
        for k, s in zip(keys[:3], ["solid", "dashed", "dotted"], strict=False)
        if k in used
    )
    where = {"loc": legend_loc, "ncol": 2}
    if legend_loc == "outside":
        where = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "ncol": 1}
    ax.legend(fontsize=7, title=legend_title, title_fontsize=7, **where)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return save(fig, path)


def _epochs(values: Sequence[float]) -> np.ndarray:
    """The x positions of per-epoch values: epochs 1, 2, ..., as in `fit`'s log."""
    return np.arange(1, len(values) + 1)


def _zoom_limits(
    series: Sequence[Sequence[float]], skip: int, logy: bool
) -> tuple[float, float, bool] | None:
    """y limits around the values from epoch ``skip`` on (padded 5%), and whether any
    earlier value falls outside them; None when there is nothing finite to zoom to."""
    later = [np.asarray(v[skip:], float) for v in series]
    later = np.concatenate([v[np.isfinite(v)] for v in later] or [np.empty(0)])
    if logy:
        later = later[later > 0]
    if not later.size:
        return None
    low, high = float(later.min()), float(later.max())
    if logy:
        low, high = math.log10(low), math.log10(high)
    pad = 0.05 * (high - low) if high > low else 0.05 * max(abs(high), 1e-3)
    low, high = low - pad, high + pad
    if logy:
        low, high = 10**low, 10**high
    every = np.concatenate([np.asarray(v, float) for v in series])
    every = every[np.isfinite(every)]
    clipped = bool(np.any((every < low) | (every > high)))
    return low, high, clipped


def plot_curve_panels(
    histories: Mapping[str, Any],
    *,
    keys: Sequence[str] = ("loss", "val_loss"),
    labels: Sequence[str] = ("train", "validation"),
    ylabel: str = "loss",
    title: str | None = None,
    logy: bool = False,
    mark_best: str | None = None,
    zoom: bool = False,
    ncols: int = 3,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Small multiples: one panel per run, shared axes, the same colour for a key everywhere.

    Each panel draws its run's ``keys`` (the first in C0, solid; the second in C1, dashed;
    ...) over the other runs' last key in light grey, so a run is read against the field
    without a legend of nine colours.

    Args:
        histories: ``run name -> History`` (or a dict ``name -> per-epoch list``).
        keys: the logged names to draw in each panel.
        labels: their names in the legend (``"train"``, ``"validation"``).
        ylabel, title: the shared y label and the figure title.
        logy: a logarithmic y axis.
        mark_best: a key whose best epoch (minimum; maximum for names with "acc") gets a dot
            and goes into the panel title.
        zoom: y limits fitted to the values after the first tenth of the epochs, so that
            late differences show; earlier values may leave the axes (a note says so). Runs
            of fewer than 10 epochs are not zoomed.
        ncols: panels per row.
        path: where to save the PNG.

    Returns:
        The figure; panel ``i`` (``fig.axes[i]``) is run ``i``: first the grey context lines
        (one per other run lacking none of the last key), then one line per key, then the
        best-epoch dot, against epochs 1, 2, ... (whole-number ticks). ``fig.legends[0]``
        names only what some panel draws (no grey entry for a single run).

    Example:
        >>> from dlopt.lab.plots import plot_curve_panels
        >>> fig = plot_curve_panels({"sgd": {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]},
        ...                          "adam": {"loss": [0.8, 0.3], "val_loss": [0.9, 0.6]}})
        >>> [ax.get_title() for ax in fig.axes]
        ['sgd', 'adam']
    """
    runs = {name: _history_dict(h) for name, h in histories.items()}
    n = len(runs)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.1 * ncols + 0.4, 2.3 * nrows + 0.8))
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    styles = ["-", "--", ":", "-."]
    context_key = keys[-1]
    # The legend names what some panel draws: the keys, then the grey field, then the dot.
    legend: dict[str, Line2D] = {}
    field: dict[str, Line2D] = {}
    best_dot: dict[str, Line2D] = {}
    for i, (name, h) in enumerate(runs.items()):
        ax = axes[i]
        for other, oh in runs.items():
            if other != name and context_key in oh:
                ax.plot(_epochs(oh[context_key]), oh[context_key], color="0.82", lw=0.7)
                grey = labels[len(keys) - 1] if len(labels) >= len(keys) else context_key
                field = {f"the other runs' {grey}": Line2D([], [], color="0.82", lw=0.7)}
        for j, key in enumerate(keys):
            if key in h:
                label = labels[j] if j < len(labels) else key
                ax.plot(_epochs(h[key]), h[key], styles[j % 4], color=f"C{j}", label=label)
                legend[label] = Line2D([], [], ls=styles[j % 4], color=f"C{j}")
        heading = name
        if mark_best in h and any(math.isfinite(x) for x in h[mark_best]):
            values = np.asarray(h[mark_best], float)
            best = int(np.nanargmax(values) if "acc" in mark_best else np.nanargmin(values))
            ax.plot([best + 1], [values[best]], "o", color="C3", markersize=4)
            heading += f": best {mark_best} {values[best]:.3g} (epoch {best + 1})"
            best_dot = {f"best {mark_best}": Line2D([], [], ls="", marker="o", color="C3", ms=4)}
        ax.set_title(heading, fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    legend.update(field)
    legend.update(best_dot)
    for ax in axes[n:]:
        ax.set_visible(False)
    series = [h[k] for h in runs.values() for k in keys if k in h]
    note = ""
    longest = max((len(v) for h in runs.values() for v in h.values()), default=0)
    if zoom and longest >= 10:  # a shorter run has no late epochs to zoom to
        skip = math.ceil(0.1 * longest)
        limits = _zoom_limits(series, skip, logy)
        if limits is not None:
            axes[0].set_ylim(limits[0], limits[1])
            series = [*series, list(limits[:2])]
            if limits[2]:
                note = f"y zoomed to epochs {skip + 1} on; earlier values run off the axes"
    if logy:
        axes[0].set_yscale("log")
        for ax in axes[:n]:
            readable_log_axis(ax, series)
    for ax in axes[:n]:
        epoch_ticks(ax)
    for r in range(nrows):
        axes[r * ncols].set_ylabel(ylabel, fontsize=9)
    for ax in axes[max(0, n - ncols) : n]:
        ax.set_xlabel("epoch", fontsize=9)
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=max(1, len(legend)),
               fontsize=8, frameon=False)  # fmt: skip
    if title or note:
        fig.suptitle("\n".join(t for t in (title, note) if t), fontsize=10)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))
    return save(fig, path)


def plot_error_counts(
    accuracies: Mapping[str, float],
    *,
    total: int,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Misclassified test examples per run: a bar from 0 each, written as counts.

    An accuracy over ``total`` examples moves in steps of ``1 / total``; on a zoomed accuracy
    axis (0.955 to 0.971) one or two examples look like a large gap. Counted from 0, the
    errors show a difference of one example as one in a dozen, and each bar says
    ``"12 wrong (258/270 right)"``.

    Args:
        accuracies: ``name -> accuracy`` over the same ``total`` examples.
        total: the number of examples scored (positive).
        title: the title.
        path: where to save the PNG.

    Returns:
        The figure; ``fig.axes[0].patches`` are the bars (width = errors), fewest errors on
        top (last), and ``fig.axes[0].texts`` their labels in the same order.

    Example:
        >>> from dlopt.lab.plots import plot_error_counts
        >>> fig = plot_error_counts({"sgd": 258 / 270, "adam": 261 / 270}, total=270)
        >>> [int(bar.get_width()) for bar in fig.axes[0].patches]  # fewest errors on top
        [12, 9]
        >>> [text.get_text() for text in fig.axes[0].texts]
        ['12 wrong (258/270 right)', '9 wrong (261/270 right)']
    """
    from matplotlib.ticker import MaxNLocator

    if int(total) != total or total < 1:
        raise ValueError(f"total must be a positive whole number of examples, got {total=}.")
    total = int(total)
    errors = {name: round((1.0 - float(a)) * total) for name, a in accuracies.items()}
    items = sorted(errors.items(), key=lambda kv: -kv[1])  # most errors at the bottom
    names, counts = [k for k, _ in items], [v for _, v in items]
    fig = Figure(figsize=(6.5, 0.32 * len(items) + 1.3))
    ax = fig.add_subplot()
    rows = np.arange(len(items))
    ax.barh(rows, counts, height=0.6, color="C3", alpha=0.75)
    for count, row in zip(counts, rows, strict=True):
        text = f"{count} wrong ({total - count}/{total} right)"
        ax.annotate(text, (count, row), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)  # fmt: skip
    ax.set_xlim(0, max(max(counts), 1) * 1.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks(rows, names, fontsize=9)
    ax.set_ylim(-0.6, len(items) - 0.4)
    ax.set_xlabel(f"misclassified test examples (of {total})", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
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
    suggested learning rate is a vertical marker. The y axis runs from the lowest loss to
    twice the first (a diverging run's last batches would flatten the rest); every value
    above it is marked by a triangle on the top edge, and a note under the axes says how
    many are off the axes, up to what value, and how many batch losses are not finite.

    Returns:
        The figure; its texts hold the note (none when every finite value is in view).
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    lrs = np.asarray(learning_rates, float)
    ax.plot(lrs, losses, label="smoothed loss")
    drawn = {"smoothed loss": np.asarray(losses, float)}
    if raw_losses is not None:
        ax.plot(lrs, raw_losses, alpha=0.3, label="batch loss")
        drawn["batch loss"] = np.asarray(raw_losses, float)
    if suggested_lr is not None:
        ax.axvline(suggested_lr, color="C3", ls="--", label=f"suggested lr {suggested_lr:.2g}")
    every = np.concatenate(list(drawn.values()))
    finite = every[np.isfinite(every)]
    if finite.size:
        first = drawn["smoothed loss"][np.isfinite(drawn["smoothed loss"])]
        start = abs(first[0]) if first.size else abs(finite[0])
        low, high = finite.min(), min(finite.max(), start * 2 + 1e-12)
        if high > low:
            pad = 0.05 * (high - low)
            ax.set_ylim(low - pad, high + pad)
            _mark_off_the_top(ax, lrs, drawn, high + pad)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("learning-rate range test")
    return save(fig, path)


def _mark_off_the_top(
    ax: Any, lrs: np.ndarray, drawn: Mapping[str, np.ndarray], top: float
) -> None:
    """Triangles on the top edge at the learning rates whose values lie above ``top``, and a
    note under the axes naming, per drawn series, how many values are above it, and how
    many batch losses (the last series) are not finite."""
    parts = []
    for name, values in drawn.items():
        above = np.isfinite(values) & (values > top)
        if above.any():
            ax.plot(lrs[above], np.ones(int(above.sum())), "^", color="C1", ms=4, clip_on=False,
                    transform=ax.get_xaxis_transform(), label=f"{name} off the top")  # fmt: skip
            parts.append(
                f"{int(above.sum())} of {values.size} {name} values above {top:.3g} (up to "
                f"{values[above].max():.3g}, from lr {lrs[above].min():.2g}) are off the top"
            )
    broken = int(np.sum(~np.isfinite(list(drawn.values())[-1])))
    if broken:
        parts.append(f"{list(drawn)[-1]} values not finite (diverged): {broken}")
    if parts:
        ax.annotate("\n".join(parts), (0, 0), xycoords="axes fraction", xytext=(0, -40),
                    textcoords="offset points", va="top", fontsize=7, color="0.3")  # fmt: skip


def _count_label(count: float, _pos: Any = None) -> str:
    return f"{count / 1000:g}k" if count >= 1000 else f"{count:g}"


def plot_activation_histograms(
    activations: Mapping[str, Sequence[np.ndarray]],
    *,
    bins: int = 30,
    value_range: tuple[float, float] | None = None,
    drop_zeros: bool = False,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A grid of histograms: one row per setting (e.g. "tanh, xavier"), one column per layer.

    Under each panel: the standard deviation of its values (all of them, before any clipping
    or dropping). The panels of a row share their count axis.

    Args:
        activations: ``setting -> [layer activations]`` (arrays of any shape).
        bins: histogram bins.
        value_range: one x range for every panel, values outside it counted in the edge
            bins (so shrinking or exploding activations show); default each panel's own.
        drop_zeros: histogram only the nonzero values and write the share of exact zeros
            in the panel (for ReLU, whose zeros would dwarf the rest); a panel of only
            zeros then says so instead of drawing a bar.
        path: where to save the PNG.

    Returns:
        The figure; axes in row-major order.
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rows = list(activations)
    ncols = max(len(v) for v in activations.values())
    fig = Figure(figsize=(2.2 * ncols + 1.4, 1.55 * len(rows) + 0.7))
    axes = fig.subplots(len(rows), ncols, sharey="row", squeeze=False)
    for r, name in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(activations[name]):
                ax.set_visible(False)
                continue
            a = np.asarray(activations[name][c], float).ravel()
            text = f"std {a.std():.2g}" if a.size else "empty"
            if drop_zeros:
                zeros = float(np.mean(a == 0)) if a.size else 0.0
                a = a[a != 0]
                text += f"\n{zeros:.0%} zero"
            if value_range is not None:
                lo, hi = value_range
                a = np.clip(a, lo, hi)
            elif a.size:
                lo, hi = float(np.min(a)), float(np.max(a))
            else:
                lo, hi = 0.0, 1.0
            if hi - lo < 1e-6:
                lo, hi = lo - 0.5, hi + 0.5
            ax.hist(a, bins=bins, range=(lo, hi), color=f"C{r % 10}")
            if not a.size:
                ax.text(0.5, 0.5, "all values 0", transform=ax.transAxes, ha="center",
                        va="center", fontsize=8, color="0.4")  # fmt: skip
                ax.tick_params(axis="y", left=False, labelleft=False)
            ax.set_xlabel(text.replace("\n", ", "), fontsize=7, labelpad=1, color="0.25")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
            ax.yaxis.set_major_formatter(FuncFormatter(_count_label))
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(f"layer {c + 1}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{name}\ncount", fontsize=8)
    fig.tight_layout(pad=0.4)
    return save(fig, path)
