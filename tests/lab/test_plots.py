"""plots: each figure draws the data it was given and saves a small PNG."""

import numpy as np
import pytest

from dlopt.lab import plots
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
    np.testing.assert_allclose(lines[5].get_xydata(), [[1, 0.7]])
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
    fig = plots.plot_trajectories(problems, path=tmp_path / "t.png")
    assert len(fig.axes) == 2 and saved(tmp_path / "t.png")
    first = fig.axes[0].get_lines()
    np.testing.assert_allclose(first[0].get_xydata(), path)
    np.testing.assert_allclose(first[2].get_xydata(), path * 0.5)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # one legend for all panels
    assert legend == ["sgd", "adam", "start", "end of path", "minimum"]
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is None


def test_plot_trajectories_keeps_each_optimizers_colour_across_panels():
    path = np.array([[-1.0, 1.0], [0.0, 0.0]])
    spec = {"fn": lambda x, y: x**2 + y**2, "xlim": (-2, 2), "ylim": (-2, 2)}
    fig = plots.plot_trajectories(
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
        np.testing.assert_allclose(own[2].get_xydata(), [[best, h["val_loss"][best]]])
        title = ax.get_title()
        assert title.startswith(f"{name}: best val_loss ") and f"(epoch {best})" in title
    assert panels[0].get_shared_y_axes().joined(panels[0], panels[2])  # one y scale
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["train", "validation"]


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


def test_plot_dots_zooms_to_the_values_and_sorts(tmp_path):
    values = {"sgd": 0.963, "momentum": 0.9593, "nesterov": 0.9556, "adam": 0.9667}
    fig = plots.plot_dots(values, step=1 / 270, title="test accuracy", path=tmp_path / "d.png")
    assert saved(tmp_path / "d.png")
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert 0.94 < low < 0.9556 and 0.9667 < high < 0.98  # zoomed: bars from 0 would hide it
    xy = ax.collections[-1].get_offsets()
    np.testing.assert_allclose(xy[:, 0], sorted(values.values()))  # best on top (last row)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["nesterov", "momentum", "sgd", "adam"]
    assert ax.get_title() == "test accuracy"
    grid = [line for line in ax.get_lines() if line.get_xdata()[0] == line.get_xdata()[-1]]
    steps = np.diff(sorted(line.get_xdata()[0] for line in grid))
    np.testing.assert_allclose(steps, 1 / 270)  # one grid line per test example
    kept = plots.plot_dots({"b": 2.0, "a": 1.0}, sort=False)
    assert [t.get_text() for t in kept.axes[0].get_yticklabels()] == ["a", "b"]  # "b" on top
