"""plots: each figure draws the data it was given and saves a small PNG."""

import numpy as np
import pytest

from dlopt.lab import plot_paths, plots
from dlopt.training import History

PNG = b"\x89PNG\r\n\x1a\n"


def saved(path):
    return path.read_bytes()[:8] == PNG and 0 < path.stat().st_size < 200_000


def test_plot_curves_draws_each_run_and_key(tmp_path):
    runs = {
        "sgd": History([{"loss": 1.0, "val_loss": 1.2}, {"loss": 0.5, "val_loss": 0.9}]),
        "adam": {"loss": [0.8, 0.3, 0.2], "val_loss": [1.0, 0.7, 0.8]},
    }
    fig = plots.plot_curves(runs, mark_best="val_loss", path=tmp_path / "sub" / "c.png")
    assert saved(tmp_path / "sub" / "c.png")
    lines = fig.axes[0].get_lines()
    # sgd loss, sgd val_loss, sgd best marker, adam loss, adam val_loss, adam best marker
    np.testing.assert_allclose(lines[0].get_ydata(), [1.0, 0.5])
    np.testing.assert_allclose(lines[1].get_ydata(), [1.2, 0.9])
    np.testing.assert_allclose(lines[2].get_ydata(), [0.9])  # sgd's best val loss
    np.testing.assert_allclose(lines[4].get_ydata(), [1.0, 0.7, 0.8])
    np.testing.assert_allclose(lines[5].get_xydata(), [[2, 0.7]])  # epochs counted from 1
    np.testing.assert_array_equal(lines[4].get_xdata(), [1, 2, 3])
    assert lines[0].get_linestyle() == "-" and lines[1].get_linestyle() == "--"
    assert lines[0].get_color() == lines[1].get_color() != lines[3].get_color()


def test_plot_schedules_functions_and_traces():
    fig = plots.plot_schedules(
        {"halving": lambda t: 0.5 ** (np.asarray(t) // 10), "trace": [1.0, 1.0, 0.1]},
        num_steps=30,
    )
    halving, trace = fig.axes[0].get_lines()
    np.testing.assert_allclose(halving.get_ydata(), 0.5 ** (np.arange(30) // 10))
    np.testing.assert_allclose(trace.get_ydata(), [1.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="num_steps"):
        plots.plot_schedules({"f": lambda t: t})


def test_plot_lr_find_marks_the_suggestion(tmp_path):
    lrs = np.geomspace(1e-4, 1.0, 20)
    loss = np.concatenate([np.linspace(2, 0.5, 15), [np.nan] * 5])
    fig = plots.plot_lr_find(
        lrs, loss, suggested_lr=1e-2, raw_losses=loss + 0.1, path=tmp_path / "lr.png"
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), loss)
    assert ax.get_lines()[2].get_xdata()[0] == pytest.approx(1e-2)
    assert saved(tmp_path / "lr.png")
    low, high = ax.get_ylim()
    assert low <= 0.5 and high >= 2.1  # every finite value in view: no triangles
    assert [t.get_text() for t in ax.texts] == ["batch loss values not finite (diverged): 5"]


def test_plot_lr_find_says_what_is_off_the_top():
    lrs = np.geomspace(1e-4, 1.0, 10)
    smoothed = np.array([2.0, 1.8, 1.5, 1.0, 0.8, 0.9, 1.5, 3.0, np.nan, np.nan])
    raw = np.array([2.0, 1.7, 1.4, 0.9, 0.7, 1.0, 2.5, 9.0, 50.0, np.inf])
    fig = plots.plot_lr_find(lrs, smoothed, raw_losses=raw)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), raw)  # the whole raw curve drawn
    low, high = ax.get_ylim()
    assert low <= 0.7 and 4.0 <= high < 9.0  # up to twice the first loss
    off = [line for line in ax.get_lines() if line.get_label() == "batch loss off the top"]
    np.testing.assert_allclose(off[0].get_xdata(), lrs[[7, 8]])  # 9.0 and 50.0, on the edge
    note = ax.texts[0].get_text()
    assert note.startswith("2 of 10 batch loss values above") and "up to 50" in note
    assert note.endswith("batch loss values not finite (diverged): 1")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [line.get_label() for line in ax.get_lines() if line.get_label()[0] != "_"]


def test_plot_trajectories_panels_and_paths(tmp_path):
    path = np.array([[-1.0, 1.0], [-0.5, 0.5], [0.0, 0.0]])
    problems = {
        "bowl": {
            "fn": lambda x, y: x**2 + y**2,
            "paths": {"sgd": path, "adam": path * 0.5},
            "xlim": (-2, 2),
            "ylim": (-2, 2),
            "minimum": (0.0, 0.0),
        },
        "saddle": {
            "fn": lambda x, y: x**2 - y**2,
            "paths": {"sgd": path},
            "xlim": (-2, 2),
            "ylim": (-2, 2),
            "log_levels": False,
        },
    }
    fig = plot_paths.plot_trajectories(problems, path=tmp_path / "t.png")
    assert len(fig.axes) == 2 and saved(tmp_path / "t.png")
    first = fig.axes[0].get_lines()
    np.testing.assert_allclose(first[0].get_xydata(), path)
    np.testing.assert_allclose(first[2].get_xydata(), path * 0.5)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # one legend for all panels
    assert legend == ["sgd", "adam", "start", "end of path", "minimum"]
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is None
    for ax in fig.axes:
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")
        ends = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert len(ends) == len(problems[ax.get_title()]["paths"])
        assert all(line.get_markersize() >= 6 for line in ends)  # visible end markers
    starts = [line for line in fig.axes[0].get_lines() if line.get_marker() == "s"]
    np.testing.assert_allclose(starts[0].get_xydata(), path[:1])
    widths = [line.get_linewidth() for line in first if line.get_linestyle() == "-"]
    assert widths[0] > widths[1]  # the earlier path wider: it shows under the later one
    without = plot_paths.plot_trajectories({"saddle": problems["saddle"]})
    assert "minimum" not in [t.get_text() for t in without.legends[0].get_texts()]


def test_plot_trajectories_keeps_each_optimizers_colour_across_panels():
    path = np.array([[-1.0, 1.0], [0.0, 0.0]])
    spec = {"fn": lambda x, y: x**2 + y**2, "xlim": (-2, 2), "ylim": (-2, 2)}
    fig = plot_paths.plot_trajectories(
        {
            "a": {**spec, "paths": {"sgd": path, "adam": path}},
            "b": {**spec, "paths": {"adam": path}},
        }
    )
    adam_first = fig.axes[0].get_lines()[2].get_color()
    assert fig.axes[1].get_lines()[0].get_color() == adam_first != "C0"


def test_plot_activation_histograms_grid(tmp_path):
    rng = np.random.default_rng(0)
    acts = {"tanh": [rng.normal(size=100) for _ in range(3)], "zeros": [np.zeros(50)] * 3}
    fig = plots.plot_activation_histograms(acts, bins=10, path=tmp_path / "a.png")
    assert len(fig.axes) == 6 and saved(tmp_path / "a.png")
    counts = [p.get_height() for p in fig.axes[0].patches]
    assert len(counts) == 10 and sum(counts) == 100
    assert sum(p.get_height() for p in fig.axes[3].patches) == 50  # constant layer still drawn


def test_plot_bars_labels_values():
    fig = plots.plot_bars({"sgd": 0.9, "adam": 0.95}, ylim=(0, 1))
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == [0.9, 0.95]


def test_plot_activation_histograms_drop_zeros_and_annotations():
    relu = np.concatenate([np.zeros(60), np.linspace(0.1, 1.0, 40)])
    fig = plots.plot_activation_histograms(
        {"relu": [relu, np.zeros(10)]}, bins=5, value_range=(0.0, 1.0), drop_zeros=True
    )
    first, empty = fig.axes
    assert sum(p.get_height() for p in first.patches) == 40  # exact zeros left out
    assert f"std {relu.std():.2g}" in first.get_xlabel() and "60% zero" in first.get_xlabel()
    assert sum(p.get_height() for p in empty.patches) == 0
    assert "100% zero" in empty.get_xlabel()
    assert any(t.get_text() == "all values 0" for t in empty.texts)


RUNS = {
    "sgd": {"loss": [2.0, 1.0, 0.8, 0.7], "val_loss": [2.1, 1.2, 0.9, 1.0]},
    "adam": {"loss": [1.5, 0.5, 0.3, 0.2], "val_loss": [1.6, 0.7, 0.6, 0.65]},
    "rmsprop": {"loss": [1.8, 0.9, 0.5, 0.4], "val_loss": [1.9, 1.0, 0.8, 0.7]},
}


def test_plot_curve_panels_one_panel_per_run_against_the_others(tmp_path):
    fig = plots.plot_curve_panels(RUNS, mark_best="val_loss", ncols=2, path=tmp_path / "p.png")
    assert saved(tmp_path / "p.png")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 3 and len(fig.axes) == 4  # a 2 x 2 grid, the fourth panel hidden
    for ax, (name, h) in zip(panels, RUNS.items(), strict=True):
        lines = ax.get_lines()
        grey, own = lines[:2], lines[2:]
        others = [o["val_loss"] for n, o in RUNS.items() if n != name]
        for line, expected in zip(grey, others, strict=True):  # the field, in grey
            np.testing.assert_allclose(line.get_ydata(), expected)
        np.testing.assert_allclose(own[0].get_ydata(), h["loss"])
        np.testing.assert_allclose(own[1].get_ydata(), h["val_loss"])
        assert own[0].get_color() == "C0" and own[1].get_color() == "C1"  # same in every panel
        best = int(np.argmin(h["val_loss"]))
        np.testing.assert_allclose(own[2].get_xydata(), [[best + 1, h["val_loss"][best]]])
        title = ax.get_title()
        assert title.startswith(f"{name}: best val_loss ") and f"(epoch {best + 1})" in title
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[2])  # one y scale
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["train", "validation", "the other runs' validation", "best val_loss"]


def test_plot_curve_panels_zoom_fits_the_later_epochs():
    rise = [0.3, 0.9, 0.95, 0.96, 0.97, 0.975, 0.98, 0.98, 0.985, 0.99]
    runs = {
        "a": {"accuracy": rise, "val_accuracy": [0.4, *rise[1:]]},
        "b": {"accuracy": [0.35, *rise[1:]], "val_accuracy": [0.5, 0.92, *rise[2:]]},
    }
    fig = plots.plot_curve_panels(runs, keys=("accuracy", "val_accuracy"), zoom=True)
    low, high = fig.axes[0].get_ylim()
    assert 0.88 < low < 0.9 and 0.99 < high < 0.995  # epochs 1 on (a tenth skipped), padded
    assert "run off the axes" in fig._suptitle.get_text()
    plain = plots.plot_curve_panels(runs, keys=("accuracy", "val_accuracy"))
    assert plain.axes[0].get_ylim()[0] < 0.3
    short = {"a": {"accuracy": [0.2, 0.3], "val_accuracy": [0.3, 0.5]}}  # a --quick run
    fig = plots.plot_curve_panels(short, keys=("accuracy", "val_accuracy"), zoom=True)
    low, high = fig.axes[0].get_ylim()
    assert low <= 0.2 and high >= 0.5 and fig._suptitle is None  # not zoomed to epoch 2


def test_plot_error_counts_counts_from_zero(tmp_path):
    total = 270
    accuracies = {"sgd": 260 / total, "momentum": 259 / total, "adam": 261 / total}
    fig = plots.plot_error_counts(accuracies, total=total, path=tmp_path / "e.png")
    assert saved(tmp_path / "e.png")
    ax = fig.axes[0]
    assert [bar.get_width() for bar in ax.patches] == [11, 10, 9]  # fewest errors on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["momentum", "sgd", "adam"]
    assert [t.get_text() for t in ax.texts] == [
        "11 wrong (259/270 right)",
        "10 wrong (260/270 right)",
        "9 wrong (261/270 right)",
    ]
    low, high = ax.get_xlim()
    assert low == 0 and high > 11  # from 0: one example is one in ten, not a large gap
    fig.draw_without_rendering()
    assert all(float(t.get_text()).is_integer() for t in ax.get_xticklabels())
    with pytest.raises(ValueError, match="total"):
        plots.plot_error_counts(accuracies, total=0)


def tick_texts(labels):
    return [t.get_text() for t in labels if t.get_text()]


def test_plot_curve_panels_single_short_run_reads_plainly():
    run = {"adam": {"loss": [2.4, 2.2], "val_loss": [2.05, 1.6]}}
    fig = plots.plot_curve_panels(run, logy=True, mark_best="val_loss")
    fig.draw_without_rendering()
    ax = fig.axes[0]
    epochs = tick_texts(ax.get_xticklabels())
    assert epochs and all(float(e).is_integer() for e in epochs)  # no epoch 0.2, 0.4, ...
    losses = tick_texts(ax.get_yticklabels()) + tick_texts(ax.yaxis.get_minorticklabels())
    assert len(losses) >= 3 and all("^" not in t and "times" not in t for t in losses)
    values = [float(t.replace("\u2212", "-")) for t in losses]  # plain decimals
    assert min(values) <= 2.0 and max(values) >= 2.0
    low, high = ax.get_ylim()
    assert low <= 1.6 and high >= 2.4
    np.testing.assert_array_equal(ax.get_lines()[0].get_xdata(), [1, 2])
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["train", "validation", "best val_loss"]  # no "other runs" line drawn
    assert ax.get_title().endswith("(epoch 2)")


def test_plot_curves_ticks_on_a_narrow_log_axis():
    fig = plots.plot_curves({"sgd": {"loss": [1.9, 1.7, 1.5]}}, logy=True)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in tick_texts(ax.get_xticklabels()))
    labels = tick_texts(ax.get_yticklabels()) + tick_texts(ax.yaxis.get_minorticklabels())
    assert labels and all("^" not in t for t in labels)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sgd"]
    wide = plots.plot_curves({"sgd": {"loss": [10.0, 0.01]}}, logy=True)
    wide.draw_without_rendering()
    assert "0.1" in tick_texts(wide.axes[0].get_yticklabels())  # decades, written plainly


def test_path_colors_keep_each_optimizers_place():
    assert plot_paths.path_colors(["Adam", "SGD"], ["SGD", "Momentum", "Adam"]) == ["C2", "C0"]
    with pytest.raises(ValueError, match="names"):
        plot_paths.path_colors(["Lion"], ["SGD"])
