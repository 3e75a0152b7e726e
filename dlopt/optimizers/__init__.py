"""Optimizer families, one per file: state, ``scale_by_*`` building block, aliases."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def alias(parent: Callable[..., Any], name: str, doc: str, **fixed: Any) -> Callable[..., Any]:
    """``parent`` with the defaults of ``fixed`` changed: a `functools.partial` (optax's own
    form for ``nadam``), so the signature is the parent's and is written once.

    Example:
        >>> import dlopt
        >>> dlopt.nadam.func is dlopt.adam, dlopt.nadam.keywords
        (True, {'nesterov': True})
    """
    fn = functools.partial(parent, **fixed)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = parent.__module__
    fn.__doc__ = doc
    return fn
