"""pytest plugin: optax modules seen through proxies that resolve shared names to dlopt's.

Loaded with ``-p benchmarks.optax_suite.plugin``. Before any test module is imported, every
(non-test) optax module in ``sys.modules`` is replaced by a `Proxy`, and so is its attribute
on the parent package; modules optax itself imported earlier keep their real references.
At the end of the session the swapped names are written to ``$DLOPT_SWAP_LOG`` (JSON).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import sys
import types
from pathlib import Path
from typing import Any

SWAPPED: dict[str, set[str]] = {}


def _is_function(value: Any) -> bool:
    return inspect.isfunction(value) or isinstance(value, functools.partial)


# Names of optax's private modules that dlopt keeps in a submodule rather than at its top level
# (``optax._src.utils.MultiNormalDiagFromLogScale``, what ``multi_normal`` returns).
ELSEWHERE = {"MultiNormalDiagFromLogScale": "dlopt.perturbations"}


def counterpart(module_name: str) -> types.ModuleType | None:
    """The dlopt module whose names stand in for optax module ``module_name``'s: the same
    public submodule (``optax.losses._regression`` -> ``dlopt.losses``,
    ``optax.tree_utils._tree_math`` -> ``dlopt.tree_utils``), else dlopt's top level
    (``optax._src.alias``). optax's pytree modules are swapped only by dlopt's of the same path
    (``optax.tree.scale`` is not the transform ``dlopt.scale``)."""
    parts = module_name.split(".")
    if len(parts) < 2 or parts[1].startswith("_"):
        return importlib.import_module("dlopt")
    try:
        return importlib.import_module("dlopt." + parts[1])
    except ImportError:
        if parts[1] in ("tree", "tree_utils"):
            return None
        return importlib.import_module("dlopt")


def _evaluated(fn: Any) -> Any:
    """``fn`` with its signature's annotations evaluated (set once as ``__signature__``).

    dlopt's modules postpone annotations (strings); optax's tests that check
    ``annotation in (optax.ScalarOrSchedule, optax.Schedule)`` (ScheduleAsLearningRateTest)
    see dlopt's ``ScalarOrSchedule``, which compares equal to optax's.
    """
    target = fn.func if isinstance(fn, functools.partial) else fn
    if "__signature__" not in vars(target):
        try:
            target.__signature__ = inspect.signature(target, eval_str=True)
        except Exception:  # noqa: BLE001 - an annotation that needs TYPE_CHECKING imports
            pass
    return fn


class Proxy(types.ModuleType):
    """A module that answers with dlopt's function or class wherever dlopt exports the same
    name, as ``import dlopt as optax`` would: ``optax.GradientTransformation``,
    ``optax.EmptyState``, ``optax.MaskedNode`` and the state classes are dlopt's, so a test's
    ``isinstance`` checks and expected trees meet the objects dlopt's functions return."""

    def __init__(self, real: types.ModuleType):
        super().__init__(real.__name__, real.__doc__)
        dlopt = counterpart(real.__name__)
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_dlopt", dlopt)
        for name in ("__file__", "__path__", "__spec__", "__loader__", "__package__"):
            if hasattr(real, name):
                object.__setattr__(self, name, getattr(real, name))

    def __getattr__(self, name: str) -> Any:
        real, dlopt = self._real, self._dlopt
        value = getattr(real, name)
        if isinstance(value, types.ModuleType) and value.__name__.startswith("optax"):
            return sys.modules.get(value.__name__, value)
        if name.startswith("_") or dlopt is None:
            return value
        ours = getattr(dlopt, name, None)
        if ours is None and name in ELSEWHERE:
            ours = getattr(importlib.import_module(ELSEWHERE[name]), name, None)
        kinds = (_is_function, inspect.isclass)
        if ours is not None and ours is not value and any(k(value) and k(ours) for k in kinds):
            SWAPPED.setdefault(real.__name__, set()).add(name)
            return _evaluated(ours) if _is_function(ours) else ours
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._real, name, value)

    def __dir__(self) -> list[str]:
        return dir(self._real)


def install() -> int:
    """Imports every non-test optax module and puts a `Proxy` in its place; returns the count."""
    import optax

    root = Path(optax.__file__).parent  # optax._src is a namespace package: walk files
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if not name.endswith("_test") and ".experimental" not in name:
            parts = name.split(".")  # and every package above it (namespace ones too)
            names += [".".join(parts[: i + 1]) for i in range(len(parts))]
    names = sorted(set(names), key=lambda n: (n.count("."), n))  # packages first
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - optional optax modules (missing extras)
            continue
    proxies = {}
    for name in names:
        real = sys.modules.get(name)
        if isinstance(real, types.ModuleType) and not isinstance(real, Proxy):
            proxies[name] = Proxy(real)
    for name, proxy in proxies.items():
        sys.modules[name] = proxy
        parent, _, child = name.rpartition(".")
        if parent in proxies:
            setattr(proxies[parent]._real, child, proxy)
    return len(proxies)


def pytest_configure(config) -> None:
    install()


def pytest_sessionfinish(session, exitstatus) -> None:
    path = os.environ.get("DLOPT_SWAP_LOG")
    if path:
        with open(path, "w") as f:
            json.dump({k: sorted(v) for k, v in SWAPPED.items()}, f, indent=1)
