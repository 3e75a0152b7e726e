"""Parameter-tree helpers beside `apply_updates`: target-network updates (`incremental_update`,
`periodic_update`) and `scale_gradient` (identity forward, scaled backward)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def incremental_update(
    new_tensors: chex.ArrayTree, old_tensors: chex.ArrayTree, step_size: chex.Numeric
) -> chex.ArrayTree:
    """Polyak averaging of a target network: ``new <- tau * new + (1 - tau) * old``.

    ``None`` leaves pass through.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.incremental_update(jnp.ones(2), jnp.zeros(2), step_size=0.1)
        Array([0.1, 0.1], dtype=float32)
    """
    return jax.tree.map(
        lambda new, old: None if new is None else step_size * new + (1.0 - step_size) * old,
        new_tensors,
        old_tensors,
        is_leaf=lambda x: x is None,
    )


def periodic_update(
    new_tensors: chex.ArrayTree,
    old_tensors: chex.ArrayTree,
    steps: chex.Array,
    update_period: int,
) -> chex.ArrayTree:
    """``new`` on the steps where ``steps % update_period == 0``, else ``old`` (a target
    network copied every ``update_period`` steps; jit-safe, one ``lax.cond``).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dlopt.periodic_update(jnp.ones(1), jnp.zeros(1), steps=3, update_period=2)
        Array([0.], dtype=float32)
    """
    return jax.lax.cond(
        jnp.mod(steps, update_period) == 0,
        lambda _: new_tensors,
        lambda _: old_tensors,
        None,
    )


@jax.custom_vjp
def _scale_gradient(inputs: chex.ArrayTree, scale: float) -> chex.ArrayTree:
    del scale
    return inputs


def _scale_gradient_fwd(inputs, scale):
    return inputs, scale


def _scale_gradient_bwd(scale, g):
    return jax.tree.map(lambda g_: g_ * scale, g), None


_scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def scale_gradient(inputs: chex.ArrayTree, scale: float) -> chex.ArrayTree:
    """The identity on ``inputs`` whose gradient is multiplied by ``scale``:
    ``f(x) = x``, ``df/dx = scale`` (``scale=0`` is ``stop_gradient``).

    Example:
        >>> import jax, dlopt
        >>> jax.grad(lambda x: dlopt.scale_gradient(x, 0.5) ** 2)(3.0)
        Array(3., dtype=float32, weak_type=True)
    """
    return _scale_gradient(inputs, scale)
