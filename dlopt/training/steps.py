"""Jit-compiled train and eval steps with donated state buffers.

The loss function contract, shared by every step builder (jit, pmap, mesh)::

    loss_fn(params, batch, *, model_state, rng, train) -> loss | (loss, aux)

``batch`` is a dict of arrays with a leading batch axis (an optional ``"mask"`` key marks the
valid rows of a padded batch: the loss should be a masked mean); ``rng`` is a typed key that is
new every step (fold of the state's key and ``state.step``), for dropout; ``train`` is False in
eval steps. ``aux`` is a dict with optional ``"model_state"`` (the updated non-trainable
variables, e.g. ``{"batch_stats": ...}``) and ``"metrics"`` (dict of per-batch mean scalars).

A train step returns ``(new_state, metrics)``; an eval step returns ``metrics``. ``metrics``
holds ``"loss"``, the loss function's metrics, and ``"num_examples"`` (the count of valid rows,
used to weight batch means into exact epoch means). Metrics must be scalar per-example means
(loss, accuracy); ratio metrics such as precision or F1 are not means of batch values: sum a
`dlopt.metrics.ConfusionMatrix` over the data instead.

Every builder shares one step (`train_step_fn`): gradients (`gradients`, micro-batches summed
in a float32 accumulator), the update through `TrainState.apply_gradients`, and the NaN/Inf
guard `dlopt.wrappers.finite.guarded` (a ``lax.cond``); its flags are one `StepOptions`. Two
optional parts ride in the state: ``state.averages`` (a `dlopt.training.ModelEMA` average,
updated after each applied update) and ``state.loss_scale`` (with ``loss_scale=``).

A flat state (`TrainState.create`'s default where it is faster) is differentiated with respect to its
flat buffers (``state.stored_params``): the loss function still gets the params tree (a view
of the buffers), the gradients come back flat, and the optimizer ``tx`` runs
over the buffers, one fused pass each (`dlopt.training.state`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation
from dlopt.training.state import TrainState
from dlopt.wrappers.finite import (
    accumulate,
    accumulation_dtype,
    all_finite,
    count_nonfinite,
    guarded,
)
from dlopt.core.flat import Buffers
from dlopt.wrappers.loss_scale import DynamicLossScale

LossFn = Callable[..., Any]
NUM_EXAMPLES = "num_examples"


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """The flags every train-step builder takes (`make_train_step`, the pmap and mesh steps).

    Pass them as keywords to a builder (``make_train_step(loss_fn, accumulation_steps=4)``)
    or as one object (``make_train_step(loss_fn, options=StepOptions(...))``; keywords win).

    Attributes:
        accumulation_steps: micro-batches per update (must divide the batch size); their
            example-weighted gradients are summed in float32 (float64 for float64 params).
        skip_nonfinite: the NaN/Inf guard: when the gradients or the metrics are not finite,
            params, opt_state and model state stay, ``skipped_steps`` and ``step`` count up.
        loss_as_value: pass the batch loss as ``value=`` to ``tx.update`` (plateau
            transforms); an explicit ``value=`` keyword to the step wins.
        donate: donate the input state's buffers (the old state is unusable after a call).
        loss_scale: a `dlopt.dynamic_loss_scale` policy, or None: the loss is multiplied by
            the state's scale :math:`S` before differentiation and the gradients divided by
            it; a step with non-finite gradients is skipped (whatever ``skip_nonfinite``)
            and :math:`S` adjusted. The state must hold its state
            (``TrainState.create(..., loss_scale=policy)``).
    """

    accumulation_steps: int = 1
    skip_nonfinite: bool = True
    loss_as_value: bool = False
    donate: bool = True
    loss_scale: DynamicLossScale | None = None

    def __post_init__(self):
        k = self.accumulation_steps
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(
                f"accumulation_steps must be an int >= 1, got accumulation_steps={k!r}."
            )
        for name in ("skip_nonfinite", "loss_as_value", "donate"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {name}={value!r}.")
        if self.loss_scale is not None and not isinstance(self.loss_scale, DynamicLossScale):
            raise ValueError(
                "loss_scale must be a dlopt.dynamic_loss_scale(...) policy or None, got "
                f"loss_scale={self.loss_scale!r}."
            )

    @classmethod
    def merge(cls, options: StepOptions | None, flags: Mapping[str, Any]) -> StepOptions:
        """``options`` (default: the defaults) with the keyword ``flags`` replaced."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(flags) - set(names))
        if unknown:
            raise TypeError(f"unexpected step option(s) {unknown}; the options are {names}.")
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a StepOptions, got {type(options).__name__}.")
        return dataclasses.replace(options or cls(), **flags)


def batch_weight(batch: Any) -> jax.Array:
    """The number of valid rows of ``batch``: ``sum(batch["mask"])`` or the leading size."""
    if isinstance(batch, Mapping) and "mask" in batch:
        return jnp.sum(jnp.asarray(batch["mask"]).astype(jnp.float32))
    return jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)


def _call_loss(loss_fn, params, batch, model_state, rng, train):
    if isinstance(params, Buffers):  # the loss sees the tree; gradients stay flat
        params = params.unflatten()
    out = loss_fn(params, batch, model_state=model_state, rng=rng, train=train)
    loss, aux = out if isinstance(out, tuple) else (out, {})
    aux = dict(aux or {})
    metrics = {"loss": loss, **aux.get("metrics", {})}
    metrics = {k: jnp.asarray(v).astype(jnp.float32) for k, v in metrics.items()}
    return loss, aux.get("model_state", model_state), metrics


def _split_micro(batch, k):
    def split(x):
        if x.shape[0] % k:
            raise ValueError(
                f"accumulation_steps={k} must divide the batch size, got a batch of {x.shape[0]}."
            )
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])

    return jax.tree.map(split, batch)


def _weighted(tree, w):
    """``w * x`` in the accumulator dtype (exactly 0 where ``w == 0``: an all-padding shard may
    have a NaN loss)."""
    return jax.tree.map(
        lambda x: accumulate(jnp.zeros(jnp.shape(x), accumulation_dtype(x)), x, weight=w), tree
    )


def _divided(tree, w, like=None):
    """``x / w`` (``w == 0`` divides by 1), cast to the dtypes of ``like`` when given."""
    safe = jnp.where(w > 0, w, jnp.ones_like(w))
    out = jax.tree.map(lambda x: x / safe.astype(x.dtype), tree)
    return out if like is None else tree_lib.cast_like(out, like)


def gradients(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    model_state: Any,
    rng: jax.Array,
    *,
    accumulation_steps: int = 1,
    weighted: bool = False,
    scale_loss: Callable[[jax.Array], jax.Array] | None = None,
) -> tuple[Any, Any, dict[str, jax.Array], jax.Array]:
    """Gradients, new model state, metric sums and the valid-row count of one batch.

    Returns ``(grads, new_model_state, metric_sums, weight)``: ``metric_sums`` are the
    metrics times the valid-row count ``weight``. With ``accumulation_steps = k > 1`` the
    batch is split into ``k`` micro-batches whose example-weighted gradients are summed in
    float32 (`dlopt.wrappers.finite.accumulate`, float64 for float64 params), and ``grads`` is that
    sum; with ``weighted=True`` (a device of a data-parallel step) ``grads`` is the weighted
    sum too, so sums over devices divide into exact means; otherwise ``grads`` is the plain
    gradient of the loss. The model state is threaded through the micro-batches in order.
    With ``scale_loss`` (loss scaling) the gradients are those of ``scale_loss(loss)``; the
    metrics keep the unscaled loss.
    """

    def one(model_state, micro, rng):
        def objective(p):
            loss, new_ms, metrics = _call_loss(loss_fn, p, micro, model_state, rng, True)
            return (loss if scale_loss is None else scale_loss(loss)), (new_ms, metrics)

        w = batch_weight(micro)
        (_, (new_ms, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return new_ms, grads, _weighted(metrics, w), w

    if accumulation_steps == 1:
        new_ms, grads, metrics, w = one(model_state, batch, rng)
        return (_weighted(grads, w) if weighted else grads), new_ms, metrics, w

    micro = _split_micro(batch, accumulation_steps)

    def body(carry, xs):
        ms, g_sum, m_sum, w_sum = carry
        micro_batch, i = xs
        ms, g, m, w = one(ms, micro_batch, jax.random.fold_in(rng, i))
        g_sum = jax.tree.map(lambda a, x: accumulate(a, x, weight=w), g_sum, g)
        m_sum = jax.tree.map(jnp.add, m_sum, m)
        return (ms, g_sum, m_sum, w_sum + w), None

    first = jax.tree.map(lambda x: x[0], micro)
    _, g_shape, m_shape, _ = jax.eval_shape(lambda: one(model_state, first, rng))
    g_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, accumulation_dtype(s)), g_shape)
    m_zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
    (new_ms, grads, metrics, w), _ = jax.lax.scan(
        body,
        (model_state, g_zeros, m_zeros, jnp.zeros((), jnp.float32)),
        (micro, jnp.arange(accumulation_steps, dtype=jnp.uint32)),
    )
    return grads, new_ms, metrics, w


def _weighted_mean(tree, w, w_total, axis_name):
    """The example-weighted mean over the devices of ``axis_name`` of the float leaves of
    ``tree`` (model state: BatchNorm statistics), integer leaves untouched."""

    def mean(x):
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact):
            return x
        total = jax.lax.psum(_weighted(x, w), axis_name)
        return _divided(total, w_total, like=x)

    return jax.tree.map(mean, tree)


def train_step_fn(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    options: StepOptions | None = None,
    *,
    axis_name: str | None = None,
    per_device_rng: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted train step; `make_train_step` and the parallel builders wrap it.

    With ``axis_name`` (inside ``pmap``), gradients, metrics and float model state are
    example-weighted means over the devices of that axis.
    """
    options = options if options is not None else StepOptions()
    k = options.accumulation_steps
    policy = options.loss_scale

    def step(state: TrainState, batch: Any, **extra_args: Any):
        step_key = jax.random.fold_in(state.key, state.step)
        if axis_name is not None and per_device_rng:
            step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
        parallel = axis_name is not None
        scale_loss = None
        if policy is not None:
            if getattr(state, "loss_scale", None) is None:
                raise ValueError(
                    "the step has loss_scale= but the state holds no loss-scale state: build "
                    "it with TrainState.create(..., loss_scale=policy) (the same policy)."
                )

            def scale_loss(loss):
                return policy.scale_loss(loss, state.loss_scale)

        grads, model_state, metrics, w = gradients(
            loss_fn,
            state.stored_params,
            batch,
            state.model_state,
            step_key,
            accumulation_steps=k,
            weighted=parallel,
            scale_loss=scale_loss,
        )
        if parallel:
            w_total = jax.lax.psum(w, axis_name)
            grads = jax.lax.psum(grads, axis_name)
            metrics = jax.lax.psum(metrics, axis_name)
            model_state = _weighted_mean(model_state, w, w_total, axis_name)
        else:
            w_total = w
        if parallel or k > 1:  # example-weighted sums -> means, in the params' dtypes
            grads = _divided(grads, w_total, like=state.stored_params)
        metrics = _divided(metrics, w_total)
        if policy is not None:
            grads = policy.unscale(grads, state.loss_scale)
        if options.loss_as_value:
            extra_args = {"value": metrics["loss"], **extra_args}

        def apply(s: TrainState) -> TrainState:
            new = s.apply_gradients(grads, **extra_args).replace(model_state=model_state)
            averages = getattr(new, "averages", None)  # ModelEMA's average, after the update
            return new if averages is None else new.replace(averages=averages.after_step(new))

        def apply_alike(s: TrainState) -> TrainState:  # both lax.cond branches: one type
            new = apply(s)
            return new.replace(
                opt_state=tree_lib.cast_like(new.opt_state, s.opt_state),
                model_state=tree_lib.cast_like(new.model_state, s.model_state),
            )

        def skip(s: TrainState) -> TrainState:
            skipped = count_nonfinite(False, s.skipped_steps)
            return s.replace(step=tree_lib.safe_increment(s.step), skipped_steps=skipped)

        current = state if tx is None else state.replace(tx=tx)
        if options.skip_nonfinite or policy is not None:
            finite = all_finite((grads, metrics) if options.skip_nonfinite else grads)
            new = guarded(finite, apply_alike, skip, current)
            if policy is not None:
                new = new.replace(loss_scale=policy.adjust(state.loss_scale, finite))
        else:
            new = apply(current)
        return new.replace(tx=state.tx), {**metrics, NUM_EXAMPLES: w_total}

    return step


def eval_step_fn(
    loss_fn: LossFn, *, axis_name: str | None = None
) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
    """The un-jitted eval step: the loss function with ``train=False``, nothing updated."""

    def total(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    def step(state: TrainState, batch: Any):
        key = jax.random.fold_in(state.key, state.step)
        _, _, metrics = _call_loss(
            loss_fn, state.stored_params, batch, state.model_state, key, False
        )
        w = batch_weight(batch)
        w_total = total(w)
        metrics = _divided(jax.tree.map(total, _weighted(metrics, w)), w_total)
        return {**metrics, NUM_EXAMPLES: w_total}

    return step


def make_train_step(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    *,
    options: StepOptions | None = None,
    **flags: Any,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """One jit-compiled train step ``(state, batch, **extra_args) -> (state, metrics)``.

    .. math::
        g = \\frac{\\sum_i w_i \\nabla L_i}{\\sum_i w_i},\\quad
        (u, s) = tx.update(g, s, \\theta, **extra),\\quad \\theta \\leftarrow \\theta + u

    over ``accumulation_steps`` micro-batches ``i`` with ``w_i`` valid rows each (one
    optimizer update per call, through `TrainState.apply_gradients`; BatchNorm state threads
    through the micro-batches). The RNG given to ``loss_fn`` is ``fold_in(state.rng,
    state.step)`` (then the micro-batch index). When the gradients or the loss are not finite
    the step is skipped (one ``lax.cond``, `dlopt.wrappers.finite.guarded`): params, opt_state and
    model state stay, ``skipped_steps`` and ``step`` count up.

    Args:
        loss_fn: ``loss_fn(params, batch, *, model_state, rng, train)``, see the module doc.
        tx: the optimizer; default ``state.tx`` (it must match the one that built opt_state).
        options: a `StepOptions`.
        **flags: `StepOptions` fields as keywords (``accumulation_steps``,
            ``skip_nonfinite``, ``loss_as_value``, ``donate``, ``loss_scale``), overriding
            ``options``.

    Returns:
        The jitted step. Extra keyword arguments (``value=``) are forwarded to ``tx.update``.

    Example:
        >>> step = make_train_step(loss_fn)            # doctest: +SKIP
        >>> state, metrics = step(state, {"x": x, "y": y})  # doctest: +SKIP
    """
    options = StepOptions.merge(options, flags)
    fn = train_step_fn(loss_fn, tx, options)
    return jax.jit(fn, donate_argnums=(0,) if options.donate else ())


def make_eval_step(loss_fn: LossFn) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
    """One jit-compiled eval step ``(state, batch) -> metrics`` (``train=False``, no donation).

    Example:
        >>> metrics = make_eval_step(loss_fn)(state, batch)  # doctest: +SKIP
    """
    return jax.jit(eval_step_fn(loss_fn))
