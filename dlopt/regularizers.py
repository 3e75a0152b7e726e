"""Regularization: decoupled weight decay as a transform.

Penalties to add to a loss (L1, L2, elastic net) and parameter masks live here too.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt import tree as tree_lib
from dlopt import validation
from dlopt.base import GradientTransformation, ScalarOrSchedule
from dlopt.combine import Mask, masked


class AddDecayedWeightsState(NamedTuple):
    count: chex.Array  # int32 step, used when weight_decay is a schedule


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: Mask | None = None
) -> GradientTransformation:
    """Decoupled weight decay: ``u <- u + lambda * w`` (AdamW, Loshchilov & Hutter 2019).

    Placed before ``scale_by_learning_rate`` the step becomes ``w <- w - lr (u + lambda w)``,
    decoupled from the adaptive scaling (unlike an L2 penalty added to the loss).

    Args:
        weight_decay: ``lambda`` >= 0, or a schedule ``step -> lambda``.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves,
            e.g. `weights_only` to skip biases and normalization parameters.

    Returns:
        A `GradientTransformation`; it needs ``params`` in ``update``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adam(), dlopt.add_decayed_weights(1e-2),
        ...                  dlopt.scale_by_learning_rate(1e-3))
    """
    if not callable(weight_decay):
        validation.check_non_negative("weight_decay", weight_decay)

    def init_fn(params):
        del params
        return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "add_decayed_weights needs params: call update(updates, state, params)."
            )
        rate = weight_decay(state.count) if callable(weight_decay) else weight_decay
        updates = jax.tree.map(
            lambda u, p: u + tree_lib.scalar_like(rate, u) * p.astype(u.dtype), updates, params
        )
        return updates, AddDecayedWeightsState(count=tree_lib.safe_increment(state.count))

    tx = GradientTransformation(init_fn, update_fn)
    return masked(tx, mask) if mask is not None else tx

