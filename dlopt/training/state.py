"""`TrainState`: everything one training step reads and writes, as one pytree.

Params, optimizer state, step count, model state (BatchNorm ``batch_stats``, an nnx state, or
``{}``), the RNG for dropout (raw ``uint32`` key data, so it saves and donates like any array)
and a count of steps skipped for non-finite gradients. The optimizer ``tx`` and the model's
``apply_fn`` ride along as static fields. Two optional parts (None when unused): ``averages``,
the parameter averages of `dlopt.training.ModelEMA` / `dlopt.training.SWA`, and
``loss_scale``, the `dlopt.DynamicLossScaleState` of a loss-scaled step.

The layout is one object: in the tree layout ``state.stored_params`` is the params tree; in
the flat layout (the default where it measures faster, see `TrainState.create`) it is a
`dlopt.core.flat.Buffers` (one contiguous buffer per dtype and group, large leaves in buffers
of their own) that carries its static `dlopt.core.flat.Layout`, and the optimizer state is
``tx``'s over those buffers, so the whole chain runs as one fused pass per buffer.
``state.params`` reads as the params tree in both (a view: slices of the buffers, free inside
``jit``); ``state.layout`` is the `Layout` or None. `dlopt.training.layout` converts a state
between the two layouts (checkpoints are written as the tree).
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
from dlopt.core import validation
from dlopt.core.base import GradientTransformation, apply_updates, with_extra_args_support
from dlopt.core.flat import PACK_BELOW, Buffers, GroupBy, Layout, pack
from dlopt.wrappers.fused import plan_layout, prefers_flat


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


@dataclasses.dataclass(frozen=True)
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
    stored_params: chex.ArrayTree  # the params tree, or its `Buffers` (flat layout)
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
        flat: bool | None = None,
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
            flat: the layout (see the module doc). None (default): the flat layout when it is
                expected to be faster (`dlopt.wrappers.fused.prefers_flat`: two or more small
                leaves) and ``tx`` runs as fused passes over the buffers (no `dlopt.per_leaf`
                part, no optax transform); else the tree layout. True: flat (masks, labels
                and per-leaf transforms keep their meaning; a ``tx`` with optax transforms is
                refused). False: the tree layout. Both layouts give the same parameters.
            group_by: flat layout: per-leaf labels (a pytree like the params, or a callable
                ``params -> labels``); leaves with different labels get separate buffers.
            pack_below: flat layout: leaves of at least this many elements keep a buffer of
                their own (`dlopt.fused`); None packs every leaf.
            pad_to: flat layout: round each buffer up to a multiple of this many elements
                (default: ``jax.device_count()``), so it splits into equal shards for ZeRO-1
                (``shard_opt_state=True``) whatever the leaf shapes.

        Returns:
            A `TrainState`.

        Raises:
            ValueError: ``flat=True`` with a ``tx`` the flat layout cannot run exactly, or
                ``group_by``/``pad_to`` with ``flat=False``.

        Example:
            >>> import jax.numpy as jnp, dlopt
            >>> from dlopt.training import TrainState
            >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
            >>> state = TrainState.create(apply_fn=None, params=params, tx=dlopt.adam(1e-3),
            ...                           rng=0)
            >>> state.params["w"].shape, state.stored_params
            ((3, 2), Buffers(2 leaves in {'params/float32': 8}))
        """
        validation.check_transformation("tx", tx)
        if flat is not None and not isinstance(flat, bool):
            raise ValueError(f"flat must be None, True or False, got flat={flat!r}.")
        if flat is False and (group_by is not None or pad_to is not None):
            raise ValueError(
                "group_by and pad_to are for the flat layout: pass flat=True with them."
            )
        layout = None
        if flat is not False:
            pad = jax.device_count() if pad_to is None else pad_to
            plan = plan_layout(params, tx, group_by=group_by, pack_below=pack_below, pad_to=pad)
            if flat is True:
                _check_flat(plan)
                layout = plan.layout
            elif group_by is not None or pad_to is not None or prefers_flat(params):
                layout = plan.layout if plan.elementwise else None
        if layout is None:
            stored = params
        else:
            stored = Buffers(pack(params, layout), layout)
        return _own_buffers(
            cls(
                step=jnp.zeros((), jnp.int32),
                stored_params=stored,
                opt_state=tx.init(stored),
                model_state={} if model_state is None else model_state,
                rng=key_data(rng),
                skipped_steps=jnp.zeros((), jnp.int32),
                tx=tx,
                apply_fn=apply_fn,
                loss_scale=None if loss_scale is None else loss_scale.init(),
            )
        )

    @property
    def params(self) -> chex.ArrayTree:
        """The params tree (in the flat layout a view of the buffers)."""
        stored = self.stored_params
        return stored.unflatten() if isinstance(stored, Buffers) else stored

    @property
    def layout(self) -> Layout | None:
        """The flat layout's `dlopt.core.flat.Layout`, or None in the tree layout."""
        stored = self.stored_params
        return stored.layout if isinstance(stored, Buffers) else None

    @property
    def is_flat(self) -> bool:
        """Whether the params are stored in the flat layout."""
        return isinstance(self.stored_params, Buffers)

    @property
    def variables(self) -> dict[str, Any]:
        """``{"params": params, **model_state}``, what a linen module's ``apply`` takes."""
        return {"params": self.params, **self.model_state}

    @property
    def key(self) -> jax.Array:
        """The RNG as a typed ``jax.random.key``."""
        return jax.random.wrap_key_data(self.rng)

    def replace(self, **updates: Any) -> TrainState:
        """A copy with the given fields replaced; ``params=`` (a tree, or `Buffers`) sets the
        stored params in this state's layout."""
        if "params" in updates:
            updates["stored_params"] = self._stored(updates.pop("params"))
        stored = updates.get("stored_params", self.stored_params)
        if "opt_state" in updates and isinstance(stored, Buffers):
            tx = updates.get("tx", self.tx)
            updates["opt_state"] = _opt_state_in_layout(updates["opt_state"], tx, stored)
        return dataclasses.replace(self, **updates)

    def _stored(self, params: chex.ArrayTree) -> chex.ArrayTree:
        stored = self.stored_params
        if not isinstance(stored, Buffers) or isinstance(params, Buffers):
            return params
        layout = stored.layout
        shapes = [tuple(jnp.shape(x)) for x in jax.tree.leaves(params)]
        if jax.tree.structure(params) != layout.treedef or shapes != [
            s.shape for s in layout.slots
        ]:
            raise ValueError(
                "params do not fit this flat state's layout (another structure or leaf shapes); "
                "build a new state with TrainState.create, or convert it with "
                "dlopt.training.layout.to_tree first."
            )
        return Buffers(pack(params, layout), layout)

    def apply_gradients(self, grads: chex.ArrayTree, **extra_args: Any) -> TrainState:
        """One optimizer update: ``params <- params + tx.update(grads, ...)``, ``step += 1``.

        ``grads`` are in this state's layout (or a tree, packed for a flat state). Extra
        keyword arguments (e.g. ``value=`` for reduce-on-plateau) go to ``tx.update``.
        """
        grads = self._stored(grads)
        updates, opt_state = with_extra_args_support(self.tx).update(
            grads, self.opt_state, self.stored_params, **extra_args
        )
        return self.replace(
            step=tree_lib.safe_increment(self.step),
            stored_params=apply_updates(self.stored_params, updates),
            opt_state=opt_state,
        )


jax.tree_util.register_dataclass(
    TrainState,
    data_fields=[
        f.name for f in dataclasses.fields(TrainState) if f.metadata.get("pytree_node", True)
    ],
    meta_fields=[
        f.name for f in dataclasses.fields(TrainState) if not f.metadata.get("pytree_node", True)
    ],
)


def _own_buffers(state: TrainState) -> TrainState:
    """``state`` with every array leaf in a buffer of its own: a leaf that shares its buffer
    with an earlier one (an ``init`` that puts one zero in two fields, or a state leaf that is
    a params array) is copied, since a donating step cannot donate one buffer twice."""
    seen: set[int] = set()

    def own(x: Any) -> Any:
        if not isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
            return x
        if id(x) in seen:
            return jnp.array(x, copy=True)
        seen.add(id(x))
        return x

    return jax.tree.map(own, state)


def _opt_state_in_layout(opt_state: Any, tx: GradientTransformation, stored: Buffers) -> Any:
    """``opt_state`` over ``stored``'s buffers: a state built over the params tree
    (``tx.init(state.params)``) is packed into the layout; a flat one is returned as is."""
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, Buffers))
    if any(isinstance(x, Buffers) for x in leaves) or len(leaves) < stored.layout.num_leaves:
        return opt_state
    from dlopt.training.layout import opt_state_to_flat  # the layout module builds on this one

    try:
        return opt_state_to_flat(opt_state, tx, stored.layout)
    except ValueError:  # not the tree layout's state either: the caller's business
        return opt_state


def _check_flat(plan: Any) -> None:
    """Refuses ``flat=True`` for a ``tx`` the flat layout cannot run exactly."""
    if plan.error is not None:
        raise ValueError(
            f"flat=True: tx cannot run on the flat buffers ({plan.error}); pass flat=False."
        )
    if plan.foreign:
        raise ValueError(
            f"flat=True: tx holds {', '.join(plan.foreign)}, which may read leaf shapes the "
            "flat layout does not show; pass flat=False (or use the dlopt transform)."
        )
