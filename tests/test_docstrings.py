"""Every docstring example in dlopt/ runs and prints what it shows, as a reader would paste it.

One test per module with examples. Each docstring runs in a fresh namespace (not the module's
globals), so an example imports every name it uses; NORMALIZE_WHITESPACE and ELLIPSIS are on
for all of them. They run under JAX's default numerics, as a reader's session would, not the
suite's strict promotion (tests/conftest.py).
"""

from __future__ import annotations

import doctest
import importlib
import pathlib

import jax
import pytest

import dlopt

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
ROOT = pathlib.Path(dlopt.__file__).parent
MODULES = sorted(
    ".".join(("dlopt", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
    for path in ROOT.rglob("*.py")
    if ">>>" in path.read_text()
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, globs={"__name__": name})
    assert sum(len(test.examples) for test in tests) > 0, f"{name}: no example found"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for test in tests:
            runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
