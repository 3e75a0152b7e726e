"""PRNG keys for transforms that draw random numbers (noise, Rademacher probes).

A transform takes ``key`` as optax does (a ``jax.random.key``, a ``jax.random.PRNGKey`` or
an int seed) and keeps the key's raw data in its state, so the state is a plain array tree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import validation


def prng_key(
    key: jax.Array | int | None, seed: int | None = None, *, name: str = "key"
) -> jax.Array:
    """A typed PRNG key from ``key`` (a key or an int seed) or optax's older ``seed``;
    ``name`` is the argument named in the errors."""
    if seed is not None and key is not None:
        raise ValueError(f"pass one of {name} and seed, got {name}={key!r} and seed={seed!r}.")
    if seed is not None:
        validation.check_int("seed", seed, low=-(2**63))
        return jax.random.key(seed)
    if key is None:
        return jax.random.key(0)  # optax warns, then uses 0 too
    if isinstance(key, jax.Array | np.ndarray) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array | np.ndarray) and key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)  # a raw jax.random.PRNGKey
    if isinstance(key, jax.Array | np.ndarray) and key.ndim == 0:
        if jnp.issubdtype(key.dtype, jnp.integer):
            return jax.random.key(key)
    if isinstance(key, bool | np.bool_) or not isinstance(key, int | np.integer):
        raise TypeError(
            f"{name} must be a jax.random.key, a jax.random.PRNGKey or an int seed, got "
            f"{name}={key!r} ({type(key).__name__})."
        )
    return jax.random.key(key)
