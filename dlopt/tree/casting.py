"""The dtype of a pytree (optax.tree.dtype); casting itself lives in `dlopt.core.tree`."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp


def _lower(dtype1: Any, dtype2: Any) -> Any:
    """The one of two dtypes that promotes to the other; raises if neither does."""
    promoted = jnp.promote_types(dtype1, dtype2)
    if promoted == dtype1:
        return dtype2
    if promoted == dtype2:
        return dtype1
    raise ValueError(
        f"Cannot compare dtype of dtype1={dtype1!r} and dtype2={dtype2!r}. Neither {dtype1} nor "
        f"{dtype2} can be promoted to the other; use mixed_dtype_handler='promote'."
    )


def _higher(dtype1: Any, dtype2: Any) -> Any:
    return dtype2 if _lower(dtype1, dtype2) == dtype1 else dtype1


_HANDLERS = {"promote": jnp.promote_types, "highest": _higher, "lowest": _lower}


def dtype(tree: Any, mixed_dtype_handler: str | None = None) -> jax.typing.DTypeLike:
    """The dtype of ``tree``'s leaves (JAX's default dtype for an empty tree).

    With leaves of several dtypes, ``mixed_dtype_handler`` decides: None raises, naming each
    odd leaf; ``"promote"`` gives ``jnp.promote_types`` of all; ``"highest"``/``"lowest"``
    the largest/smallest under the order "d1 <= d2 if d1 promotes to d2" (raising for two
    dtypes neither promotes to, e.g. int32 and uint32).

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> tree = {"a": jnp.ones(2, jnp.float16), "b": jnp.ones(2, jnp.float32)}
    >>> dlopt.tree.dtype(tree, "lowest"), dlopt.tree.dtype(tree, "highest")
    (dtype('float16'), dtype('float32'))
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(leaves).dtype
    dtypes = [jnp.asarray(x).dtype for x in leaves]
    if mixed_dtype_handler is None:
        errors = [
            f"Expected dtype={dtypes[0]!r} for {jax.tree_util.keystr(path)} but got {d}."
            for (path, _), d in zip(jax.tree_util.tree_leaves_with_path(tree), dtypes, strict=True)
            if d != dtypes[0]
        ]
        if errors:
            raise ValueError("\n".join(errors))
        return dtypes[0]
    if mixed_dtype_handler not in _HANDLERS:
        raise ValueError(
            f"Invalid value for mixed_dtype_handler={mixed_dtype_handler!r}, possible values "
            'are: None, "promote", "highest", "lowest".'
        )
    return functools.reduce(_HANDLERS[mixed_dtype_handler], dtypes)
