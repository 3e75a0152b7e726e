"""Noisy SGD: gradient descent with annealed Gaussian noise added to the gradients."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import chain
from dlopt.core.keys import prng_key
from dlopt.core.per_leaf import per_leaf
from dlopt.transforms.scaling import scale_by_learning_rate


class AddNoiseState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    rng_key: chex.Array  # the key for the next step, as raw key data (uint32[2] for threefry)


@per_leaf
def add_noise(
    eta: chex.Numeric,
    gamma: chex.Numeric,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """Adds Gaussian noise of annealed variance to the updates.

    .. math:: u_t \\leftarrow u_t + \\mathcal N(0, \\sigma_t^2), \\qquad
        \\sigma_t^2 = \\frac{\\eta}{t^{\\gamma}}, \\ t = 1, 2, \\ldots

    The key is split at each step (the state carries it), so a run is reproducible from
    ``key`` and resumes exactly from a checkpointed state; the same draws as optax's.

    Deliberate difference from optax: ``state.rng_key`` holds the key's raw data
    (``jax.random.key_data``, uint32) rather than a typed key, so the state is a plain array
    tree (numpy conversion, chex asserts, any checkpointer); it is wrapped back with the
    key's implementation at each step.

    Args:
        eta: :math:`\\eta` >= 0, the initial variance.
        gamma: :math:`\\gamma` >= 0, the annealing exponent (0.55 in the paper).
        key: a ``jax.random.key``, a ``jax.random.PRNGKey`` or an int seed; None uses 0 (as
            optax does, after a warning).
        seed: an int seed, optax's older name for ``key`` (pass one of the two).

    Returns:
        A `GradientTransformation` with state `AddNoiseState`.

    Example:
        >>> import jax, dlopt
        >>> tx = dlopt.chain(dlopt.add_noise(0.01, 0.55, key=jax.random.key(0)),
        ...                  dlopt.scale_by_learning_rate(1e-2))

    References:
        Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning for Very Deep
        Networks", arXiv:1511.06807.
    """
    validation.check_non_negative("eta", eta)
    validation.check_non_negative("gamma", gamma)
    initial_key = prng_key(key, seed)
    impl = jax.random.key_impl(initial_key)

    def init_fn(params):
        tree_lib.check_float_params(params)
        # a copy made in init: the state's type follows the current mesh, like the count's
        key_data = jnp.copy(jax.random.key_data(initial_key))
        return AddNoiseState(count=jnp.zeros([], jnp.int32), rng_key=key_data)

    def noisy_leaf(u, key, out_dtype, std):
        f = numerics.compute_dtype(u.dtype)
        noise = jax.random.normal(key, u.shape, f, out_sharding=jax.typeof(u).sharding)
        return (u.astype(f) + std.astype(f) * noise).astype(out_dtype)

    def update_fn(updates, state, params=None):
        count = tree_lib.safe_increment(state.count)
        t = count.astype(jnp.float32)
        std = jnp.sqrt(jnp.asarray(eta).astype(jnp.float32) / t ** jnp.asarray(gamma, t.dtype))
        rng_key, sample_key = jax.random.split(jax.random.wrap_key_data(state.rng_key, impl=impl))
        leaves, treedef = jax.tree.flatten(updates)
        keys = treedef.unflatten(list(jax.random.split(sample_key, len(leaves))))
        updates = jax.tree.map(
            lambda u, k, d: noisy_leaf(u, k, d, std),
            updates,
            keys,
            numerics.out_dtypes(updates, params),
        )
        return updates, AddNoiseState(count=count, rng_key=jax.random.key_data(rng_key))

    return GradientTransformation(init_fn, update_fn)


def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: chex.Numeric = 0.01,
    gamma: chex.Numeric = 0.55,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformationExtraArgs:
    """Noisy SGD: gradient descent on gradients with annealed Gaussian noise.

    .. math::
        w \\leftarrow w - \\eta_t \\left(g_t + \\mathcal N(0, \\sigma_t^2)\\right), \\qquad
        \\sigma_t^2 = \\frac{\\eta}{t^{\\gamma}}

    (:math:`\\eta_t` the learning rate, :math:`\\eta` = ``eta`` the initial noise variance).
    The noise helps very deep networks escape poor regions early and fades as
    :math:`t^{-\\gamma}`.

    Args:
        learning_rate: :math:`\\eta_t` >= 0, or a schedule.
        eta: :math:`\\eta` >= 0, the initial noise variance.
        gamma: :math:`\\gamma` >= 0, the annealing exponent.
        key: a ``jax.random.key``, a ``jax.random.PRNGKey`` or an int seed (default 0).
        seed: optax's older name for ``key`` (pass one of the two).

    Returns:
        ``chain(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.noisy_sgd(1e-2, key=0)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Neelakantan et al., 2015, "Adding Gradient Noise Improves Learning for Very Deep
        Networks", arXiv:1511.06807.
    """
    return chain(add_noise(eta, gamma, key, seed=seed), scale_by_learning_rate(learning_rate))
