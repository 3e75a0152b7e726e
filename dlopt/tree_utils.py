# ruff: noqa: F401  (re-exports under optax's tree_ names; __all__ lists them)
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

from dlopt.tree import add as tree_add
from dlopt.tree import add_scale as tree_add_scale
from dlopt.tree import allclose as tree_allclose
from dlopt.tree import batch_shape as tree_batch_shape
from dlopt.tree import bias_correction as tree_bias_correction
from dlopt.tree import cast as tree_cast
from dlopt.tree import cast_like as tree_cast_like
from dlopt.tree import clip as tree_clip
from dlopt.tree import conj as tree_conj
from dlopt.tree import div as tree_div
from dlopt.tree import dtype as tree_dtype
from dlopt.tree import full_like as tree_full_like
from dlopt.tree import get as tree_get
from dlopt.tree import get_all_with_path as tree_get_all_with_path
from dlopt.tree import map_params as tree_map_params
from dlopt.tree import max as tree_max
from dlopt.tree import min as tree_min
from dlopt.tree import mul as tree_mul
from dlopt.tree import norm as tree_norm
from dlopt.tree import ones_like as tree_ones_like
from dlopt.tree import random_like as tree_random_like
from dlopt.tree import real as tree_real
from dlopt.tree import scale as tree_scale
from dlopt.tree import set as tree_set
from dlopt.tree import size as tree_size
from dlopt.tree import split_key_like as tree_split_key_like
from dlopt.tree import sub as tree_sub
from dlopt.tree import sum as tree_sum
from dlopt.tree import unwrap_random_key_data as tree_unwrap_random_key_data
from dlopt.tree import update_infinity_moment as tree_update_infinity_moment
from dlopt.tree import update_moment as tree_update_moment
from dlopt.tree import update_moment_per_elem_norm as tree_update_moment_per_elem_norm
from dlopt.tree import vdot as tree_vdot
from dlopt.tree import where as tree_where
from dlopt.tree import zeros_like as tree_zeros_like
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
