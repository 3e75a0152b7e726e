"""Multi-host data parallelism through ``jax.distributed``: start-up and per-process data.

Every process runs the same program: `initialize` once before any other JAX call, build the
mesh over all processes' devices (`dlopt.training.make_mesh`), place the same initial state
on it (`shard_state`), and feed each step this process's rows of the global batch
(`process_slice` / `local_rows`, then `shard_batch`). The mesh train step then computes what
one process computes on the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    initialization_timeout: int = 300,
) -> None:
    """Joins this process to a multi-process JAX run (call before any other JAX work).

    Args:
        coordinator_address: ``"host:port"`` of process 0's coordinator service.
        num_processes: the number of processes.
        process_id: this process's index in ``[0, num_processes)``.
        local_device_ids: the local devices this process drives (default: all).
        cpu_collectives: the CPU collectives backend (``"gloo"``, ``"mpi"``), set when the run
            uses CPU devices; None leaves JAX's setting alone.
        initialization_timeout: seconds to wait for all processes to join.

    Example:
        >>> initialize("localhost:1234", num_processes=2, process_id=0)  # doctest: +SKIP
    """
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be in [0, num_processes), got {process_id=}, {num_processes=}."
        )
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )


def shutdown() -> None:
    """Leaves the multi-process run (``jax.distributed.shutdown``)."""
    jax.distributed.shutdown()


def is_main_process() -> bool:
    """True on process 0 (the one that should write logs and checkpoints' metadata)."""
    return jax.process_index() == 0


def process_slice(global_batch_size: int) -> slice:
    """This process's consecutive rows of a global batch, in process order.

    The global batch size must divide by the number of processes.
    """
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ValueError(
            f"global_batch_size must divide by the number of processes, got "
            f"{global_batch_size=} for {n} processes."
        )
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def local_rows(global_batch: Any) -> Any:
    """Slices every leaf of a (host) global batch to this process's rows."""
    size = jax.tree.leaves(global_batch)[0].shape[0]
    rows = process_slice(size)
    return jax.tree.map(lambda x: x[rows], global_batch)
