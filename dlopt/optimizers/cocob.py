"""COCOB-Backprop: learning-rate-free SGD by continuous coin betting (Orabona & Tommasi)."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, ScalarOrSchedule
from dlopt.core.combine import Mask, chain
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


class COCOBState(NamedTuple):
    """State of `scale_by_cocob` (optax's field names), each a tree like the params."""

    init_particles: chex.ArrayTree  # w_1, the starting point
    cumulative_gradients: chex.ArrayTree  # theta = -sum of gradients
    scale: chex.ArrayTree  # L, the largest |g| seen (starts at eps)
    subgradients: chex.ArrayTree  # G, the sum of |g|
    reward: chex.ArrayTree  # R, the bettor's winnings, kept >= 0


def _cocob_leaf(g, w, w1, theta, big_l, big_g, reward, *, alpha):
    dtype = w.dtype
    f = numerics.compute_dtype(g.dtype, w.dtype, theta.dtype)
    g, w, w1 = g.astype(f), w.astype(f), w1.astype(f)
    big_l = jnp.maximum(big_l.astype(f), jnp.abs(g))
    big_g = big_g.astype(f) + jnp.abs(g)
    reward = jnp.maximum(reward.astype(f) - g * (w - w1), jnp.zeros_like(g))
    theta = theta.astype(f) - g
    bet = theta / (big_l * jnp.maximum(big_g + big_l, tree_lib.scalar_like(alpha, g) * big_l))
    update = w1 + bet * (big_l + reward) - w
    state = (theta, big_l, big_g, reward)
    return (update.astype(dtype), *(x.astype(dtype) for x in state))


def scale_by_cocob(alpha: chex.Numeric = 100.0, eps: chex.Numeric = 1e-8) -> GradientTransformation:
    """Replaces the gradient with COCOB-Backprop's step (Algorithm 2 of the paper).

    Per coordinate, with :math:`L_0 = \\epsilon` and :math:`G_0 = R_0 = \\theta_0 = 0`:

    .. math::
        L_t = \\max(L_{t-1}, |g_t|), \\quad G_t = G_{t-1} + |g_t|, \\quad
        R_t = \\max(R_{t-1} - g_t (w_t - w_1), 0), \\quad \\theta_t = \\theta_{t-1} - g_t,

        w_{t+1} = w_1 + \\frac{\\theta_t}{L_t \\max(G_t + L_t, \\alpha L_t)} (L_t + R_t)

    and the update is :math:`w_{t+1} - w_t` (already a descent step: do not flip its sign).

    Args:
        alpha: :math:`\\alpha` > 0, caps the fraction of the wealth bet early on.
        eps: :math:`\\epsilon` > 0, the starting :math:`L` (avoids dividing by zero).

    Returns:
        A `GradientTransformation` with state `COCOBState`; ``update`` needs ``params``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.scale_by_cocob(alpha=100.0)

    References:
        Orabona and Tommasi, 2017, "Training Deep Networks without Learning Rates Through Coin
        Betting", NeurIPS (arXiv:1705.07795).
    """
    validation.check_positive("alpha", alpha)
    validation.check_positive("eps", eps)

    def init_fn(params):
        params = tree_lib.as_arrays(params)  # Python numbers, as optax accepts
        tree_lib.check_float_params(params)
        zeros = tree_lib.zeros_like(params)
        return COCOBState(
            init_particles=tree_lib.copy(params),
            cumulative_gradients=zeros,
            scale=tree_lib.full_like(params, eps),
            subgradients=zeros,
            reward=zeros,
        )

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        if params is None:
            raise ValueError("scale_by_cocob needs params: call update(updates, state, params).")
        tree_lib.check_matching_trees(params, updates, "params", "updates")
        out = tree_lib.map_unzip(
            lambda g, w, *s: _cocob_leaf(g, w, *s, alpha=alpha),
            updates, params, state.init_particles, state.cumulative_gradients,
            state.scale, state.subgradients, state.reward,
        )  # fmt: skip
        if not out:
            return updates, state
        return out[0], state._replace(
            cumulative_gradients=out[1], scale=out[2], subgradients=out[3], reward=out[4]
        )

    return GradientTransformation(init_fn, update_fn)


def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: chex.Numeric = 100.0,
    eps: chex.Numeric = 1e-8,
    weight_decay: chex.Numeric = 0.0,
    mask: Mask | None = None,
) -> GradientTransformation:
    """COCOB-Backprop: stochastic subgradient descent without a learning rate.

    A coin-betting bettor per coordinate wagers a fraction of its winnings on the sign of
    the negative gradient (see `scale_by_cocob`); no step size is tuned. The gradient is
    first decayed (:math:`g + \\lambda w`) and multiplied by ``learning_rate`` (1 by default,
    e.g. to inject a schedule), then betted.

    Args:
        learning_rate: a multiplier of the gradient >= 0, or a schedule (default 1).
        alpha, eps: as in `scale_by_cocob`.
        weight_decay: :math:`\\lambda` >= 0, an L2 term added to the gradient.
        mask: which leaves are decayed: a tree of bools or a function of the params.

    Returns:
        ``chain(add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate,
        flip_sign=False), scale_by_cocob(alpha, eps))``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.cocob()
        >>> params = jnp.array([1.0, -2.0])
        >>> updates, state = tx.update(jnp.array([0.5, -1.0]), tx.init(params), params)
        >>> print(jnp.round(updates, 6))  # the first bet: -sign(g) / alpha
        [-0.01  0.01]

    References:
        Orabona and Tommasi, 2017, "Training Deep Networks without Learning Rates Through Coin
        Betting", NeurIPS (arXiv:1705.07795).
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )
