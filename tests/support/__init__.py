"""Support modules shared by the test files (no test module imports another one).

`TESTS` is the tests/ folder and `ROOT` the repository, wherever a test file sits below them.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
