"""`TrainState`: everything one training step reads and writes, as one pytree.

Params, optimizer state, step count, model state (BatchNorm ``batch_stats``, an nnx state, or
``{}``), the RNG for dropout (raw ``uint32`` key data, so it saves and donates like any array)
and a count of steps skipped for non-finite gradients. The optimizer ``tx`` and the model's
``apply_fn`` ride along as static fields. Two optional parts (None when unused): ``averages``,
the parameter averages of `dlopt.training.ModelEMA` / `dlopt.training.SWA`, and
``loss_scale``, the `dlopt.DynamicLossScaleState` of a loss-scaled step.

The flat layout (``TrainState.create(..., flat=True)``): the params are stored as a
`FlatParams` (one contiguous buffer per dtype and group, large leaves in buffers
of their own) and the optimizer state over those buffers (``dlopt.fused(tx)``'s), so the whole
chain runs as one fused pass per buffer. ``state.params`` still reads as the params tree (a
view: slices of the buffers, free inside ``jit``); ``state.stored_params`` is what is stored.
`dlopt.training.layout` converts a state between the two layouts (checkpoints are written as
the tree).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import struct

from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, apply_updates, with_extra_args_support
from dlopt.wrappers.fused import PACK_BELOW, FlatParams, GroupBy, flatten, fused, pack

_KEEP = object()  # `replace` without ``params=``: keep the stored params as they are


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
    stored_params: chex.ArrayTree  # the params tree, or a FlatParams (flat layout)
    opt_state: chex.ArrayTree
    model_state: chex.ArrayTree
    rng: jax.Array
    skipped_steps: jax.Array
    tx: GradientTransformation = struct.field(pytree_node=False)
    apply_fn: Callable[..., Any] | None = struct.field(pytree_node=False)
    # optional parts, keyword-only (a subclass may still add fields without defaults)
    averages: Any = struct.field(default=None, kw_only=True)  # ModelEMA's, SWA's, or None
    loss_scale: Any = struct.field(default=None, kw_only=True)  # DynamicLossScaleState or None
    # ``TrainState(params=...)`` / ``replace(params=...)`` set ``stored_params`` (a tree given
    # to a flat state is packed into its layout); reading ``state.params`` gives the tree
    params: dataclasses.InitVar[Any] = struct.field(default=None, kw_only=True)

    def __post_init__(self, params: Any) -> None:
        if params is _KEEP or params is None:
            return
        stored = self.stored_params
        if isinstance(stored, FlatParams) and not isinstance(params, FlatParams):
            params = FlatParams(pack(params, stored.layout), stored.layout)
        object.__setattr__(self, "stored_params", params)

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
        flat: bool = False,
        group_by: GroupBy = None,
        pack_below: int | None = PACK_BELOW,
        pad_to: int | None = None,
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
            flat: store params and optimizer state in the flat layout (see the module doc):
                faster steps for models with many small leaves. Inside ``tx``, transforms
                that look at the tree (a ``mask`` or `dlopt.partition` written for the params
                tree, per-leaf clipping) then see ``{label: {dtype: buffer}}``: give masks as
                labels through ``group_by`` (e.g. ``mask={"decay": True, "no_decay": False}``).
            group_by: with ``flat``, per-leaf labels (a pytree like the params, or a callable
                ``params -> labels``); leaves with different labels get separate buffers.
            pack_below: with ``flat``, leaves of at least this many elements keep a buffer of
                their own (`dlopt.fused`); None packs every leaf.
            pad_to: with ``flat``, round each buffer up to a multiple of this many elements
                (default: ``jax.device_count()``), so it splits into equal shards for ZeRO-1
                (``shard_opt_state=True``) whatever the leaf shapes.

        Returns:
            A `TrainState`.

        Example:
            >>> import jax.numpy as jnp, dlopt
            >>> from dlopt.training import TrainState
            >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
            >>> state = TrainState.create(apply_fn=None, params=params, tx=dlopt.adam(1e-3),
            ...                           rng=0, flat=True)
            >>> state.params["w"].shape, state.stored_params
            ((3, 2), FlatParams(2 leaves in {'params/float32': 8}))
        """
        if not isinstance(flat, bool):
            raise ValueError(f"flat must be True or False, got flat={flat!r}.")
        if flat:
            pad_to = jax.device_count() if pad_to is None else pad_to
            stored = flatten(params, group_by=group_by, pack_below=pack_below, pad_to=pad_to)
            opt_state = fused(tx).init(stored)
        else:
            if group_by is not None or pad_to is not None:
                raise ValueError(
                    "group_by and pad_to are for the flat layout: pass flat=True with them."
                )
            stored, opt_state = params, tx.init(params)
        return cls(
            step=jnp.zeros((), jnp.int32),
            stored_params=stored,
            opt_state=opt_state,
            model_state={} if model_state is None else model_state,
            rng=key_data(rng),
            skipped_steps=jnp.zeros((), jnp.int32),
            tx=tx,
            apply_fn=apply_fn,
            loss_scale=None if loss_scale is None else loss_scale.init(),
        )

    @property
    def is_flat(self) -> bool:
        """Whether the params are stored in the flat layout (a `FlatParams`)."""
        return isinstance(self.stored_params, FlatParams)

    @property
    def update_tx(self) -> GradientTransformation:
        """The transform that updates ``stored_params``: ``tx``, or ``fused(tx)`` when flat."""
        return fused(self.tx) if self.is_flat else self.tx

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
        updates, opt_state = with_extra_args_support(self.update_tx).update(
            grads, self.opt_state, self.stored_params, **extra_args
        )
        return self.replace(
            step=tree_lib.safe_increment(self.step),
            params=apply_updates(self.stored_params, updates),
            opt_state=opt_state,
        )


def _params_view(state: TrainState) -> chex.ArrayTree:
    stored = state.stored_params
    return stored.unflatten() if isinstance(stored, FlatParams) else stored


def _replace(self: TrainState, **updates: Any) -> TrainState:
    """A copy with the given fields replaced (``params=`` sets the stored params)."""
    return dataclasses.replace(self, **{"params": _KEEP, **updates})


# set after flax's dataclass is built, so its field machinery never sees the view (a subclass
# made with ``struct.dataclass`` gets flax's ``replace`` back: still right, a flat state then
# re-packs its params tree on each ``replace``)
TrainState.params = property(_params_view, doc="The params tree (a view of the flat buffers).")
TrainState.replace = _replace
