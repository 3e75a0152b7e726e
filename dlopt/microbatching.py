"""Microbatching (optax.microbatching): evaluate a function on a batch one slice at a time
and combine the results, so peak memory is that of one microbatch.

`microbatch` turns ``fun(batch)`` into the loop (a ``lax.fori_loop``, so sequential)

    carry = init(shape of fun(slice_0));  for k: carry = update(carry, fun(slice_k), k)
    return finalize(carry)

with an `Accumulator` per output leaf (or a prefix of the output tree): SUM, MEAN
(``sum / n``), RUNNING_MEAN (``m_k = m_{k-1} k/(k+1) + x_k/(k+1)``, right after any number of
real microbatches) or CONCAT. The batch axis of size ``B`` is reshaped to
``(B / microbatch_size, microbatch_size)`` in column-major order, so a sharding of the batch
axis stays on the ``microbatch_size`` axis: slice ``k`` holds rows ``k, k + n, k + 2n, ...``.
`micro_vmap` is ``jax.vmap`` evaluated that way, `micro_grad` per-example gradients with a
transform (e.g. clipping, as in DP-SGD) and metrics, summed or averaged over the batch.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

Function = Callable[..., Any]
IndividualOutputs = collections.namedtuple("Aux", ["values", "metrics", "aux"])


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How microbatch results combine: ``init(shape_dtype)``, ``update(carry, value, index)``,
    ``finalize(carry)``, and ``aggregate(values)`` (a reduction over a leading batch axis,
    used by `micro_vmap` inside one microbatch)."""

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, int], Any]
    finalize: Callable[[Any], Any]
    aggregate: Callable[[Any], Any]


class AccumulationType(enum.Enum):
    """The built-in accumulations."""

    MEAN = enum.auto()
    """Average the microbatch outputs."""
    SUM = enum.auto()
    """Sum the microbatch outputs."""
    RUNNING_MEAN = enum.auto()
    """Average the microbatch outputs over `num_real_microbatches`."""
    CONCAT = enum.auto()
    """Concatenate the microbatch outputs along axis 0."""


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Each leaf's batch axis ``axis`` (size ``B``) reshaped to ``(B / microbatch_size,
    microbatch_size)`` in column-major order; under explicit sharding the batch axis's
    sharding moves to the ``microbatch_size`` axis.

    >>> import jax.numpy as jnp
    >>> from dlopt.microbatching import reshape_batch_axis
    >>> reshape_batch_axis(jnp.arange(6), 3)
    Array([[0, 2, 4],
           [1, 3, 5]], dtype=int32)
    """

    def reshape_leaf(x):
        new_shape = x.shape[:axis] + (-1, microbatch_size) + x.shape[axis + 1 :]
        sharding = jax.typeof(x).sharding
        if not sharding.mesh.are_all_axes_explicit:
            return x.reshape(new_shape, order="F")
        spec = sharding.spec
        if len(spec) >= axis:
            spec = PartitionSpec(*spec[:axis], None, spec[axis], *spec[axis + 1 :])
        nshards = x.shape[axis] // sharding.shard_shape(x.shape)[axis]
        if microbatch_size % nshards != 0:
            raise ValueError(f"nshards={nshards} must evenly divide {microbatch_size=}.")
        out = NamedSharding(sharding.mesh, spec)
        return x.reshape(new_shape, order="F", out_sharding=out)

    return jax.tree.map(reshape_leaf, tree)


def _lift(acc: Accumulator) -> Accumulator:
    """An array Accumulator applied leaf by leaf to pytrees."""
    return Accumulator(
        lambda value: jax.tree.map(acc.init, value),
        lambda carry, value, i: jax.tree.map(lambda c, v: acc.update(c, v, i), carry, value),
        lambda carry: jax.tree.map(acc.finalize, carry),
        lambda values: jax.tree.map(acc.aggregate, values),
    )


def _floating_only(fn: Function) -> Function:
    def checked(*args, **kwargs):
        dtypes = jax.tree.leaves(jax.tree.map(lambda x: x.dtype, (args, kwargs)))
        if not all(jnp.issubdtype(d, jnp.floating) for d in dtypes):
            raise ValueError("MEAN and RUNNING_MEAN Accumulators require floating-point values.")
        return fn(*args, **kwargs)

    return checked


def _check_count(num_microbatches: int | None) -> None:
    if num_microbatches is None or num_microbatches <= 0:
        raise ValueError(f"{num_microbatches=} must be positive.")


def _builtin(kind: AccumulationType, num_microbatches: int | None) -> Accumulator:
    mean0 = functools.partial(jnp.mean, axis=0)
    if kind is AccumulationType.SUM:
        return Accumulator(
            jnp.zeros_like, lambda c, v, _: c + v, lambda c: c, functools.partial(jnp.sum, axis=0)
        )
    if kind is AccumulationType.MEAN:
        _check_count(num_microbatches)
        zeros = _floating_only(jnp.zeros_like)
        return Accumulator(zeros, lambda c, v, _: c + v, lambda c: c / num_microbatches, mean0)
    if kind is AccumulationType.RUNNING_MEAN:

        def running(carry, value, index):
            p = index / (index + 1)
            return carry * p + value * (1 - p)

        return Accumulator(_floating_only(jnp.zeros_like), running, lambda c: c, mean0)
    _check_count(num_microbatches)

    def concat_init(value):
        return jnp.broadcast_to(jnp.zeros_like(value), (num_microbatches, *value.shape))

    def concat_finalize(carry):  # undo the column-major split: row k*n + j from slice j
        sharding = jax.typeof(carry).sharding
        kwargs = {}
        if sharding.mesh.are_all_axes_explicit:
            spec = PartitionSpec(*sharding.spec[1:]) if sharding.spec else PartitionSpec()
            kwargs["out_sharding"] = NamedSharding(sharding.mesh, spec)
        return carry.reshape(-1, *carry.shape[2:], order="F", **kwargs)

    return Accumulator(
        concat_init, lambda c, v, i: c.at[i].set(v), concat_finalize, lambda values: values
    )


def _canonicalize(tree: Any, num_microbatches: int | None) -> Accumulator:
    """One pytree Accumulator from a tree (prefix of the outputs) of Accumulators/types."""

    def one(acc):
        if isinstance(acc, Accumulator):
            return acc
        if isinstance(acc, AccumulationType):
            return _lift(_builtin(acc, num_microbatches))
        raise ValueError(f"Unknown accumulator: {acc}")

    accs = jax.tree.map(one, tree)
    return Accumulator(
        lambda values: jax.tree.map(lambda a, x: a.init(x), accs, values),
        lambda carry, value, i: jax.tree.map(lambda a, c, x: a.update(c, x, i), accs, carry, value),
        lambda carry: jax.tree.map(lambda a, c: a.finalize(c), accs, carry),
        lambda values: jax.tree.map(lambda a, x: a.aggregate(x), accs, values),
    )


def microbatch(
    fun: Function,
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    """``fun`` evaluated on slices of ``microbatch_size`` rows of its batch arguments
    (positions ``argnums``, keywords ``argnames``, batch axes ``in_axes``, aligned with
    ``argnums + argnames``), combined by ``accumulator`` (see the module docstring).
    ``microbatch_size=None`` returns ``fun``; ``num_real_microbatches`` stops the loop early
    (variable batch sizes without recompiling).

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> fun = lambda x: (x + 1, jnp.sum(3 * x))
    >>> kinds = dlopt.microbatching.AccumulationType
    >>> how = (kinds.CONCAT, kinds.SUM)
    >>> dlopt.microbatch(fun, argnums=0, microbatch_size=2, accumulator=how)(jnp.arange(1, 5))
    (Array([2, 3, 4, 5], dtype=int32), Array(30, dtype=int32))
    """
    if microbatch_size is None:
        return fun
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    if isinstance(in_axes, int):
        in_axes = (in_axes,) * (len(argnums) + len(argnames))
    axes_args, axes_kwargs = in_axes[: len(argnums)], in_axes[len(argnums) :]

    def microbatched(*args, **kwargs):
        batch = [args[i] for i in argnums] + [kwargs[k] for k in argnames]
        sizes = jax.tree.leaves(
            jax.tree.map(
                lambda ax, sub: jax.tree.map(lambda x: x.shape[ax], sub),
                tuple(in_axes),
                tuple(batch),
            )
        )
        if len(set(sizes)) > 1:
            raise ValueError(f"Batch Arguments must have equal-size batch axes, found {sizes}.")
        batch_size = sizes[0]
        if batch_size % microbatch_size != 0:
            raise ValueError(f"{batch_size=} must be divisible by {microbatch_size=}.")
        args, kwargs = list(args), dict(kwargs)
        for i, ax in zip(argnums, axes_args, strict=False):
            args[i] = reshape_batch_axis(args[i], microbatch_size, ax)
        for k, ax in zip(argnames, axes_kwargs, strict=False):
            kwargs[k] = reshape_batch_axis(kwargs[k], microbatch_size, ax)
        num_microbatches = batch_size // microbatch_size
        acc = _canonicalize(accumulator, num_microbatches)

        def on_slice(index):
            a, kw = list(args), dict(kwargs)
            take = functools.partial(jnp.take, indices=index)
            for i, ax in zip(argnums, axes_args, strict=False):
                a[i] = jax.tree.map(functools.partial(take, axis=ax), a[i])
            for k, ax in zip(argnames, axes_kwargs, strict=False):
                kw[k] = jax.tree.map(functools.partial(take, axis=ax), kw[k])
            return fun(*a, **kw)

        bound = num_microbatches if num_real_microbatches is None else num_real_microbatches
        carry = acc.init(jax.eval_shape(on_slice, 0))
        body = lambda index, carry: acc.update(carry, on_slice(index), index)  # noqa: E731
        return acc.finalize(jax.lax.fori_loop(0, bound, body, carry))

    return microbatched


def micro_vmap(
    fun: Function,
    in_axes: int | Sequence[int] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: Callable[..., Function] = jax.vmap,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.CONCAT,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    """``jax.vmap(fun, in_axes)`` run ``microbatch_size`` rows at a time; ``accumulator``
    CONCAT (default) returns what vmap would, SUM/MEAN reduce over the batch without
    materializing it. Keywords are mapped over axis 0; ``out_axes`` must be 0.

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> dlopt.microbatching.micro_vmap(lambda x: x**2, microbatch_size=2)(jnp.arange(4))
    Array([0, 1, 4, 9], dtype=int32)
    """
    if out_axes != 0:
        raise NotImplementedError("out_axis != 0 is not currently supported")
    in_axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    def vmap_reduce(*args, kwargs):
        output = vmap_fn(fun, in_axes, out_axes)(*args, **kwargs)
        size = jax.tree.leaves(output)[0].shape[0]
        return _canonicalize(accumulator, size).aggregate(output)

    mapped = microbatch(
        vmap_reduce,
        argnums=tuple(i for i, ax in enumerate(in_axes) if ax is not None),
        argnames="kwargs",
        microbatch_size=microbatch_size,
        accumulator=accumulator,
        in_axes=tuple(ax for ax in in_axes if ax is not None) + (0,),
        num_real_microbatches=num_real_microbatches,
    )
    return lambda *args, **kwargs: mapped(*args, kwargs=kwargs)


def micro_grad(
    fun: Function,
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Accumulator | AccumulationType | Any = AccumulationType.SUM,
    transform_fn: Callable[[Any], Any] = lambda x: x,
    metrics_fn: Callable[[Any], Any] = lambda x: None,
    num_real_microbatches: int | jax.Array | None = None,
) -> Function:
    """Per-example gradients ``g_i = grad fun(params, example_i)``, transformed and combined:
    returns ``(accumulate_i transform_fn(g_i), Aux(values, metrics, aux))`` with per-example
    ``values`` (``fun``'s), ``metrics`` (``metrics_fn(g_i)``) and ``aux`` (with ``has_aux``).
    ``batch_argnums`` name the batched arguments; with ``keep_batch_dim`` each example is
    passed with a batch axis of size 1. Per-example clipping for DP-SGD is one
    ``transform_fn`` (Abadi et al., 2016; see https://arxiv.org/abs/2510.00236).

    >>> import jax.numpy as jnp
    >>> import dlopt
    >>> loss = lambda w, x, y: 0.5 * jnp.mean((x @ w - y) ** 2)
    >>> grads, aux = dlopt.microbatching.micro_grad(loss, batch_argnums=(1, 2))(
    ...     jnp.zeros(1), jnp.ones((4, 1)), jnp.array([0.0, 2.0, 4.0, 6.0]))
    >>> grads, aux.values
    (Array([-12.], dtype=float32), Array([ 0.,  2.,  8., 18.], dtype=float32))
    """
    batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    with_aux = fun if has_aux else (lambda *a, **kw: (fun(*a, **kw), None))
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def grad_fn(*args, **kwargs):
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(value, metrics_fn(grad), aux)

    in_axes = [None] * (max(batch_argnums) + 1)
    for i in batch_argnums:
        in_axes[i] = 0
    micro_fun = micro_vmap(
        grad_fn,
        in_axes=in_axes,
        accumulator=(accumulator, AccumulationType.CONCAT),
        microbatch_size=microbatch_size,
        num_real_microbatches=num_real_microbatches,
    )
    if not keep_batch_dim:
        return micro_fun

    def with_batch_axis(*args, **kwargs):
        args = list(args)
        for i in batch_argnums:
            args[i] = jax.tree.map(lambda x: jnp.expand_dims(x, axis=1), args[i])
        return micro_fun(*args, **kwargs)

    return with_batch_axis
