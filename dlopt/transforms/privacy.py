"""Differential privacy: per-example clipping and DP-SGD's noisy aggregate (Abadi et al., 2016).

DP-SGD trains on per-example gradients (a leading batch axis on every leaf, e.g.
``jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)``): each example's gradient is
clipped to global L2 norm :math:`C`, the clipped gradients are summed, Gaussian noise of
standard deviation :math:`\\sigma C` is added and the sum is divided by the batch size.
The privacy guarantee (:math:`\\varepsilon, \\delta`) of a run follows from the noise
multiplier :math:`\\sigma`, the sampling rate (batch size / dataset size) and the number
of steps; compute it with a privacy accountant, e.g. Google's ``dp-accounting`` package
(``pip install dp-accounting``; its ``dp_accounting.rdp.RdpAccountant`` or
``dp_accounting.pld.PLDAccountant`` composed over ``PoissonSampledDpEvent(q,
GaussianDpEvent(noise_multiplier))`` for the number of steps). The guarantee assumes
batches sampled as the accountant models them (Poisson or shuffled), which dlopt's data
loaders do not do for you.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import validation
from dlopt.core.base import GradientTransformation, ScalarOrSchedule, identity
from dlopt.core.combine import chain
from dlopt.core.keys import prng_key
from dlopt.core.per_leaf import per_leaf
from dlopt.optimizers.sgd import trace
from dlopt.transforms.scaling import scale_by_learning_rate


def _check_batch_axis(grads: chex.ArrayTree, name: str) -> None:
    leaves = jax.tree.leaves(grads)
    size = jnp.shape(leaves[0])[0] if leaves and jnp.ndim(leaves[0]) else None
    if not all(jnp.ndim(g) >= 1 and jnp.shape(g)[0] == size for g in leaves):
        raise ValueError(
            f"Unlike other transforms, `{name}` expects `grads` to have a batch dimension in "
            f"the 0th axis (per-example gradients, e.g. from jax.vmap(jax.grad(loss))); got "
            f"shapes: {[jnp.shape(g) for g in leaves]}."
        )


def _example_norms(grads: list[chex.Array]) -> jax.Array:
    """Each example's global L2 norm over ``grads`` (float32, or float64 for float64)."""
    squares = []
    for g in grads:
        f = jnp.promote_types(jnp.float32, jnp.finfo(jnp.result_type(g, 1.0)).dtype)
        a = jnp.abs(g).astype(f)
        squares.append(jnp.sum((a * a).reshape(g.shape[0], -1), axis=1))
    return jnp.sqrt(sum(squares[1:], squares[0]))


def per_example_global_norm_clip(
    grads: chex.ArrayTree, l2_norm_clip: chex.Numeric
) -> tuple[chex.ArrayTree, jax.Array]:
    """Clips each example's gradient to global L2 norm ``l2_norm_clip`` and sums them.

    .. math:: \\sum_i g_i \\min\\left(1, \\frac{C}{\\lVert g_i \\rVert}\\right)

    (a zero-norm example keeps multiplier 1).

    Args:
        grads: a tree (or list) of arrays, each with the batch on axis 0.
        l2_norm_clip: :math:`C` >= 0.

    Returns:
        ``(clipped_sum, num_clipped)``: the tree of sums (no batch axis) and the number of
        examples whose gradient was scaled down.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> grads = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
        >>> dlopt.per_example_global_norm_clip(grads, 1.25)
        ([Array([1.75, 1.75, 1.75], dtype=float32)], Array(3, dtype=int32))

    References:
        Abadi et al., 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133.
    """
    _check_batch_axis(grads, "per_example_global_norm_clip")
    leaves, treedef = jax.tree.flatten(grads)
    norms = _example_norms(leaves)
    multipliers = jnp.nan_to_num(jnp.minimum(l2_norm_clip / norms, 1.0), nan=1.0)
    num_clipped = jnp.sum(multipliers < 1.0)
    summed = [jnp.tensordot(multipliers.astype(jnp.result_type(g, 1.0)), g, axes=1) for g in leaves]
    return treedef.unflatten(summed), num_clipped


def per_example_layer_norm_clip(
    grads: chex.ArrayTree, global_l2_norm_clip: chex.Numeric, uniform: bool = True
) -> tuple[chex.ArrayTree, chex.ArrayTree]:
    """Clips each example's gradient layer by layer (each leaf to its own bound) and sums.

    Leaf :math:`k` of :math:`K` (with :math:`D_k` of :math:`D` parameters) is clipped per
    example to :math:`C / \\sqrt{K}` (``uniform``) or :math:`C \\sqrt{D_k / D}`, so the
    whole gradient's norm stays within :math:`C`; then summed over the batch. One leaf: the
    same as `per_example_global_norm_clip`.

    Args:
        grads: a tree (or list) of arrays, each with the batch on axis 0.
        global_l2_norm_clip: :math:`C` >= 0.
        uniform: equal bounds per leaf (True) or bounds by parameter share (False).

    Returns:
        ``(clipped_sum, num_clipped)``: both trees shaped like ``grads`` (the counts per leaf).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> grads = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
        >>> dlopt.per_example_layer_norm_clip(grads, 1.25)
        ([Array([1.75, 1.75, 1.75], dtype=float32)], [Array(3, dtype=int32)])

    References:
        McMahan et al., 2018, "Learning Differentially Private Recurrent Language Models",
        arXiv:1710.06963.
    """
    _check_batch_axis(grads, "per_example_layer_norm_clip")
    leaves, treedef = jax.tree.flatten(grads)
    total = sum(g[0].size for g in leaves)
    sums, counts = [], []
    for g in leaves:
        share = 1.0 / len(leaves) if uniform else g[0].size / total
        summed, count = per_example_global_norm_clip([g], global_l2_norm_clip * share**0.5)
        sums.append(summed[0])
        counts.append(count)
    return treedef.unflatten(sums), treedef.unflatten(counts)


class DifferentiallyPrivateAggregateState(NamedTuple):
    rng_key: chex.Array  # the key for the next step, as raw key data (uint32[2] for threefry)


@per_leaf
def differentially_private_aggregate(
    l2_norm_clip: chex.Numeric,
    noise_multiplier: chex.Numeric,
    key: jax.Array | int | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    """DP-SGD's aggregate: clip each example's gradient, sum, add Gaussian noise, average.

    .. math::
        \\tilde g = \\frac{1}{B} \\left( \\sum_{i=1}^{B} g_i \\min\\left(1, \\frac{C}
        {\\lVert g_i \\rVert}\\right) + \\mathcal N(0, \\sigma^2 C^2 I) \\right)

    ``updates`` are per-example gradients (batch :math:`B` on axis 0 of every leaf); the
    result has the params' shapes, so this goes first in a `chain`. Gradient accumulation
    wrappers (`multi_steps`) do not compose with it. The noise comes from ``key``, split at
    each step (the state carries it); the same draws as optax's. Deliberate difference from
    optax: ``state.rng_key`` holds the key's raw data (a plain array tree). See the module
    doc for the privacy accounting (``dp-accounting``).

    Args:
        l2_norm_clip: :math:`C` >= 0, the per-example norm bound.
        noise_multiplier: :math:`\\sigma` >= 0, the noise's std relative to :math:`C`.
        key: a ``jax.random.key``, a ``jax.random.PRNGKey`` or an int seed (None: 0, as
            optax after its warning).
        seed: an int seed, optax's deprecated name for ``key`` (pass one of the two).

    Returns:
        A `GradientTransformation` with state `DifferentiallyPrivateAggregateState`.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.differentially_private_aggregate(1.0, 1.1, key=jax.random.key(0))
        >>> per_example = {"w": jnp.ones((4, 3))}  # 4 examples
        >>> updates, state = tx.update(per_example, tx.init({"w": jnp.zeros(3)}))
        >>> updates["w"].shape
        (3,)

    References:
        Abadi et al., 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133.
    """
    validation.check_non_negative("l2_norm_clip", l2_norm_clip)
    validation.check_non_negative("noise_multiplier", noise_multiplier)
    initial_key = prng_key(key, seed)
    impl = jax.random.key_impl(initial_key)
    noise_std = l2_norm_clip * noise_multiplier

    def init_fn(params):
        del params
        return DifferentiallyPrivateAggregateState(
            rng_key=jnp.copy(jax.random.key_data(initial_key))
        )

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        if not leaves:
            return updates, state
        batch = leaves[0].shape[0]
        clipped, _ = per_example_global_norm_clip(leaves, l2_norm_clip)
        new_key, *keys = jax.random.split(
            jax.random.wrap_key_data(state.rng_key, impl=impl), len(leaves) + 1
        )
        noised = [
            ((g + noise_std * jax.random.normal(k, g.shape, g.dtype)) / batch).astype(g.dtype)
            for g, k in zip(clipped, keys, strict=True)
        ]
        return treedef.unflatten(noised), DifferentiallyPrivateAggregateState(
            rng_key=jax.random.key_data(new_key)
        )

    return GradientTransformation(init_fn, update_fn)


def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: chex.Numeric,
    noise_multiplier: chex.Numeric,
    seed: int,
    momentum: chex.Numeric | None = None,
    nesterov: bool = False,
) -> GradientTransformation:
    """DP-SGD: SGD (with optional momentum) on the differentially private aggregate.

    .. math:: w \\leftarrow w - \\eta\\, \\operatorname{trace}(\\tilde g)

    with :math:`\\tilde g` from `differentially_private_aggregate` (per-example clipping to
    :math:`C`, Gaussian noise :math:`\\sigma C`, averaging over the batch) and the momentum
    `trace` only when ``momentum`` is given. ``update`` takes per-example gradients (batch
    on axis 0). The :math:`(\\varepsilon, \\delta)` a run spends comes from a privacy
    accountant such as ``dp-accounting`` (see this module's doc).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        l2_norm_clip: :math:`C` >= 0.
        noise_multiplier: :math:`\\sigma` >= 0.
        seed: the int seed of the noise's ``jax.random.key``.
        momentum: the momentum decay in [0, 1), or None for plain SGD.
        nesterov: Nesterov momentum.

    Returns:
        ``chain(differentially_private_aggregate(...), [trace(momentum, nesterov)],
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> loss = lambda w, x: jnp.sum((w - x) ** 2)
        >>> w, batch = jnp.zeros(3), jnp.ones((8, 3))
        >>> tx = dlopt.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=1.1, seed=0)
        >>> per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, batch)
        >>> updates, state = tx.update(per_example, tx.init(w), w)

    References:
        Abadi et al., 2016, "Deep Learning with Differential Privacy", arXiv:1607.00133.
    """
    validation.check_learning_rate(learning_rate)
    validation.check_int("seed", seed, low=-(2**63))
    if momentum is not None:
        validation.check_in_range("momentum", momentum, 0.0, 1.0)
    validation.check_flag("nesterov", nesterov)
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, seed=seed),
        trace(decay=momentum, nesterov=nesterov) if momentum is not None else identity(),
        scale_by_learning_rate(learning_rate),
    )
