"""`python -m dlopt.compat`: every public optax name resolves at dlopt's same path, signed as
optax signs it (or listed in `dlopt.compat.DELIBERATE`)."""

from __future__ import annotations

import importlib

import pytest

from dlopt import compat

pytest.importorskip("optax")


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
    assert not missing, f"dlopt lacks {sorted(missing)} of optax.{module}"


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
