"""examples/: the cheap ones run whole (figures written); the others' claims checked in pieces.

The slow examples (breast cancer, data-parallel, MNIST, regularization, optimizer paths) are
run by hand; their figures are committed in examples/figures/. The figures of the modern
optimizers, regularization and optimizer-path examples are checked here from small made-up
results (their artists' data: labels, limits, markers, sizes).
"""

import importlib.util
import math
import pathlib
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def saved(path):
    return path.read_bytes()[:8] == PNG and 0 < path.stat().st_size < 200_000


def load_example(name, out, monkeypatch):
    """Imports examples/<name>.py as a module whose figures go to ``out``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
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
    # The docstring's Xavier/tanh claim: alive but not constant (0.63 -> 0.32 on 1,000 inputs).
    tanh = stds("Xavier", "tanh")
    assert 0.3 * tanh[0] < tanh[-1] < 0.7 * tanh[0]
    assert stds("zeros", "tanh") == [0.0] * example.LAYERS


@pytest.fixture(scope="module")
def transfer():
    mp = pytest.MonkeyPatch()
    yield load_example("transfer_learning", "unused", mp)
    mp.undo()


def test_transfer_splits_are_stratified(transfer):
    target = transfer.splits(transfer.TARGET)
    x, y = transfer.stratified_part(target["train"], 0.1)
    counts = np.bincount(target["train"][1])
    np.testing.assert_array_equal(np.bincount(y), [math.ceil(0.1 * c) for c in counts])
    assert set(np.unique(target["test"][1])) == set(range(5))  # 5-9 relabelled 0-4


def test_transfer_example_quick_run_writes_its_table_and_figure(transfer, tmp_path, capsys):
    transfer.OUT = str(tmp_path)
    out = transfer.main(["--quick"])
    assert saved(tmp_path / "transfer_learning.png")
    text = capsys.readouterr().out
    for strategy in transfer.STRATEGIES:
        assert any(line.strip().startswith(strategy) for line in text.splitlines())
    assert 0.0 <= out["pretrain_accuracy"] <= 1.0
    assert set(out["results"]) == {(s, 0.1) for s in transfer.STRATEGIES}
    pretrained = jax.tree.leaves(out["pretrained"]["backbone"])

    def moved(strategy):  # the largest change of a backbone parameter during the 5-9 run
        after = jax.tree.leaves(out["results"][(strategy, 0.1)][0]["params"]["backbone"])
        return max(float(jnp.abs(a - b).max()) for a, b in zip(after, pretrained, strict=True))

    changed = {s: moved(s) for s in transfer.STRATEGIES}
    assert changed["frozen"] == 0.0  # set_to_zero on "^backbone/": not one bit moved
    # Fine-tuned at lr 1e-4: two Adam steps (65 images, batches of 32) move each weight by
    # about 1e-4 each, where a step at the head's 1e-3 would move it 1e-3.
    assert 0.0 < changed["fine-tuned"] < 5e-4


# The figures of the slow examples, drawn from small made-up results (their runs are by hand).


def legend_texts(legend):
    return [t.get_text() for t in legend.get_texts()]


def inside(outer, inner):
    return outer[0] <= inner[0] and inner[1] <= outer[1]


def test_modern_optimizers_figure_shows_every_curve_and_hides_none(tmp_path, monkeypatch):
    example = load_example("modern_optimizers", tmp_path, monkeypatch)
    steps = np.arange(1, 101)
    curves = {
        "AdamW": (2.0 * 0.95**steps, np.minimum(0.1 + steps / 50, 0.96)),
        "Muon": (2.0 * 0.8**steps, np.minimum(0.1 + steps / 40, 0.97)),  # down to 4e-10
    }
    fig = example.plot(curves)
    assert saved(tmp_path / "modern_optimizers.png")
    loss_ax, acc_ax = fig.axes
    lines = loss_ax.get_lines()
    assert legend_texts(fig.legends[0]) == [line.get_label() for line in lines]
    assert lines[-1].get_label() == f"target loss {example.TARGET}"  # the dotted line named
    np.testing.assert_allclose(lines[-1].get_ydata(), example.TARGET)
    every = np.concatenate([c[0] for c in curves.values()])
    assert inside(loss_ax.get_ylim(), (every.min(), every.max()))  # nothing runs off
    late = np.concatenate([c[1][10:] for c in curves.values()])
    assert inside(acc_ax.get_ylim(), (late.min(), late.max()))
    assert "below the axis" in acc_ax.get_title()  # the first steps' 0.12 is, and says so
    fig.draw_without_rendering()
    legend_box = fig.legends[0].get_window_extent()
    for ax in fig.axes:  # the legend sits below the panels, over no curve
        assert legend_box.y1 < ax.get_window_extent().y0


def test_regularization_figure_is_a_readable_grid_marking_early_stopping(monkeypatch, tmp_path):
    example = load_example("regularization", tmp_path, monkeypatch)
    full = {"loss": list(np.geomspace(1.0, 1e-3, 60)), "val_loss": [0.5] * 60}
    stopped = {"loss": list(np.geomspace(1.0, 1e-2, 12)), "val_loss": [0.6, 0.4, 0.3, *[0.35] * 9]}
    results = {
        name: {
            "history": SimpleNamespace(history=stopped if name == "early stopping" else full),
            "test_accuracy": 0.9,
        }
        for name in example.VARIANTS
    }
    fig = example.plot(results)
    width, height = fig.get_size_inches()
    assert width / height < 2 and len(fig.axes) == 6  # 2 x 3, not a 5-panel strip
    panels = fig.axes[: len(results)]
    assert all(ax.title.get_fontsize() >= 11 for ax in panels)
    early = panels[list(results).index("early stopping")]
    marks = {line.get_label(): line.get_xdata()[0] for line in early.get_lines()[2:4]}
    assert marks == {
        "best epoch (weights restored)": 3,  # val_loss 0.3, epochs counted from 1
        "last epoch run (stopped)": 12,
    }
    assert "best epoch 3, stopped after 12" in early.get_title()
    dot = early.get_lines()[4]
    np.testing.assert_allclose(dot.get_xydata(), [[3, 0.3]])
    drawn = {line.get_label() for ax in panels for line in ax.get_lines()}
    assert set(legend_texts(fig.axes[5].get_legend())) == {
        label for label in drawn if not label.startswith("_")
    }
    assert all(len(ax.get_lines()) == 2 for ax in panels if ax is not early)  # no marks


def test_optimizer_paths_animation_matches_the_figure(monkeypatch, tmp_path):
    example = load_example("optimizer_paths", tmp_path, monkeypatch)
    path = np.array([[-4.5, 1.0], [-2.0, -0.5], [0.0, 0.0]])
    paths = {"SGD": path, "Momentum": path * 0.9, "Adam": path * 0.8}
    fig = example.gif_figure(example.ill_conditioned, paths, (-5, 5), (-2, 2), upto=3)
    width, height = fig.get_size_inches() * example.GIF_DPI
    assert width >= 600 and height >= 400
    ax = fig.axes[0]
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()[::2][:3]}
    every = list(example.OPTIMIZERS)
    assert colors == {name: f"C{every.index(name)}" for name in paths}  # as in the PNG
    texts = fig.legends[0].get_texts()
    assert legend_texts(fig.legends[0]) == [*paths, "start", "end of path", "minimum"]
    assert all(t.get_fontsize() >= 9 for t in texts)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y")
    gif = tmp_path / "z.gif"
    example.save_gif(example.ill_conditioned, paths, (-5, 5), (-2, 2), gif, frames=2)
    from PIL import Image

    with Image.open(gif) as image:
        assert image.size == (round(width), round(height)) and image.n_frames == 2
