"""optax.tree_utils: the `dlopt.tree` functions under their ``tree_`` names
(``tree_norm`` is `dlopt.tree.norm`, one definition each), plus `NamedTupleKey`.

optax's deprecated spellings resolve too, with a ``DeprecationWarning``: ``tree_scalar_mul``
(``tree_scale``), ``tree_add_scalar_mul`` (``tree_add_scale``), ``tree_l1_norm``,
``tree_l2_norm``, ``tree_linf_norm`` (``tree_norm`` with ``ord`` 1, 2, ``"inf"``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

from dlopt.tree import add_scale as tree_add_scale
from dlopt.tree import norm as tree_norm
from dlopt.tree import scale as tree_scale
from dlopt.tree.state import NamedTupleKey as NamedTupleKey

__all__ = [name for name in dir() if name.startswith("tree_")] + ["NamedTupleKey"]

_DEPRECATED = {
    "tree_scalar_mul": ("tree_scale", tree_scale),
    "tree_add_scalar_mul": ("tree_add_scale", tree_add_scale),
    "tree_l1_norm": ("tree_norm(..., ord=1)", functools.partial(tree_norm, ord=1)),
    "tree_l2_norm": ("tree_norm", functools.partial(tree_norm, ord=2)),
    "tree_linf_norm": ("tree_norm(..., ord='inf')", functools.partial(tree_norm, ord="inf")),
}


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        new, value = _DEPRECATED[name]
        warnings.warn(
            f"dlopt.tree_utils.{name} is deprecated (as in optax): use dlopt.tree_utils.{new}.",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
