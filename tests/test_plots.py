"""plots: each figure draws the data it was given and saves a small PNG."""

import numpy as np
import pytest

from dlopt import plots
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
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["sgd", "adam"]


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


def load_example(name, out, monkeypatch):
    """Imports examples/<name>.py as a module whose figures go to ``out``."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "OUT", str(out))
    return module


@pytest.mark.parametrize(
    "name, figures",
    [
        ("schedules", ["schedules.png"]),
        ("initialization_activations", ["init_sigmoid.png", "init_tanh.png", "init_relu.png"]),
    ],
)
def test_cheap_examples_write_their_figures(name, figures, tmp_path, monkeypatch, capsys):
    load_example(name, tmp_path, monkeypatch).main()
    for figure in figures:
        assert saved(tmp_path / figure), figure
    assert "wrote" in capsys.readouterr().out


def test_initialization_example_shows_the_classic_effects(monkeypatch, tmp_path):
    example = load_example("initialization_activations", tmp_path, monkeypatch)
    import jax

    x = jax.random.normal(jax.random.key(0), (500, example.UNITS))

    def stds(init, act):
        acts = example.layer_activations(
            example.INITS[init], example.ACTIVATIONS[act], x, jax.random.key(1)
        )
        return [float(a.std()) for a in acts]

    assert max(stds("N(0,0.01)", "tanh")[-1:]) < 1e-3  # shrinks toward 0
    assert stds("N(0,1)", "relu")[-1] > 100 * stds("N(0,1)", "relu")[0]  # explodes
    he, xavier = stds("He", "relu"), stds("Xavier", "relu")
    assert he[-1] > 0.5 * he[0] and xavier[-1] < 0.4 * xavier[0]  # He holds ReLU, Xavier fades
    assert stds("zeros", "tanh") == [0.0] * example.LAYERS
