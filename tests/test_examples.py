"""examples/: the cheap ones run whole (figures written); the others' claims checked in pieces.

The slow examples (breast cancer, data-parallel, MNIST, regularization, optimizer paths) are
run by hand; their figures are committed in examples/figures/.
"""

import importlib.util
import math
import pathlib
import sys

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
