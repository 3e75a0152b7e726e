"""`TrainState`: everything one training step reads and writes, as one pytree.

Params, optimizer state, step count, model state (BatchNorm ``batch_stats``, an nnx state, or
``{}``), the RNG for dropout (raw ``uint32`` key data, so it saves and donates like any array)
and a count of steps skipped for non-finite gradients. The optimizer ``tx`` and the model's
``apply_fn`` ride along as static fields. Two optional parts (None when unused): ``averages``,
the parameter averages of `dlopt.training.ModelEMA` / `dlopt.training.SWA`, and
``loss_scale``, the `dlopt.DynamicLossScaleState` of a loss-scaled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

from dlopt import tree as tree_lib
from dlopt.base import GradientTransformation, apply_updates, with_extra_args_support


def key_data(rng: Any) -> jax.Array:
    """``rng`` (an int seed, a typed key or raw key data) as raw ``uint32`` key data."""
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    rng = jnp.asarray(rng) if not isinstance(rng, jax.Array) else rng
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    if rng.dtype != jnp.uint32:
        raise ValueError(
            f"rng must be an int seed, a jax.random.key or uint32 key data, got dtype {rng.dtype}."
        )
    return rng


@struct.dataclass
class TrainState:
    """A training state pytree: ``step, params, opt_state, model_state, rng, skipped_steps``
    (and ``averages``, ``loss_scale`` when used, else None).

    ``variables`` is the Flax linen view ``{"params": params, **model_state}``;
    ``apply_gradients`` runs one optimizer update. Use `TrainState.create` to build one.

    With ``flax.nnx``: ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``, then
    ``params=params, model_state=rest``; in the loss, ``nnx.merge(graphdef, params,
    model_state, copy=True)`` and return ``nnx.state(model, nnx.Not(nnx.Param))`` as the new
    model state. (``nnx.Optimizer(model, dlopt.sgd(...), wrt=nnx.Param)`` works as well.)

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, dlopt
        >>> from dlopt.training import TrainState
        >>> model = nn.Dense(2)
        >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
        >>> state = TrainState.create(apply_fn=model.apply, params=params,
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> int(state.step)
        0
    """

    step: jax.Array
    params: chex.ArrayTree
    opt_state: chex.ArrayTree
    model_state: chex.ArrayTree
    rng: jax.Array
    skipped_steps: jax.Array
    tx: GradientTransformation = struct.field(pytree_node=False)
    apply_fn: Callable[..., Any] | None = struct.field(pytree_node=False)
    # optional parts, keyword-only (a subclass may still add fields without defaults)
    averages: Any = struct.field(default=None, kw_only=True)  # ModelEMA's, SWA's, or None
    loss_scale: Any = struct.field(default=None, kw_only=True)  # DynamicLossScaleState or None

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Callable[..., Any] | None,
        params: chex.ArrayTree,
        tx: GradientTransformation,
        rng: Any,
        model_state: chex.ArrayTree | None = None,
        loss_scale: Any | None = None,
    ) -> TrainState:
        """A fresh state: ``step = 0``, ``opt_state = tx.init(params)``, no skipped steps.

        Args:
            apply_fn: the model's apply function (e.g. ``module.apply``), or None.
            params: the trainable parameters.
            tx: the optimizer, a dlopt or optax `GradientTransformation`.
            rng: an int seed, a ``jax.random.key`` or raw key data; stored as raw key data.
            model_state: non-trainable model variables (``{"batch_stats": ...}``), default ``{}``.
            loss_scale: a `dlopt.dynamic_loss_scale` policy: its initial state is stored in
                ``state.loss_scale`` (pass the same policy to the train step).

        Returns:
            A `TrainState`.
        """
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            model_state={} if model_state is None else model_state,
            rng=key_data(rng),
            skipped_steps=jnp.zeros((), jnp.int32),
            tx=tx,
            apply_fn=apply_fn,
            loss_scale=None if loss_scale is None else loss_scale.init(),
        )

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": params, **model_state}``, what a linen module's ``apply`` takes."""
        return {"params": self.params, **self.model_state}

    @property
    def key(self) -> jax.Array:
        """The RNG as a typed ``jax.random.key``."""
        return jax.random.wrap_key_data(self.rng)

    def apply_gradients(self, grads: chex.ArrayTree, **extra_args: Any) -> TrainState:
        """One optimizer update: ``params <- params + tx.update(grads, ...)``, ``step += 1``.

        Extra keyword arguments (e.g. ``value=`` for reduce-on-plateau) go to ``tx.update``.
        """
        updates, opt_state = with_extra_args_support(self.tx).update(
            grads, self.opt_state, self.params, **extra_args
        )
        return self.replace(
            step=tree_lib.safe_increment(self.step),
            params=apply_updates(self.params, updates),
            opt_state=opt_state,
        )
