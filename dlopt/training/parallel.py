"""Data-parallel train steps: ``pmap`` over an axis name, or ``jit`` over a device mesh.

Both compute what one device computes on the global batch: gradients, metrics and float
model state (BatchNorm statistics) are example-weighted means over the devices. With a
mesh, the batch is sharded over the data axis and params replicated; ``shard_opt_state=True``
also shards the optimizer state over the data axis (ZeRO-1), which changes memory, not numbers.

Uneven last batches: the global batch size must divide by the number of devices. Either drop
the last partial batch, or pad it to full size with a ``"mask"`` key (1 for real rows, 0 for
padding; `pad_batch` does both) and write the loss as a masked mean; the steps weight every
device by its count of real rows, so padded batches give exact means. Padded rows still pass
through BatchNorm in train mode and shift its batch statistics: drop the last batch instead
when the model has BatchNorm and exact statistics matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlopt.core import validation
from dlopt.core.base import GradientTransformation
from dlopt.training.state import TrainState
from dlopt.training.steps import (
    LossFn,
    StepOptions,
    eval_step_fn,
    train_step_fn,
    with_loss_scale,
)

# --- pmap


def replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """Copies every leaf onto each device, with a new leading device axis (for ``pmap``)."""
    devices = list(devices) if devices is not None else jax.local_devices()
    sharding = NamedSharding(Mesh(np.array(devices), ("devices",)), P("devices"))
    n = len(devices)
    return jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x, (n, *jnp.shape(x))), sharding), tree
    )


def unreplicate(tree: Any) -> Any:
    """The first device's copy of a replicated tree (drops the leading device axis)."""
    return jax.tree.map(lambda x: x[0], tree)


def split_batch(batch: Any, num_devices: int | None = None) -> Any:
    """Reshapes each leaf ``(B, ...)`` to ``(num_devices, B // num_devices, ...)``."""
    n = num_devices or jax.local_device_count()

    def split(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.shape[0] % n:
            raise ValueError(
                f"the batch size must divide by the number of devices, got a batch of "
                f"{x.shape[0]} for {n} devices. Drop the last batch or pad it with a 'mask'."
            )
        return x.reshape((n, x.shape[0] // n) + x.shape[1:])

    return jax.tree.map(split, batch)


def pad_batch(batch: Any, multiple: int) -> Any:
    """Pads every leaf with zero rows up to a multiple of ``multiple`` and marks real rows.

    The result has a ``"mask"`` (float32, 1 for real rows, 0 for padding; an existing mask is
    padded with zeros), so a masked-mean loss and the steps' example weights ignore the
    padding. ``batch`` must be a dict of host arrays with a common leading size.

    Example:
        >>> import numpy as np
        >>> from dlopt.training import pad_batch
        >>> pad_batch({"x": np.ones((5, 2))}, 4)["mask"]
        array([1., 1., 1., 1., 1., 0., 0., 0.], dtype=float32)
    """
    validation.check_int("multiple", multiple, 1)
    batch = {k: np.asarray(v) for k, v in batch.items()}
    n = len(next(iter(batch.values())))
    if "mask" not in batch:
        batch["mask"] = np.ones(n, np.float32)
    pad = -n % multiple
    zeros = {k: np.zeros((pad, *v.shape[1:]), v.dtype) for k, v in batch.items()}
    return {k: np.concatenate([v, zeros[k]]) for k, v in batch.items()}


def make_pmap_train_step(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    *,
    axis_name: str = "batch",
    per_device_rng: bool = True,
    options: StepOptions | None = None,
    **flags: Any,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A ``pmap`` train step ``(replicated_state, split_batch) -> (state, metrics)``.

    The one-device step's three parts, with the reduction over ``axis_name``
    (`dlopt.training.steps.reduce_gradients`). Gradients are ``psum(w_d * g_d) / psum(w_d)``
    over the devices ``d`` of ``axis_name``
    (``w_d`` the valid rows; the ``lax.pmean`` of gradients for equal shards), summed in
    float32; float model state (BatchNorm statistics) is averaged with the same weights
    ``w_d`` (a device holding only padding counts for nothing, as in the mesh step), and
    metrics come back once (not per device). BatchNorm layers should name the same
    ``axis_name`` so their batch statistics are global.

    Args:
        loss_fn, tx, options, **flags: as in `make_train_step` (the `StepOptions`).
        axis_name: the pmap axis name.
        per_device_rng: fold the device index into the step RNG (independent dropout masks
            per device). With False every device gets the same key: a loss that draws its
            randomness per example (keyed by an example id) then reproduces a one-device run.

    Returns:
        The pmapped step; use `replicate` for the state and `split_batch` for the batch.
    """
    options = StepOptions.merge(options, flags)
    fn = train_step_fn(loss_fn, tx, options, axis_name=axis_name, per_device_rng=per_device_rng)
    return jax.pmap(
        fn, axis_name=axis_name, out_axes=(0, None), donate_argnums=(0,) if options.donate else ()
    )


def make_pmap_eval_step(
    loss_fn: LossFn, *, axis_name: str = "batch"
) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
    """A ``pmap`` eval step ``(replicated_state, split_batch) -> metrics`` (global means)."""
    return jax.pmap(eval_step_fn(loss_fn, axis_name=axis_name), axis_name=axis_name, out_axes=None)


# --- mesh + NamedSharding


def make_mesh(num_devices: int | None = None, *, data_axis: str = "data") -> Mesh:
    """A 1-D mesh over ``num_devices`` devices (default: all, on every host) named ``data_axis``.

    The axis is ``AxisType.Auto`` (the compiler propagates shardings), which the mesh steps
    assume (JAX's own ``make_mesh`` default is ``Explicit``).
    """
    n = num_devices or jax.device_count()
    return jax.make_mesh(
        (n,), (data_axis,), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,)
    )


def _leaf_spec(x: Any, axis_size: int, data_axis: str, shard: bool) -> P:
    if shard:
        for dim, size in enumerate(np.shape(x)):
            if size % axis_size == 0 and size >= axis_size:
                return P(*([None] * dim + [data_axis]))
    return P()


def state_sharding(
    state: TrainState, mesh: Mesh, *, data_axis: str = "data", shard_opt_state: bool = False
) -> TrainState:
    """The `NamedSharding` of each leaf of ``state``: replicated, except (with
    ``shard_opt_state``) optimizer-state leaves, split over ``data_axis`` along their first
    dimension that divides by the axis size (leaves with none stay replicated)."""
    size = mesh.shape[data_axis]

    def specs(tree, shard):
        return jax.tree.map(
            lambda x: NamedSharding(mesh, _leaf_spec(x, size, data_axis, shard)), tree
        )

    replicated = specs(state, False)
    return replicated.replace(opt_state=specs(state.opt_state, shard_opt_state))


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and x.is_fully_addressable is False:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_state(
    state: TrainState, mesh: Mesh, *, data_axis: str = "data", shard_opt_state: bool = False
) -> TrainState:
    """Places ``state`` on ``mesh`` per `state_sharding`; on many hosts every process must
    pass the same values (e.g. built from the same seed)."""
    shardings = state_sharding(state, mesh, data_axis=data_axis, shard_opt_state=shard_opt_state)
    return jax.tree.map(_place, state, shardings)


def shard_batch(batch: Any, mesh: Mesh, *, data_axis: str = "data") -> Any:
    """Makes global arrays, sharded over ``data_axis``, from this process's rows of a batch.

    On one host this is the whole batch; on many, each process passes its own consecutive
    slice (see `dlopt.training.distributed.process_slice`) and the global batch is their
    concatenation in process order.
    """
    sharding = NamedSharding(mesh, P(data_axis))
    local_devices = len(mesh.local_devices)
    for x in jax.tree.leaves(batch):
        if np.shape(x)[0] % local_devices:
            raise ValueError(
                f"each process's batch rows must divide by its {local_devices} devices in the "
                f"mesh, got {np.shape(x)[0]} rows. Drop the last batch or use pad_batch."
            )
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def make_mesh_train_step(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    *,
    mesh: Mesh,
    data_axis: str = "data",
    shard_opt_state: bool = False,
    options: StepOptions | None = None,
    **flags: Any,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """A ``jit`` train step over ``mesh``: batch sharded on ``data_axis``, params replicated.

    The step is the one-device step (`make_train_step`: `dlopt.training.steps.gradients` ->
    `dlopt.training.steps.reduce_gradients` -> `dlopt.training.steps.apply_guarded`) compiled
    for the global arrays, so its numbers match one device; XLA inserts the gradient
    all-reduce. With
    ``shard_opt_state=True`` (ZeRO-1) the optimizer state stays sharded between steps.
    Place the state with `shard_state` (same flags) and batches with `shard_batch`. Dropout
    masks are drawn for the global batch from one key, so every shard's rows get their own.

    Args:
        loss_fn, tx, options, **flags: as in `make_train_step` (the `StepOptions`).
        mesh: the device mesh (`make_mesh`).
        data_axis: the mesh axis the batch is split over.
        shard_opt_state: shard optimizer-state leaves over ``data_axis``.

    Returns:
        The step ``(state, batch, **extra_args) -> (state, metrics)``; metrics are replicated.
    """
    options = StepOptions.merge(options, flags)
    fn = train_step_fn(loss_fn, tx, options)
    compiled: dict[Any, Callable] = {}
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(data_axis))

    def step(state: TrainState, batch: Any, **extra_args: Any):
        # a loss-scale state starts outside the jit, so that in and out shardings match
        state = with_loss_scale(state, options.loss_scale)
        key = (jax.tree.structure(state), tuple(sorted(extra_args)))
        if key not in compiled:
            shardings = state_sharding(
                state, mesh, data_axis=data_axis, shard_opt_state=shard_opt_state
            )
            compiled[key] = jax.jit(
                lambda s, b, extra: fn(s, b, **extra),
                in_shardings=(shardings, batch_sharding, replicated),
                out_shardings=(shardings, replicated),
                donate_argnums=(0,) if options.donate else (),
            )
        return compiled[key](state, batch, extra_args)

    return step


def make_mesh_eval_step(
    loss_fn: LossFn, *, mesh: Mesh, data_axis: str = "data"
) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
    """A ``jit`` eval step over ``mesh`` (batch sharded, metrics replicated)."""
    return jax.jit(
        eval_step_fn(loss_fn),
        in_shardings=(None, NamedSharding(mesh, P(data_axis))),
        out_shardings=NamedSharding(mesh, P()),
    )
