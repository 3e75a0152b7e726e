"""`update_bn`: BatchNorm statistics recomputed for given params (torch's ``swa_utils.update_bn``).

Averaged params (`dlopt.training.SWA`) were never run through the model, so the running
BatchNorm statistics of the training state belong to other weights. `update_bn` resets them
and recomputes them with one train-mode pass over some batches, as the plain mean of the
per-batch statistics (torch sets ``momentum=None``: a cumulative average).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from dlopt.core import numerics, validation


@functools.lru_cache(maxsize=32)
def _forward(loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    """The jitted train-mode pass ``(params, batch, model_state, key) -> new model state``."""

    @jax.jit
    def forward(params, batch, model_state, key):
        out = loss_fn(params, batch, model_state=model_state, rng=key, train=True)
        aux = dict((out[1] if isinstance(out, tuple) else None) or {})
        return aux.get("model_state", model_state)

    return forward


@jax.jit
def _running_mean(running: list, zeroed: list, n: jax.Array, one_minus_m: jax.Array) -> list:
    """``r <- (1 - 1/n) r + (1/n) b`` with the batch statistic ``b = zeroed / (1 - m)``."""

    def leaf(r, z):
        f = numerics.compute_dtype(r.dtype)
        b = z.astype(f) / one_minus_m.astype(f)
        w = (1.0 / n).astype(f)
        return ((1.0 - w) * r.astype(f) + w * b).astype(r.dtype)

    return [leaf(r, z) for r, z in zip(running, zeroed, strict=True)]


def _is_stat(path: tuple, leaf: Any, only_batch_stats: bool) -> bool:
    if not jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact):
        return False
    return not only_batch_stats or getattr(path[0], "key", None) == "batch_stats"


def update_bn(
    state: Any,
    batches: Iterable[Any],
    loss_fn: Callable[..., Any],
    *,
    momentum: float = 0.99,
) -> Any:
    """``state`` with its BatchNorm statistics recomputed over ``batches`` for its params.

    .. math::
        \\mu = \\frac{1}{N} \\sum_{i=1}^{N} \\mu_i, \\qquad
        \\sigma^2 = \\frac{1}{N} \\sum_{i=1}^{N} \\sigma^2_i

    over the :math:`N` batches, :math:`\\mu_i, \\sigma^2_i` the statistics BatchNorm computes
    on batch :math:`i` in train mode (torch's ``update_bn``: reset, ``momentum=None``, one
    pass). The statistics are the float leaves of ``state.model_state["batch_stats"]`` (a
    linen model), or of the whole model state when it has no ``"batch_stats"`` (``flax.nnx``);
    other leaves are kept. A train-mode pass moves a statistic as ``r <- m r + (1 - m)
    \\mu_i``, so the pass starts from :math:`r = 0` and reads :math:`\\mu_i = r / (1 - m)`:
    the first batch is run twice more to check that the statistics move with ``momentum``
    (a ``ValueError`` names the leaf that does not). The loss function's RNG is
    ``fold_in(state.key, i)`` for batch ``i`` (dropout is on, as in torch).

    Flax's BatchNorm keeps the biased batch variance, torch's the unbiased one: the
    variances differ from torch's by the factor :math:`(B - 1) / B` for batches of :math:`B`
    rows per statistic.

    Args:
        state: a `TrainState` (one device, or sharded on a mesh; ``unreplicate`` a pmap one),
            with the params to compute the statistics for (e.g. ``swap_averages(state)``).
        batches: an iterable of batches, as the train step takes them.
        loss_fn: the loss function, ``loss_fn(params, batch, *, model_state, rng, train)``
            returning ``(loss, {"model_state": ...})`` in train mode.
        momentum: the model's BatchNorm momentum :math:`m` in [0, 1) (flax's default 0.99).

    Returns:
        ``state`` with the new statistics in ``model_state`` (everything else unchanged).

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, dlopt
        >>> from dlopt.training import TrainState, update_bn
        >>> model = nn.BatchNorm(momentum=0.9)
        >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 1)), use_running_average=True)
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     y, updates = model.apply({"params": params, **model_state}, batch["x"],
        ...                              use_running_average=not train, mutable=["batch_stats"])
        ...     return jnp.mean(y**2), {"model_state": updates}
        >>> state = TrainState.create(apply_fn=model.apply, params=variables["params"],
        ...                           tx=dlopt.sgd(0.1), rng=0,
        ...                           model_state={"batch_stats": variables["batch_stats"]})
        >>> batches = [{"x": jnp.array([[1.0], [3.0]])}, {"x": jnp.array([[5.0], [7.0]])}]
        >>> stats = update_bn(state, batches, loss_fn, momentum=0.9).model_state["batch_stats"]
        >>> stats["mean"], stats["var"]  # means 2 and 6, variances 1 and 1
        (Array([4.], dtype=float32), Array([1.], dtype=float32))

    References:
        Izmailov et al., "Averaging Weights Leads to Wider Optima and Better Generalization",
        UAI 2018; ``torch.optim.swa_utils.update_bn``.
    """
    validation.check_in_range("momentum", momentum, 0.0, 1.0)
    model_state = state.model_state
    flat, treedef = tree_flatten_with_path(model_state)
    only_batch_stats = isinstance(model_state, Mapping) and "batch_stats" in model_state
    stat = [_is_stat(path, leaf, only_batch_stats) for path, leaf in flat]
    if not any(stat):
        return state
    leaves = [leaf for _, leaf in flat]

    def filled(value: float) -> Any:
        return jax.tree.unflatten(
            treedef,
            [jnp.full_like(x, value) if s else x for x, s in zip(leaves, stat, strict=True)],
        )

    def stats_of(tree: Any) -> list:
        return [x for x, s in zip(jax.tree.leaves(tree), stat, strict=True) if s]

    try:
        forward = _forward(loss_fn)
    except TypeError:  # an unhashable callable: not cached
        forward = _forward.__wrapped__(loss_fn)
    zeros = filled(0.0)
    one_minus_m = jnp.asarray(1.0 - momentum, jnp.float32)
    running, n = None, 0
    for i, batch in enumerate(batches):
        key = jax.random.fold_in(state.key, i)
        zeroed = stats_of(forward(state.params, batch, zeros, key))
        if i == 0:
            oned = stats_of(forward(state.params, batch, filled(1.0), key))
            _check_momentum(flat, stat, zeroed, oned, momentum)
            running = [jnp.zeros_like(z) for z in zeroed]
        n += 1
        running = _running_mean(running, zeroed, jnp.asarray(n, jnp.float32), one_minus_m)
    if running is None:
        raise ValueError("update_bn got no batches: pass at least one.")
    new = iter(running)
    out = [next(new).astype(x.dtype) if s else x for x, s in zip(leaves, stat, strict=True)]
    return state.replace(model_state=jax.tree.unflatten(treedef, out))


def _check_momentum(flat: list, stat: list, zeroed: list, oned: list, momentum: float) -> None:
    """From ``r = 0`` and ``r = 1`` on one batch: ``r_1 - r_0 = m`` for every statistic."""
    paths = [path for (path, _), s in zip(flat, stat, strict=True) if s]
    for path, r0, r1 in zip(paths, zeroed, oned, strict=True):
        r0, r1 = np.asarray(r0, np.float64), np.asarray(r1, np.float64)
        moved = r1 - r0
        if not np.all(np.abs(moved - momentum) <= 1e-5 * (1.0 + np.abs(r0))):
            raise ValueError(
                f"update_bn: the model state at {keystr(path)} does not move like a BatchNorm "
                f"statistic with momentum={momentum} in a train-mode pass (it moved with "
                f"momentum ~{float(np.median(moved)):.4g}). Pass the model's BatchNorm "
                "momentum (flax's default is 0.99)."
            )
