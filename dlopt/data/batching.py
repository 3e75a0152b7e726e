"""The batching iterator: seeded per-epoch shuffles, uneven last batch, device placement."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from dlopt.core import validation
from dlopt.data.datasets import gather

MASK_KEY = "mask"


def _length(data: Any) -> int:
    if not isinstance(data, Mapping):
        if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                f"data must be a dict of arrays or an indexable source, got {type(data)}."
            )
        return len(data)
    if not data:
        raise ValueError("data must be a non-empty dict of arrays.")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"all arrays in data must have the same length, got {lengths}.")
    return next(iter(lengths.values()))


def _shards(sharding: jax.sharding.Sharding) -> int:
    """How many pieces the leading (batch) axis is cut into by ``sharding``."""
    if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.spec) > 0:
        axes = sharding.spec[0]
        if axes is None:
            return 1
        axes = axes if isinstance(axes, tuple) else (axes,)
        return math.prod(sharding.mesh.shape[a] for a in axes)
    return 1


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """Batches per epoch over ``n`` examples."""
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


def batches(
    data: Mapping[str, Any] | Any,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
    pad: bool = False,
    sharding: jax.sharding.Sharding | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, Any]]:
    """Yields one epoch of batches of ``data`` (a dict of equal-length arrays, as ``load`` gives,
    or an indexable source such as ``load(..., as_source=True)``, read batch by batch).

    The order is ``np.random.default_rng([seed, epoch]).permutation(n)``: the same seed and
    epoch give the same batches, another epoch another order. The last batch, when ``n`` is
    not a multiple of ``batch_size``, is dropped (``drop_remainder``), padded to full size by
    repeating its first rows with a boolean ``"mask"`` key that is False on the padding
    (``pad``; every batch then carries ``"mask"``, so a jitted step sees one shape and never
    recompiles), or else yielded short.

    Args:
      data: dict of arrays with a common leading axis (numpy, or anything ``np.asarray`` takes),
        or a random-access source (``len``, ``source[i]`` -> dict), read with ``gather``.
      batch_size: examples per batch.
      seed: shuffle seed.
      epoch: epoch number, mixed into the seed.
      shuffle: False keeps the data order.
      drop_remainder: drop the last short batch.
      pad: pad the last short batch and add ``"mask"`` (ignored with ``drop_remainder``).
      sharding: None yields numpy arrays on the host. A ``jax.sharding.Sharding`` (e.g.
        ``NamedSharding(mesh, PartitionSpec("data"))``, batch axis first) places each batch
        with ``jax.device_put``, split across the mesh's batch axis, ``prefetch`` batches ahead
        (transfers are asynchronous, so the next batches copy while a step runs).
      prefetch: batches placed on devices ahead of the one yielded (with ``sharding``).

    Returns:
      An iterator of dicts with the keys of ``data`` (plus ``"mask"`` with ``pad``). Arguments
      are checked when ``batches`` is called, before the first batch is asked for.

    Example:
      >>> import numpy as np
      >>> from dlopt.data import batches
      >>> data = {"image": np.zeros((10, 8, 8, 1)), "label": np.arange(10)}
      >>> [len(b["label"]) for b in batches(data, 4)]
      [4, 4, 2]
      >>> [int(b["mask"].sum()) for b in batches(data, 4, pad=True)]
      [4, 4, 2]
    """
    validation.check_int("batch_size", batch_size, 1)
    validation.check_int("prefetch", prefetch)
    n = _length(data)
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items()}
        take = lambda index: {k: v[index] for k, v in arrays.items()}  # noqa: E731
    else:
        arrays = gather(data, [0]) if n else {}
        take = lambda index: gather(data, index)  # noqa: E731
    if MASK_KEY in arrays and pad:
        raise ValueError(f"data already has a {MASK_KEY!r} key; pad=True would overwrite it.")
    if sharding is not None:
        shards = _shards(sharding)
        last_short = n % batch_size and not drop_remainder and not pad
        if batch_size % shards or (last_short and (n % batch_size) % shards):
            raise ValueError(
                f"{batch_size=} (and a last batch of {n % batch_size} when n={n}) must split "
                f"evenly over the {shards} shards of the batch axis: pick a multiple of "
                f"{shards}, or pass drop_remainder=True or pad=True."
            )
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    count = num_batches(n, batch_size, drop_remainder=drop_remainder)

    def host_batch(i: int) -> dict[str, np.ndarray]:
        index = order[i * batch_size : (i + 1) * batch_size]
        real = len(index)
        if pad and real < batch_size:
            index = np.resize(index, batch_size)  # repeats the batch's own rows
        batch = take(index)
        if pad:
            batch[MASK_KEY] = np.arange(batch_size) < real
        return batch

    if sharding is None:
        return (host_batch(i) for i in range(count))
    return _prefetched((host_batch(i) for i in range(count)), sharding, prefetch)


def _prefetched(
    host: Iterator[dict[str, np.ndarray]], sharding: jax.sharding.Sharding, prefetch: int
) -> Iterator[dict[str, jax.Array]]:
    """Places batches with ``device_put`` (asynchronous), keeping ``prefetch`` in flight."""
    queue: collections.deque = collections.deque()
    for batch in host:
        queue.append(jax.device_put(batch, sharding))
        if len(queue) > prefetch:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
