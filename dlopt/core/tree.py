"""Pytree math shared by the update rules: state buffers, norms, tree checks.

Each rule is written for one array and lifted to pytrees once with `jax.tree.map` or
`map_unzip`. ``None`` leaves are empty subtrees in JAX, so they pass through every helper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax.tree_util import DictKey, GetAttrKey, keystr, tree_flatten_with_path

INT32_MAX = jnp.iinfo(jnp.int32).max


def safe_increment(count: chex.Numeric) -> chex.Numeric:
    """``count + 1``, saturating at the dtype's maximum instead of wrapping to its minimum.

    Integer and floating counters (``iinfo``/``finfo`` max); other dtypes raise.

    >>> import jax.numpy as jnp
    >>> from dlopt.core.tree import safe_increment
    >>> safe_increment(jnp.asarray(2147483647, dtype=jnp.int32))
    Array(2147483647, dtype=int32)
    """
    count_dtype = jnp.asarray(count).dtype
    if jnp.issubdtype(count_dtype, jnp.integer):
        max_value = jnp.iinfo(count_dtype).max
    elif jnp.issubdtype(count_dtype, jnp.floating):
        max_value = jnp.finfo(count_dtype).max
    else:
        raise ValueError(
            f"count must have an integer or floating dtype to be incremented safely, got "
            f"{count_dtype}; keep step counters as int32 (jnp.zeros([], jnp.int32))."
        )
    max_value = jnp.array(max_value, count_dtype)
    return jnp.where(count < max_value, count + jnp.array(1, count_dtype), max_value)


@jax.tree_util.register_pytree_node_class
class ParamsPlaceholder:
    """A leafless pytree node that stands for the params when `dlopt.tree.map_params` probes
    an ``init`` for the params-shaped parts of its state; `dlopt.masked` passes it to its
    inner transform unmasked (a mask cannot be laid over it), as optax's ``masked`` does."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux, children
        return cls()


def dtype_of(x: Any) -> Any:
    """The dtype of an array, a Python number or an abstract ``jax.ShapeDtypeStruct``."""
    return jnp.dtype(x.dtype) if hasattr(x, "dtype") else jnp.result_type(x)


def as_arrays(tree: chex.ArrayTree) -> chex.ArrayTree:
    """``tree`` with each Python number leaf (``{"w": 1.0}``) made a 0-d array, as optax
    accepts them; arrays, abstract leaves and None pass unchanged."""
    return jax.tree.map(
        lambda x: jnp.asarray(x) if isinstance(x, int | float | complex) else x, tree
    )


def zeros_like(tree: chex.ArrayTree, dtype: Any | None = None) -> chex.ArrayTree:
    """A tree of zeros shaped like ``tree``, in ``dtype`` or each leaf's own dtype.

    Each leaf keeps its parameter's sharding (``jnp.zeros_like``), so optimizer state is
    sharded like the params; abstract params (``jax.ShapeDtypeStruct``) are accepted.
    """
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=dtype or dtype_of(p)), tree)


def moment_dtype_for(dtype: Any | None, p: Any) -> Any:
    """The storage dtype of ``p``'s moment: ``dtype`` (default ``p``'s), made complex of the
    same precision for a complex ``p`` (a real buffer would drop the imaginary part)."""
    param_dtype = dtype_of(p)
    if dtype is None:
        return param_dtype
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(param_dtype, jnp.complexfloating) and not jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        return jnp.dtype(jnp.complex128 if dtype.itemsize >= 8 else jnp.complex64)
    return dtype


def moments_like(params: chex.ArrayTree, dtype: Any | None = None) -> chex.ArrayTree:
    """Zero-initialised optimizer moments for ``params`` in ``dtype`` (complex for complex
    params), sharded like them; rejects non-floating params."""
    check_float_params(params)
    return jax.tree.map(lambda p: jnp.zeros_like(p, dtype=moment_dtype_for(dtype, p)), params)


def full_like(
    tree: chex.ArrayTree, fill_value: chex.Numeric, dtype: Any | None = None
) -> chex.ArrayTree:
    """A tree filled with ``fill_value``, shaped like ``tree``, in ``dtype`` or each leaf's."""
    return jax.tree.map(lambda p: jnp.full_like(p, fill_value, dtype=dtype or dtype_of(p)), tree)


def copy(params: chex.ArrayTree, dtype: Any | None = None) -> chex.ArrayTree:
    """A fresh copy of each leaf, in ``dtype`` or the leaf's own: state that starts as the
    params (schedule-free's ``z``, Prodigy's ``x_0``) gets its own buffer, so params and state
    can both be donated to a jitted step. Keeps each leaf's sharding; a
    ``jax.ShapeDtypeStruct`` leaf gives a ``ShapeDtypeStruct`` (for planning state shapes)."""

    def one(p):
        d = dtype or dtype_of(p)
        if isinstance(p, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(p.shape, d, sharding=p.sharding)
        return jnp.array(p, dtype=d, copy=True)

    return jax.tree.map(one, params)


def cast(tree: chex.ArrayTree, dtype: Any | None) -> chex.ArrayTree:
    """Casts every leaf to ``dtype``; ``None`` leaves the tree as it is."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda x: jnp.asarray(x).astype(dtype), tree)


def cast_like(tree: chex.ArrayTree, other_tree: chex.ArrayTree) -> chex.ArrayTree:
    """Casts each leaf of ``tree`` to the dtype of the matching leaf of ``other_tree``; a leaf
    whose reference has no ``dtype`` (a Python number) is left as it is."""
    return jax.tree.map(
        lambda x, r: jnp.asarray(x).astype(r.dtype) if hasattr(r, "dtype") else x, tree, other_tree
    )


def scalar_like(value: chex.Numeric, x: chex.Array) -> chex.Array:
    """``value`` as a 0-d array of ``x``'s dtype (hyperparameters may arrive as f32 arrays)."""
    return jnp.asarray(value).astype(dtype_of(x))


def map_unzip(fn: Callable[..., tuple], tree: chex.ArrayTree, *rest: chex.ArrayTree) -> tuple:
    """Maps ``fn`` returning a tuple over leaves; returns a tuple of trees shaped like ``tree``.

    Example: ``updates, mu = map_unzip(lambda g, m: (g + m, m), grads, mu)``.
    """
    leaves, treedef = jax.tree.flatten(tree)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    outputs = [fn(*args) for args in zip(leaves, *rest_leaves, strict=True)]
    if not outputs:
        return ()
    return tuple(treedef.unflatten(list(column)) for column in zip(*outputs, strict=True))


def _paths(tree: chex.ArrayTree) -> dict[str, Any]:
    return {keystr(path): leaf for path, leaf in tree_flatten_with_path(tree)[0]}


def _is_leaf(x: Any) -> bool:
    return jax.tree_util.treedef_is_leaf(jax.tree.structure(x))


def check_matching_trees(a: chex.ArrayTree, b: chex.ArrayTree, name_a: str, name_b: str) -> None:
    """Raises ``ValueError`` naming the first path where ``a`` and ``b`` differ in structure
    or shape. Runs at trace time only (pure Python on the tree structure)."""
    paths_a, paths_b = _paths(a), _paths(b)
    if paths_a.keys() != paths_b.keys() or jax.tree.structure(a) != jax.tree.structure(b):
        only_a = sorted(paths_a.keys() - paths_b.keys())
        only_b = sorted(paths_b.keys() - paths_a.keys())
        containers = not (_is_leaf(a) or _is_leaf(b))
        if type(a) is not type(b) and containers and not (a is None or b is None):
            where = f"{name_a} is a {type(a).__name__} and {name_b} a {type(b).__name__}"
        elif only_a:
            where = f"{name_a} has {only_a[0] or 'a leaf at the root'} that {name_b} lacks"
        elif only_b:
            where = f"{name_b} has {only_b[0] or 'a leaf at the root'} that {name_a} lacks"
        else:
            where = f"the containers differ: {jax.tree.structure(a)} vs {jax.tree.structure(b)}"
        raise ValueError(
            f"{name_a} and {name_b} must have the same tree structure, but {where}. "
            f"Compute {name_b} from the same pytree as {name_a} (e.g. jax.grad of a function "
            f"of {name_a})."
        )
    for path, leaf_a in paths_a.items():
        shape_a, shape_b = jnp.shape(leaf_a), jnp.shape(paths_b[path])
        if shape_a != shape_b:
            raise ValueError(
                f"{name_a} and {name_b} differ in shape at {path}: {shape_a} vs {shape_b}."
            )


def check_float_params(params: chex.ArrayTree) -> None:
    """Raises ``TypeError`` naming the first non-floating leaf of ``params``."""
    for path, leaf in tree_flatten_with_path(params)[0]:
        dtype = dtype_of(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"params must be floating point, but params{keystr(path)} has dtype {dtype}. "
                "Cast it (e.g. jax.tree.map(lambda x: x.astype(jnp.float32), params)) or keep "
                "integer leaves out of the optimized tree."
            )


def unshard(x: chex.Array) -> tuple[chex.Array, Callable[[chex.Array], chex.Array]]:
    """``x`` replicated, and the function that gives a result ``x``'s sharding back.

    Under JAX's explicit sharding a contraction over a sharded axis (``x @ x.T``, a
    ``tensordot``) has no unambiguous output sharding and raises; matrix rules (Muon's
    Newton-Schulz, SOAP's rotations) gather the leaf first and reshard what they return, so
    state and updates keep the parameters' sharding types. Without explicit sharding (no
    mesh, or ``Auto`` axes) both are the identity.
    """
    spec = jax.typeof(x).sharding.spec
    if all(axis is None for axis in spec):
        return x, lambda y: y
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec()), (
        lambda y: jax.sharding.reshard(y, spec)
    )


# --- key paths: `keystr` (``['a']['b']``) in messages, `path_name` (``a/b``) as identifiers

# Attribute names that wrap a parameter rather than name it (flax.nnx Variables' ``.value``).
WRAPPER_NAMES = frozenset({"value", "raw_value"})


def path_name(path: tuple) -> str:
    """A key path from ``jax.tree_util.tree_flatten_with_path`` as ``"a/b/0/kernel"``: dict
    keys, attribute names and sequence indices joined by "/" (a NamedTuple and the dict it
    restores to read the same). The one identifier form of a path (checkpoint fingerprints,
    `path_labels`); messages use ``jax.tree_util.keystr``."""
    parts = []
    for key in path:
        for attr in ("name", "key", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def strip_wrappers(path: tuple) -> tuple:
    """``path`` without its trailing `WRAPPER_NAMES` attributes (nnx's ``.value``)."""
    path = tuple(path)
    while path and isinstance(path[-1], GetAttrKey) and path[-1].name in WRAPPER_NAMES:
        path = path[:-1]
    return path


def leaf_name(path: tuple) -> str | None:
    """The leaf's own name (its dict key or attribute, nnx's ``.value`` skipped), or None
    for an unnamed leaf (a sequence entry, the root)."""
    path = strip_wrappers(path)
    if not path:
        return None
    key = path[-1]
    name = key.key if isinstance(key, DictKey) else getattr(key, "name", None)
    return None if name is None else str(name)


# --- finding parts of an optimizer state


def _children(node: Any) -> list:
    """``node``'s direct children in JAX's flattening order (dicts by sorted key)."""
    children = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)[0]
    return [] if len(children) == 1 and children[0] is node else children


def find_nodes(tree: Any, match: Callable[[Any], bool]) -> list:
    """Every node of ``tree`` (NamedTuples, dicts, lists and any other pytree node, e.g. an
    optimizer state nested in chains and wrappers) for which ``match`` holds, outermost
    first, siblings in JAX's flattening order; the search goes on inside a matching node."""
    found: list = []

    def visit(node: Any) -> None:
        if match(node):
            found.append(node)
        for child in _children(node):
            visit(child)

    visit(tree)
    return found


def _has_field(node: Any, name: str) -> bool:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return name in node._fields
    return isinstance(node, dict) and name in node


def find_fields(tree: Any, name: str) -> list:
    """Every field or dict entry called ``name`` in ``tree`` (see `find_nodes`), outermost
    first. The one way dlopt finds a part of an optimizer state by name."""
    nodes = find_nodes(tree, lambda node: _has_field(node, name))
    return [node[name] if isinstance(node, dict) else getattr(node, name) for node in nodes]
