"""Importing a module of the benchmarks folder (not a package on the test path)."""

from __future__ import annotations

import importlib
import pathlib
import sys
from types import ModuleType

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    """``benchmarks.<name>``, imported with the repository root on ``sys.path`` for the
    import only."""
    sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        sys.path.remove(str(ROOT))
