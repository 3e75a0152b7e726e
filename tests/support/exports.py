"""What dlopt exports: the public factories that return a GradientTransformation."""

from __future__ import annotations

import functools
import inspect

import dlopt


def exported_transform_factories() -> set[str]:
    """Public dlopt functions (or aliases of them), defined in dlopt, returning a transform."""
    names = set()
    for name, obj in vars(dlopt).items():
        fn = obj.func if isinstance(obj, functools.partial) else obj  # aliases (nadam)
        if name.startswith("_") or not inspect.isfunction(fn):
            continue
        if not (fn.__module__ or "").startswith("dlopt"):
            continue
        if "GradientTransformation" in str(inspect.signature(obj).return_annotation):
            names.add(name)
    return names
