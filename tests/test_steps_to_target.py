"""benchmarks/steps_to_target.py: a --quick run on the tiny least-squares problem writes its
table and JSON; the steps-to-target and best-learning-rate rules."""

import json
import math

import pytest
from support.benchmarks import load


@pytest.fixture(scope="module")
def harness():
    return load("steps_to_target")


def test_steps_to_is_the_first_evaluated_step_at_or_below_the_target(harness):
    assert harness.steps_to([0, 5, 10, 15], [3.0, 1.0, 0.5, 0.4], 0.5) == 10
    assert harness.steps_to([0, 5, 10], [3.0, math.nan, math.nan], 0.5) is None
    assert harness.steps_to([0, 5], [3.0, 2.0], 0.5) is None


def test_best_rate_reaches_first_then_lowest_final(harness):
    runs = [
        {"learning_rate": 1.0, "steps_to_target": None, "final": 0.01},
        {"learning_rate": 0.1, "steps_to_target": 40, "final": 0.3},
        {"learning_rate": 0.01, "steps_to_target": 40, "final": 0.2},
        {"learning_rate": 0.001, "steps_to_target": 90, "final": 0.1},
    ]
    assert harness._best(runs)["learning_rate"] == 0.01
    misses = [{"learning_rate": a, "steps_to_target": None, "final": f}
              for a, f in ((1.0, math.nan), (0.1, 0.5), (0.01, 0.7))]  # fmt: skip
    assert harness._best(misses)["learning_rate"] == 0.1


def test_quick_run_writes_the_table(harness, tmp_path):
    harness.main(["--quick", "--problems", "lstsq", "--optimizers", "adamw", "--out",
                  str(tmp_path)])  # fmt: skip
    table = (tmp_path / "steps_to_target_quick.md").read_text()
    assert "## lstsq" in table and "| adamw | 0.03 (grid edge) |" in table
    result = json.loads((tmp_path / "steps_to_target_quick.json").read_text())
    runs = result["problems"]["lstsq"]["runs"]["adamw"]
    assert [r["learning_rate"] for r in runs] == list(harness.GRIDS["adamw"][1:4:2])
    curve = runs[1]["curve"]
    assert curve[0][0] == 0 and curve[-1][0] == 60 and curve[-1][1] < curve[0][1]  # it trains


def test_a_partial_result_renders(harness):
    result = {
        "available": {"adamw": True, "soap": True, "kron": False},
        "problems": {"lm": {"about": "x", "target": 1.0, "runs": {
            "adamw": [{"learning_rate": 0.1, "steps_to_target": 5, "final": 0.5,
                       "diverged": False}]}}},
    }  # fmt: skip
    table = harness.markdown(result, "cmd")
    assert "| soap | not run (yet) |" in table and "| kron | not available |" in table
    assert "| adamw | 0.1 (grid edge) | 5 | 0.5 | 1/1 |" in table
