"""The test suite's own layout: test modules share code only through support modules.

No file under tests/ imports a ``test_*`` module (shared problems, models and helpers live in
helpers.py, cases_*.py and support/), and test file names are unique across folders, as
pytest's default (prepend) import mode requires.
"""

from __future__ import annotations

import ast
from collections import Counter

from support import TESTS

FILES = sorted(TESTS.rglob("*.py"))


def imported_modules(path) -> set[str]:
    """The top-level module names that ``path`` imports (absolute imports only)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_layout_is_found():
    assert TESTS / "test_suite_layout.py" in FILES and len(FILES) > 10


def test_no_file_imports_a_test_module():
    offenders = {
        str(path.relative_to(TESTS)): sorted(
            m for m in imported_modules(path) if m.startswith("test_")
        )
        for path in FILES
    }
    offenders = {path: mods for path, mods in offenders.items() if mods}
    assert not offenders, f"move the shared names into helpers.py or support/: {offenders}"


def test_imported_modules_sees_test_imports(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("import test_a\nfrom test_b.x import y\nfrom . import test_c\nimport dlopt\n")
    assert imported_modules(bad) == {"test_a", "test_b", "dlopt"}


def test_test_file_names_are_unique():
    counts = Counter(path.name for path in FILES if path.name.startswith("test_"))
    assert not [name for name, n in counts.items() if n > 1], counts.most_common(3)
