"""`python -m dlopt.compat`: every public optax name resolves at dlopt's same path, signed as
optax signs it (or listed in `dlopt.compat.DELIBERATE`)."""

from __future__ import annotations

import importlib

import pytest

from dlopt import compat

# Names other branches of issue 21 add (losses, contrib, tree modules, numerics, privacy
# clipping). Empty this once they are merged: then nothing may be missing.
PENDING_MERGE_MODULES = {
    "contrib",
    "losses",
    "tree_utils",
    "projections",
    "microbatching",
    "perturbations",
    "assignment",
    "second_order",
}
PENDING_MERGE_TOP_LEVEL = {
    *PENDING_MERGE_MODULES,
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    # losses' top-level aliases
    "convex_kl_divergence",
    "cosine_distance",
    "cosine_similarity",
    "ctc_loss",
    "ctc_loss_with_forward_probs",
    "generalized_kl_divergence",
    "hinge_loss",
    "huber_loss",
    "kl_divergence",
    "l2_loss",
    "log_cosh",
    "ntxent",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "smooth_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "squared_error",
    # numerics and linear algebra
    "bias_correction",
    "global_norm",
    "matrix_inverse_pth_root",
    "microbatch",
    "multi_normal",
    "nnls",
    "power_iteration",
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "tree_map_params",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
}
PENDING_MERGE_IN = {"transforms": {"per_example_global_norm_clip", "per_example_layer_norm_clip"}}

pytest.importorskip("optax")


def _pending(module: str) -> set[str]:
    if module in PENDING_MERGE_MODULES:
        return {"*"}
    if module == "":
        return PENDING_MERGE_TOP_LEVEL
    if module == "tree":  # dlopt.tree is written on the treemods branch
        return {"*"}
    return PENDING_MERGE_IN.get(module, set())


@pytest.fixture(scope="module")
def report() -> compat.Report:
    return compat.check(compat.MODULES)


@pytest.mark.parametrize("module", compat.MODULES, ids=lambda m: m or "top-level")
def test_nothing_missing(report, module):
    prefix = "dlopt." + module + "." if module else "dlopt."
    missing = {
        p.removeprefix(prefix)
        for p in report.missing
        if p.startswith(prefix) and (module or p.count(".") == 1)
    }
    pending = _pending(module)
    if "*" in pending:
        return  # the whole module comes with another branch
    assert missing <= pending, f"dlopt lacks {sorted(missing - pending)} of optax.{module}"


def test_nothing_signed_differently(report):
    assert report.mismatched == {}, compat.format_report(report)


def test_deliberate_differences_name_real_optax_names():
    optax = importlib.import_module("optax")
    for module, name in compat.DELIBERATE:
        theirs = importlib.import_module("optax." + module if module else "optax")
        assert hasattr(theirs, name), f"DELIBERATE lists optax.{module}.{name}, which optax lacks"
    assert optax.__version__


def test_signature_differences_are_found():
    def theirs(a, b=1.0, *, c=None):
        return a, b, c

    def ours_ok(a, b=1.0, c=None, *, extra=2):
        return a, b, c, extra

    def ours_bad(a, *, b=1.0, extra):
        return a, b, extra

    assert compat.signature_differences(ours_ok, theirs) == []
    diffs = compat.signature_differences(ours_bad, theirs)
    assert any("'b' is keyword-only" in d for d in diffs)
    assert any("lacks parameter 'c'" in d for d in diffs)
    assert any("'extra' has no default" in d for d in diffs)


def test_main_exit_code_says_whether_anything_is_missing(capsys, monkeypatch):
    assert compat.main(["schedules"]) == 0
    out = capsys.readouterr().out
    assert "optax.schedules: 21 names" in out and "missing in dlopt: 0" in out
    real = compat.public_names
    monkeypatch.setattr(compat, "public_names", lambda m: [*real(m), "no_such_name"])
    assert compat.main(["schedules"]) == 1
    assert "dlopt.schedules.no_such_name" in capsys.readouterr().out
