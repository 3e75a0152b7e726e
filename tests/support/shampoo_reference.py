"""The reference Shampoo (google-research ``scalable_shampoo``, package ``optax-shampoo``
0.0.6) run on today's jax: compatibility shims kept in the tests, never in dlopt.

The reference predates jax 0.10: it calls ``jax.tree_map``/``jax.tree_flatten``/
``jax.tree_unflatten`` (removed), starts two ``lax.while_loop`` carries with a Python bool
where the body returns a float (the Newton iteration's error ratio) and passes a float
predicate to ``lax.cond``. `reference_shims` puts the tree functions back on ``jax`` for the
duration, and gives the reference module a ``lax`` whose ``while_loop`` casts the initial
carry to the body's output dtypes and whose ``cond`` takes ``pred != 0``.
"""

from __future__ import annotations

import contextlib
import types

import jax
import jax.numpy as jnp
from jax import lax
from optax_shampoo import distributed_shampoo as reference

_TREE = {
    "tree_map": jax.tree.map,
    "tree_flatten": jax.tree.flatten,
    "tree_unflatten": jax.tree.unflatten,
    "tree_leaves": jax.tree.leaves,
}


def _while_loop(cond_fun, body_fun, init_val):
    init_val = jax.tree.map(jnp.asarray, init_val)
    out = jax.eval_shape(body_fun, init_val)
    init_val = jax.tree.map(lambda x, o: x.astype(o.dtype), init_val, out)
    return lax.while_loop(cond_fun, body_fun, init_val)


def _cond(pred, *args, **kwargs):
    return lax.cond(jnp.asarray(pred) != 0, *args, **kwargs)


_LAX = types.SimpleNamespace(
    **{name: getattr(lax, name) for name in dir(lax) if not name.startswith("_")}
)
_LAX.while_loop = _while_loop
_LAX.cond = _cond


@contextlib.contextmanager
def reference_shims():
    """The reference module, runnable while the context is open (trace inside it)."""
    added = [name for name in _TREE if name not in vars(jax)]
    for name in added:
        setattr(jax, name, _TREE[name])
    saved = reference.lax
    reference.lax = _LAX
    try:
        yield reference
    finally:
        reference.lax = saved
        for name in added:
            delattr(jax, name)
