"""Finding, replacing and mapping over parts of an optimizer state (optax.tree.get, set,
get_all_with_path, map_params), with optax's key paths: a NamedTuple field appears in a path
as a `NamedTupleKey` (its class name and the field), so two states with a field of the same
name (``count`` in a chain) can be told apart by a ``filtering(path, value)`` callable.

A node matches ``key`` when it is a dict with that key, a NamedTuple with that field, or a
NamedTuple whose class is called ``key``. (`dlopt.core.tree.find_fields` is dlopt's own
path-free search, used inside the library.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from dlopt.core.tree import ParamsPlaceholder


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """A key-path entry for a NamedTuple field: ``tuple_name`` (the class name) and ``name``
    (the field); prints as ``"ScaleByAdamState.mu"``."""

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


KeyPath = tuple[Any, ...]


def _is_named_tuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _has_keys(node: Any, keys: tuple) -> bool:
    if _is_named_tuple(node):
        return any(k in node._fields for k in keys) or type(node).__name__ in keys
    return isinstance(node, dict) and any(k in node for k in keys)


def _leaves_with_path(tree: Any, is_leaf: Callable[[Any], bool]) -> list[tuple[KeyPath, Any]]:
    """``jax.tree_util.tree_leaves_with_path`` stopping at ``is_leaf`` nodes, with each
    NamedTuple field's entry a `NamedTupleKey`."""
    out = []
    for path, node in jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: is_leaf(x) or _is_named_tuple(x)
    ):
        if is_leaf(node) or not _is_named_tuple(node):
            out.append((path, node))
            continue
        for field in node._fields:
            key = NamedTupleKey(type(node).__name__, field)
            for child_path, child in _leaves_with_path(getattr(node, field), is_leaf):
                out.append(((*path, key, *child_path), child))
    return out


def _children(path: KeyPath, node: Any) -> list[tuple[KeyPath, Any]]:
    if _is_named_tuple(node):
        name = type(node).__name__
        return [((*path, NamedTupleKey(name, f)), getattr(node, f)) for f in node._fields]
    return [((*path, DictKey(k)), v) for k, v in node.items()]


def _all_with_path(tree: Any, key: Any) -> list[tuple[KeyPath, Any]]:
    def has_key(node):
        return _has_keys(node, (key,))

    subtrees = [(p, n) for p, n in _leaves_with_path(tree, has_key) if has_key(n)]
    found = []
    for path, node in subtrees:
        if _is_named_tuple(node) and type(node).__name__ == key:
            found.append((path, node))
        elif _is_named_tuple(node):
            found.append(((*path, NamedTupleKey(type(node).__name__, key)), getattr(node, key)))
        else:
            found.append(((*path, DictKey(key)), node[key]))
    for path, node in subtrees:
        for child_path, child in _children(path, node):
            found += [((*child_path, *p), v) for p, v in _all_with_path(child, key)]
    return found


def get_all_with_path(
    tree: Any, key: Any, filtering: Callable[[KeyPath, Any], bool] | None = None
) -> list[tuple[KeyPath, Any]]:
    """Every ``(path, value)`` in ``tree`` under ``key`` (a dict key, a NamedTuple field or
    a NamedTuple class name), kept only where ``filtering(path, value)`` holds if given.

    >>> import jax, jax.numpy as jnp
    >>> import dlopt
    >>> state = dlopt.adam(1e-3).init(jnp.zeros(2))
    >>> [jax.tree_util.keystr(p) for p, _ in dlopt.tree.get_all_with_path(state, "count")]
    ['[0]ScaleByAdamState.count']
    """
    found = _all_with_path(tree, key)
    if filtering:
        found = [(path, value) for path, value in found if filtering(path, value)]
    return found


def get(
    tree: Any,
    key: Any,
    default: Any | None = None,
    filtering: Callable[[KeyPath, Any], bool] | None = None,
) -> Any:
    """The one value of ``tree`` under ``key`` (see `get_all_with_path`), ``default`` if
    there is none; ``KeyError`` if there are several (narrow them with ``filtering``)."""
    found = get_all_with_path(tree, key, filtering=filtering)
    if len(found) > 1:
        raise KeyError(f"Found multiple values for '{key}' in {tree}.")
    return found[0][1] if found else default


def _key_of(entry: Any) -> Any:
    if isinstance(entry, DictKey):
        if isinstance(entry.key, str | int):
            return entry.key
        raise KeyError("Hashable keys not supported")
    if isinstance(entry, FlattenedIndexKey):
        return entry.key
    if isinstance(entry, GetAttrKey | NamedTupleKey):
        return entry.name
    if isinstance(entry, SequenceKey):
        return entry.idx
    raise KeyError(f"Tree key '{entry}' of type '{type(entry)}' not valid.")


def set(  # noqa: A001 - optax's name
    tree: Any, filtering: Callable[[KeyPath, Any], bool] | None = None, /, **kwargs: Any
) -> Any:
    """A copy of ``tree`` with the value under each key of ``kwargs`` replaced (where
    ``filtering(path, value)`` holds, if given); ``KeyError`` for a key found nowhere.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> state = dlopt.tree.set(dlopt.adam(1e-3).init(jnp.zeros(2)), count=jnp.asarray(5))
    >>> print(dlopt.tree.get(state, "count"))
    5
    """
    for key in kwargs:
        if not get_all_with_path(tree, key, filtering):
            given = " given the filtering operation" if filtering else ""
            raise KeyError(f"Found no values matching '{key}'{given} in {tree}")
    keys = tuple(kwargs)

    def has_any_key(node):
        return _has_keys(node, keys)

    def replace(path: KeyPath, node: Any) -> Any:
        if not has_any_key(node):
            return node
        if (
            _is_named_tuple(node)
            and type(node).__name__ in kwargs
            and (filtering is None or filtering(path, node))
        ):
            return kwargs[type(node).__name__]
        new = {}
        for child_path, child in _children(path, node):
            key = _key_of(child_path[-1])
            if key in kwargs and (filtering is None or filtering(child_path, child)):
                new[key] = kwargs[key]
            elif isinstance(child, dict | list | tuple):
                new[key] = replace(child_path, child)
            else:
                new[key] = child
        return node._replace(**new) if _is_named_tuple(node) else new

    treedef = jax.tree.structure(tree, is_leaf=has_any_key)
    return treedef.unflatten(replace(p, n) for p, n in _leaves_with_path(tree, has_any_key))


@runtime_checkable
class Initable(Protocol):
    """An object with an ``init(params) -> state`` method (a GradientTransformation)."""

    def init(self, params: Any) -> Any: ...


def map_params(
    initable: Callable[[Any], Any] | Initable,
    f: Callable[..., Any],
    state: Any,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """``f`` mapped over every copy of the params tree inside optimizer ``state`` (with the
    matching leaves of ``rest``), ``transform_non_params`` applied to every other state leaf.

    The copies are found by running ``initable`` (a transformation or its ``init``) on a
    placeholder: the state's entries that come out as the placeholder are params-shaped. A
    part of the state built from a masked or reshaped params tree (``masked``) holds no
    placeholder and counts as non-params, as in optax: `dlopt.masked` hands the placeholder
    to its inner transform unmasked, so its inner state is mapped, with ``MaskedNode`` leaves
    where the mask is False (pass ``is_leaf`` to stop ``f`` at them). Typical use: sharding
    specs for a state from the params' specs.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> opt = dlopt.adam(1e-3)
    >>> state = opt.init({"w": jnp.zeros(2)})
    >>> specs = dlopt.tree.map_params(
    ...     opt, lambda p: "W", state, transform_non_params=lambda _: None
    ... )
    >>> specs[0].mu, specs[0].count
    ({'w': 'W'}, None)
    """
    placeholder = ParamsPlaceholder()
    init = initable.init if isinstance(initable, Initable) else initable
    probe = init(placeholder)

    def map_one(maybe_placeholder: Any, value: Any) -> Any:
        if isinstance(maybe_placeholder, ParamsPlaceholder):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        return value if transform_non_params is None else transform_non_params(value)

    return jax.tree.map(map_one, probe, state, is_leaf=lambda v: isinstance(v, ParamsPlaceholder))
