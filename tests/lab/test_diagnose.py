"""diagnose(): a labelled set of real training runs, synthetic histories of each kind, inputs.

The labelled set (tests/fixtures/diagnose_histories.json) is made by
``examples/diagnose_histories.py``: real runs of dlopt's training loop on scikit-learn digits
and breast cancer (MLP and CNN, three seeds), each labelled by its recipe. Print its confusion
table with ``python examples/diagnose_histories.py --table``.
"""

import importlib.util
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import ROOT

from dlopt.lab.diagnose import (
    KINDS,
    MIN_EPOCHS,
    REMEDIES,
    STILL_FALLING,
    VERDICTS,
    Finding,
    diagnose,
    format_findings,
)
from dlopt.training import History

_spec = importlib.util.spec_from_file_location(
    "diagnose_histories", ROOT / "examples" / "diagnose_histories.py"
)
labelled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(labelled)
RUNS = labelled.load(str(ROOT / "tests" / "fixtures" / "diagnose_histories.json"))
DEMO = labelled.load(str(ROOT / "tests" / "fixtures" / "diagnose_histories.json"), "demo")

E = np.arange(30)
NOISE = 0.002 * np.sin(1.7 * E)  # a small deterministic wiggle


def _h(loss, val_loss=None):
    h = {"loss": [float(x) for x in loss]}
    if val_loss is not None:
        h["val_loss"] = [float(x) for x in val_loss]
    return h


# ----------------------------------------------------------------------------- labelled runs


def test_the_labelled_set_covers_every_label():
    counts = {label: sum(r["label"] == label for r in RUNS) for label in labelled.LABELS}
    assert min(counts.values()) >= 9, counts
    assert {r["dataset"] for r in RUNS} == {"digits", "breast_cancer"}
    assert {r["model"][0] for r in RUNS} == {"mlp", "cnn"}
    assert len({r["seed"] for r in RUNS}) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_each_finding_is_precise_and_finds_most_of_its_label(kind):
    precision, recall = labelled.scores(RUNS)[kind]
    assert precision >= 0.9, labelled.format_table(RUNS)
    assert recall >= 0.8, labelled.format_table(RUNS)


def test_healthy_runs_get_no_problem_and_never_an_lr_finding():
    healthy = [r for r in RUNS if r["label"] == "healthy"]
    findings = {r["id"]: diagnose(r["history"]) for r in healthy}
    lr = {i: f for i, fs in findings.items() for f in fs if f.kind.startswith("lr_")}
    assert not lr, lr
    assert sum(not fs for fs in findings.values()) >= 0.8 * len(healthy), findings


def test_the_demo_runs_are_not_told_to_change_their_learning_rate():
    from dlopt.lab.cli import DEMO_OPTIMIZERS

    assert [r["id"] for r in DEMO] == [f"demo/{name}" for name in DEMO_OPTIMIZERS]
    for run in DEMO:
        kinds = [f.kind for f in diagnose(run["history"])]
        assert not [k for k in kinds if k.startswith("lr_")], (run["id"], kinds)


def test_the_fixture_is_what_the_script_makes_and_the_script_does_not_overwrite_it():
    recipes = {r["id"]: r for r in labelled.recipes() + labelled.demo_recipes()}
    for run in RUNS + DEMO:  # every stored run is a recipe of the script, as stored
        recipe = recipes[run["id"]]
        assert {k: run[k] for k in recipe if k != "model"} == {
            k: v for k, v in recipe.items() if k != "model"
        }
    assert [r["id"] for r in DEMO] == [r["id"] for r in labelled.demo_recipes()]
    assert os.path.abspath(labelled.OUT) != os.path.abspath(labelled.PATH)
    assert "/out/" in labelled.OUT.replace(os.sep, "/")


def test_findings_carry_confidence_and_evidence():
    for run in RUNS:
        for f in diagnose(run["history"]):
            assert 0.5 <= f.confidence <= 1.0 and f.evidence, f
            assert f.remedy == REMEDIES[f.kind] and f"confidence {f.confidence:.2f}" in str(f)


def test_the_confusion_table_prints():
    text = labelled.format_table(RUNS)
    assert text.splitlines()[0].split()[:3] == ["finding", "\\", "label"]
    assert all(kind in text for kind in (*KINDS, "none", "precision", "recall"))


# ----------------------------------------------------------------------------- synthetic

SYNTHETIC = [
    # name, history, expected [(kind, epoch)]
    (
        "overfitting",
        _h(2 * np.exp(-0.3 * E) + 0.05, np.where(E < 10, 2 * np.exp(-0.3 * E) + 0.3,
                                                 2 * np.exp(-3.0) + 0.3 + 0.02 * (E - 10))),
        [("overfitting", 12)],
    ),
    (
        "memorized",
        _h(2 * np.exp(-0.4 * E) + 1e-4, 2 * np.exp(-0.4 * E) + 0.2 + NOISE),
        [("overfitting", 13)],
    ),
    ("underfitting", _h(2.3 + NOISE, 2.31 + NOISE[::-1]), [("underfitting", 1)]),
    (
        "levels off high",
        _h(2 * np.exp(-0.3 * E) + 1.0 + NOISE, 2 * np.exp(-0.3 * E) + 1.05),
        [("underfitting", 1)],
    ),
    ("oscillation", _h(1 + 0.5 * (-1.0) ** E, 1.1 + 0.5 * (-1.0) ** E), [("lr_too_high", 3)]),
    (
        "nan",
        _h([1.0, 0.8, 0.6, math.nan, math.nan], [1.0, 0.9, 0.7, math.nan, math.nan]),
        [("lr_too_high", 4)],
    ),
    ("val inf only", _h([1.0, 0.8, 0.6, 0.5], [1.0, 0.9, math.inf, 0.7]), [("lr_too_high", 3)]),
    ("divergence", _h([1.0, 0.5, 0.4, 0.6, 1.0, 2.0, 5.0]), [("lr_too_high", 5)]),
    ("blow-up in the first epoch", _h([40.0, 2.4, *(2.3 + NOISE[:8])]), [("lr_too_high", 1)]),
    ("lr too low", _h(2.3 * (1 - 0.02 * E), 2.35 * (1 - 0.02 * E)), [("lr_too_low", 1)]),
    (
        "plateau",
        _h(np.maximum(2 * np.exp(-0.5 * E), 0.25) + NOISE, np.maximum(2 * np.exp(-0.5 * E), 0.3)),
        [("plateau", 5)],
    ),
    (
        "healthy",
        _h([2, 1.2, 0.8, 0.6, 0.5, 0.45, 0.42, 0.43, 0.40, 0.41, 0.39],
           [2.1, 1.3, 0.9, 0.7, 0.62, 0.58, 0.57, 0.575, 0.56, 0.565, 0.555]),
        [],
    ),
    (
        # Wiggles of 5% in a val_loss that has converged are no learning rate too high; flat
        # for the last third of the run (and the train loss too), it is a plateau.
        "late wiggle",
        _h(2.0 * np.exp(-0.3 * E) + 0.04 + 0.004 * np.sin(2.1 * E),
           1.5 * np.exp(-0.3 * E) + 0.05 * (1 + 0.05 * np.sin(2.9 * E))),
        [("plateau", 16)],
    ),
]  # fmt: skip

# Recorded earlier with dlopt.experiments.train_classifier on scikit-learn digits (MLP 128-64,
# dropout 0.2).
REAL = [
    (
        "sgd lr=3: blows up in epoch 0, then stuck at chance",
        _h([32.5576, 2.4343, 2.4914, 3.0085, 2.3193, 2.3178, 2.3174, 2.3173, 2.318, 2.32, 2.313,
            2.3148, 2.3143, 2.3166, 2.3158],
           [2.1921, 2.3585, 2.4346, 2.3242, 2.3102, 2.3159, 2.3215, 2.33, 2.3239, 2.3013, 2.3118,
            2.3173, 2.312, 2.3078, 2.3203]),
        [("lr_too_high", 1)],
    ),
    (
        "sgd lr=3e-4: learns slowly",
        _h([2.4316, 2.4252, 2.4149, 2.4092, 2.4056, 2.3985, 2.3895, 2.3874, 2.3841, 2.375, 2.3646,
            2.3614, 2.3514, 2.347, 2.34],
           [2.4264, 2.4203, 2.4143, 2.4083, 2.4024, 2.3965, 2.3907, 2.3849, 2.3792, 2.3735, 2.3679,
            2.3623, 2.3568, 2.3513, 2.3459]),
        [("lr_too_low", 1)],
    ),
    (
        "adam lr=2e-2: validation loss swings",
        _h([0.6062, 0.1855, 0.1182, 0.1341, 0.044, 0.0371, 0.027, 0.081, 0.0444, 0.0556, 0.1176,
            0.0702, 0.1209, 0.12, 0.1068, 0.121, 0.0818, 0.0835, 0.0484, 0.0467],
           [0.3123, 0.3384, 0.396, 0.4998, 0.309, 0.2584, 0.2877, 0.3538, 0.2333, 0.3423, 0.3004,
            0.3838, 0.6664, 0.6049, 0.4869, 0.6657, 0.5209, 0.6793, 0.662, 0.692]),
        [("lr_too_high", 11)],
    ),
    (
        # val_loss 0.158 at epoch 5, then 0.16-0.23 with 10% swings: no rise beyond its noise.
        "nesterov (an old dlopt demo): early-stopped, val_loss noisy after its best",
        _h([1.4742, 0.3781, 0.173, 0.1162, 0.0905, 0.0826, 0.0711, 0.0651, 0.0543, 0.0954, 0.0432,
            0.0372, 0.0355, 0.0255],
           [0.5116, 0.2688, 0.2127, 0.1845, 0.1952, 0.1576, 0.1758, 0.1997, 0.228, 0.2233, 0.1848,
            0.1819, 0.1663, 0.2056]),
        [],
    ),
    (
        # val_loss stalls near 0.16 while loss keeps falling 2x: not a plateau of training.
        "sgd (an old dlopt demo): validation stalls, training goes on",
        _h([1.8978, 1.0522, 0.6401, 0.4484, 0.3673, 0.3096, 0.2433, 0.2157, 0.2098, 0.1983, 0.1607,
            0.162, 0.1389, 0.1193, 0.118, 0.1117, 0.1063, 0.0922, 0.0886, 0.0739, 0.0803, 0.0881,
            0.0688, 0.065, 0.0705, 0.0635, 0.066, 0.061, 0.0682, 0.0627, 0.0448, 0.0447, 0.0552,
            0.0552, 0.0501, 0.0389],
           [1.2996, 0.7209, 0.468, 0.3576, 0.293, 0.2644, 0.2389, 0.218, 0.223, 0.2335, 0.201,
            0.195, 0.1871, 0.1876, 0.1822, 0.1816, 0.1782, 0.175, 0.1705, 0.1752, 0.1711, 0.1652,
            0.1616, 0.1731, 0.1676, 0.1622, 0.1631, 0.1593, 0.164, 0.1718, 0.1601, 0.18, 0.1689,
            0.1715, 0.1731, 0.1614]),
        [],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    "history, expected", [c[1:] for c in SYNTHETIC + REAL], ids=[c[0] for c in SYNTHETIC + REAL]
)
def test_finds_each_kind_at_its_epoch(history, expected):
    findings = diagnose(history)
    assert [(f.kind, f.epoch) for f in findings] == expected, format_findings(findings)
    for f in findings:
        assert f.remedy == REMEDIES[f.kind] and f.message and 0.5 <= f.confidence <= 1.0


# ----------------------------------------------------------------------------- verdicts

QUICK_DEMO = _h([2.21, 1.93], [2.05, 1.87])  # a 2-epoch --quick demo run, test accuracy 0.089


@pytest.mark.parametrize(
    "history",
    [_h([]), _h([2.3]), _h([2.3], [2.3]), QUICK_DEMO, _h(np.geomspace(2.0, 0.2, MIN_EPOCHS - 1))],
    ids=["empty", "one epoch", "one epoch with val", "quick demo", "one short of the minimum"],
)
def test_too_few_epochs_is_its_own_verdict(history):
    findings = diagnose(history, min_accuracy=0.9)
    assert [(f.kind, f.epoch) for f in findings] == [("too_few_epochs", 1)]
    assert "not enough epochs to judge" in str(findings[0]) and findings[0].kind in VERDICTS
    assert not format_findings(findings).startswith("no problem found")


def test_a_non_finite_loss_is_reported_however_short_the_run():
    assert [(f.kind, f.epoch) for f in diagnose(_h([2.3, math.nan]))] == [("lr_too_high", 2)]
    assert [(f.kind, f.epoch) for f in diagnose(_h([math.inf]))] == [("lr_too_high", 1)]


def test_a_run_still_falling_steeply_is_not_converged():
    steep = _h(2 * np.exp(-0.3 * E[:10]), 2.1 * np.exp(-0.3 * E[:10]))  # -26% per epoch
    findings = diagnose(steep)
    # the last max(3, min(window, 10 // 3)) = 3 epochs: epochs 8, 9 and 10
    assert [(f.kind, f.epoch) for f in findings] == [("not_converged", 8)], findings
    assert "not converged" in str(findings[0]) and findings[0].evidence["per_epoch"] > STILL_FALLING
    # the same run trained until it levels off is healthy
    leveled = _h(2 * np.exp(-0.3 * E[:16]) + 0.3, 2.1 * np.exp(-0.3 * E[:16]) + 0.35)
    assert diagnose(leveled) == []


@pytest.mark.parametrize("rate, expected", [(0.03, []), (0.08, ["not_converged"])])
def test_not_converged_threshold(rate, expected):
    # a log-linear curve that falls by ``rate`` per epoch at the end, after a steep start
    curve = np.concatenate([2 * np.exp(-0.4 * E[:12]), 2 * np.exp(-4.4 - rate * E[1:6])])
    assert [f.kind for f in diagnose(_h(curve), window=2)] == expected


def test_every_kind_is_exercised():
    kinds = {k for _, _, expected in SYNTHETIC + REAL for k, _ in expected}
    assert kinds == set(KINDS)


def test_finding_is_backward_compatible():
    f = Finding("plateau", 3, "it stalls", REMEDIES["plateau"])
    assert (f.kind, f.epoch, f.confidence, dict(f.evidence)) == ("plateau", 3, 1.0, {})
    kind, epoch, message, remedy, *_ = f
    assert (kind, epoch) == ("plateau", 3)


def test_history_list_and_dict_inputs_agree():
    name, history, expected = SYNTHETIC[0]
    epochs = [
        dict(zip(history, values, strict=True)) for values in zip(*history.values(), strict=True)
    ]
    as_history = History(epochs)
    assert diagnose(as_history) == diagnose(epochs) == diagnose(history)


def test_without_validation_loss_uses_train_loss():
    flat_end = np.concatenate([np.geomspace(2.0, 0.2, 10), np.full(10, 0.2) + NOISE[:10]])
    # geomspace reaches 0.2 at its 10th epoch: flat from there
    assert [(f.kind, f.epoch) for f in diagnose({"loss": flat_end})] == [("plateau", 10)]


def test_min_accuracy_flags_underfitting_from_metrics():
    history = {"loss": list(2 * np.exp(-0.5 * E[:16]) + 0.05), "accuracy": [0.3] * 16}
    assert diagnose(history) == diagnose(history, min_accuracy=0.2) == []
    kinds = [f.kind for f in diagnose(history, min_accuracy=0.5)]
    assert kinds == ["underfitting"]


def test_thresholds_change_the_verdict():
    overfit, plateau = SYNTHETIC[0][1], SYNTHETIC[10][1]
    assert diagnose(overfit, overfit_tol=10.0, gap_factor=1e3) == []
    assert [f.kind for f in diagnose(overfit, overfit_tol=10.0)] == ["overfitting"]  # the gap
    assert diagnose(plateau, window=30) == []


@given(
    st.lists(st.floats(0.01, 10.0), min_size=0, max_size=40),
    st.lists(st.floats(0.01, 10.0), min_size=0, max_size=40),
)
def test_any_finite_history_gives_valid_sorted_findings(loss, val):
    n = min(len(loss), len(val))
    findings = diagnose({"loss": loss[:n] or [1.0], "val_loss": val[:n] or [1.0]})
    assert [f.epoch for f in findings] == sorted(f.epoch for f in findings)
    for f in findings:
        assert isinstance(f, Finding) and f.kind in KINDS + VERDICTS and 1 <= f.epoch <= max(n, 1)
        assert 0.5 <= f.confidence <= 1.0


def test_format_findings():
    assert format_findings([]).startswith("no problem found")
    text = format_findings(diagnose(SYNTHETIC[0][1]))
    assert text.startswith("[overfitting] from epoch 12 (confidence ") and "EarlyStopping" in text


@pytest.mark.parametrize(
    "kwargs, error, match",
    [  # a wrong value raises ValueError, a wrong type (a string, a float count) TypeError
        ({"window": 1}, ValueError, "window"),
        ({"window": 2.0}, TypeError, "window"),
        ({"tol": -0.1}, ValueError, "tol"),
        ({"osc_tol": math.nan}, ValueError, "osc_tol"),
        ({"underfit_drop": "0.1"}, TypeError, "underfit_drop"),
        ({"diverge_factor": 1.0}, ValueError, "diverge_factor"),
        ({"gap_factor": math.inf}, ValueError, "gap_factor"),
        ({"underfit_level": 1.0}, ValueError, "underfit_level"),
        ({"min_accuracy": math.nan}, ValueError, "min_accuracy"),
        ({"loss": "train_loss"}, ValueError, "train_loss"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    with pytest.raises(error, match=match):
        diagnose({"loss": [1.0, 0.5, 0.4]}, **kwargs)


def test_val_loss_of_another_length_is_an_error():
    with pytest.raises(ValueError, match="val_loss"):
        diagnose({"loss": [1.0, 0.5, 0.4], "val_loss": [1.0, 0.6]})


def test_bad_history_type():
    with pytest.raises(TypeError, match="history"):
        diagnose(3.0)
