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

Every builder (jit, pmap, mesh) shares one step (`train_step_fn`) of three parts:
`gradients` (micro-batches summed in a float32 accumulator) -> `reduce_gradients` (means
over the devices) -> `apply_guarded` (the update through `TrainState.apply_gradients`
behind the NaN/Inf guard `dlopt.wrappers.finite.guarded`, a ``lax.cond``, whose skips count
in ``state.skipped_steps``); its flags are one `StepOptions`. Two optional parts ride in the
state: ``state.averages`` (a `dlopt.training.ModelEMA` average, updated after each applied
update) and ``state.loss_scale`` (with ``loss_scale=``, started on the first step).

A flat state (`TrainState.create`'s default where it is faster) is differentiated with
respect to its flat buffers (``state.stored_params``): the loss function still gets the params
tree (a view of the buffers), the gradients come back flat, and the optimizer ``tx`` runs over
the buffers, one fused pass each (`dlopt.training.state`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation
from dlopt.core.flat import Buffers
from dlopt.training.options import StepOptions
from dlopt.training.state import TrainState
from dlopt.wrappers.accumulation import accumulate, accumulation_dtype
from dlopt.wrappers.finite import all_finite, count_nonfinite, guarded, skipped_in
from dlopt.wrappers.loss_scale import DynamicLossScale

LossFn = Callable[..., Any]
NUM_EXAMPLES = "num_examples"


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

    Returns ``(grads, new_model_state, metric_sums, weight)``: ``metric_sums`` are the metrics
    times the valid-row count ``weight``. With ``accumulation_steps = k > 1`` the batch is split
    into ``k`` micro-batches whose example-weighted gradients are summed in float32
    (`dlopt.wrappers.accumulation.accumulate`, float64 for float64 params), and ``grads`` is
    that sum; with ``weighted=True`` (a device of a data-parallel step) ``grads`` is the
    weighted sum too, so sums over devices divide into exact means (`reduce_gradients`);
    otherwise ``grads`` is the plain gradient of the loss. The model state is threaded through
    the micro-batches in order. With ``scale_loss`` (loss scaling) the gradients are those of
    ``scale_loss(loss)``; the metrics keep the unscaled loss.
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


def reduce_gradients(
    grads: Any,
    model_state: Any,
    metric_sums: dict[str, jax.Array],
    weight: jax.Array,
    *,
    params: Any,
    axis_name: str | None = None,
    summed: bool = False,
) -> tuple[Any, Any, dict[str, jax.Array], jax.Array]:
    """`gradients`' sums -> example-weighted means over the devices of ``axis_name``.

    .. math::
        g = \\frac{\\sum_d \\sum_i w_{d,i} g_{d,i}}{\\sum_d \\sum_i w_{d,i}}

    With ``axis_name`` (inside ``pmap``) gradients, metrics and the valid-row count are
    ``psum``-ed and float model state averaged with the devices' weights; without it (one
    device, or a mesh step whose all-reduce XLA inserts) only the division remains.
    ``summed`` says ``grads`` is a weighted sum (micro-batches or devices), divided then and
    cast back to the dtypes of ``params``.

    Returns:
        ``(grads, model_state, metrics, weight_total)``.
    """
    w_total = weight
    if axis_name is not None:
        w_total = jax.lax.psum(weight, axis_name)
        grads = jax.lax.psum(grads, axis_name)
        metric_sums = jax.lax.psum(metric_sums, axis_name)
        model_state = _weighted_mean(model_state, weight, w_total, axis_name)
    if summed or axis_name is not None:
        grads = _divided(grads, w_total, like=params)
    return grads, model_state, _divided(metric_sums, w_total), w_total


def with_loss_scale(state: TrainState, policy: DynamicLossScale | None) -> TrainState:
    """``state`` holding ``policy.init()`` as its loss-scale state, unless it holds one (or
    ``policy`` is None): the policy is given once, to the step (or to `fit`)."""
    if policy is None or getattr(state, "loss_scale", None) is not None:
        return state
    return state.replace(loss_scale=policy.init())


def apply_guarded(
    state: TrainState,
    grads: Any,
    model_state: Any,
    metrics: dict[str, jax.Array],
    *,
    tx: GradientTransformation | None = None,
    options: StepOptions | None = None,
    extra_args: Mapping[str, Any] | None = None,
) -> TrainState:
    """The update of one step, behind the one NaN/Inf guard.

    Unscales ``grads`` (a loss-scaled step), runs `TrainState.apply_gradients` (``value=``
    the loss with ``loss_as_value``), sets ``model_state`` and steps ``state.averages``;
    with the guard on (``skip_nonfinite`` or a loss scale) this runs inside
    `dlopt.wrappers.finite.guarded`, and a non-finite step only counts ``step`` and
    ``skipped_steps`` up (`dlopt.wrappers.finite.count_nonfinite`). An update skipped by a
    `dlopt.skip_step_on_spikes` inside ``tx`` counts in ``skipped_steps`` too
    (`dlopt.wrappers.finite.skipped_in`). The loss scale is then adjusted by the same
    finiteness.
    """
    options = options if options is not None else StepOptions()
    policy = options.loss_scale
    extra_args = dict(extra_args or {})
    if policy is not None:
        grads = policy.unscale(grads, state.loss_scale)
    if options.loss_as_value:
        extra_args = {"value": metrics["loss"], **extra_args}
    if options.pass_loss:
        extra_args = {"loss": metrics["loss"], **extra_args}

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
        return s.replace(step=tree_lib.safe_increment(s.step))

    current = state if tx is None else state.replace(tx=tx)
    if not (options.skip_nonfinite or policy is not None):
        new = apply(current).replace(tx=state.tx)
        spiked = skipped_in(new.opt_state)  # a skip_step_on_spikes inside tx
        if spiked is None:
            return new
        return new.replace(skipped_steps=count_nonfinite(~spiked, state.skipped_steps))
    finite = all_finite((grads, metrics) if options.skip_nonfinite else grads)
    new = guarded(finite, apply_alike, skip, current)
    spiked = skipped_in(new.opt_state)  # where not finite, the old state's flag: ignored
    taken = finite if spiked is None else finite & ~spiked
    new = new.replace(tx=state.tx, skipped_steps=count_nonfinite(taken, state.skipped_steps))
    if policy is not None:
        new = new.replace(loss_scale=policy.adjust(state.loss_scale, finite))
    return new


def train_step_fn(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    options: StepOptions | None = None,
    *,
    axis_name: str | None = None,
    per_device_rng: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted train step; `make_train_step` and the parallel builders wrap it.

    Three parts, the same for the jit, pmap and mesh steps: `gradients` (micro-batches) ->
    `reduce_gradients` (across the devices of ``axis_name`` inside ``pmap``) ->
    `apply_guarded` (optimizer update, skip, loss-scale adjust, counters).
    """
    options = options if options is not None else StepOptions()
    policy = options.loss_scale

    def step(state: TrainState, batch: Any, **extra_args: Any):
        state = with_loss_scale(state, policy)
        key = jax.random.fold_in(state.key, state.step)
        if axis_name is not None and per_device_rng:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        scale_loss = None if policy is None else lambda x: policy.scale_loss(x, state.loss_scale)
        k, params = options.accumulation_steps, state.stored_params
        parts = gradients(
            loss_fn,
            params,
            batch,
            state.model_state,
            key,
            accumulation_steps=k,
            weighted=axis_name is not None,
            scale_loss=scale_loss,
        )
        grads, model_state, metrics, w = reduce_gradients(
            *parts, params=params, axis_name=axis_name, summed=k > 1
        )
        new = apply_guarded(
            state, grads, model_state, metrics, tx=tx, options=options, extra_args=extra_args
        )
        return new, {**metrics, NUM_EXAMPLES: w}

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
    model state stay, ``skipped_steps`` and ``step`` count up. With ``loss_scale``, a state
    without a loss-scale state gets ``policy.init()`` on the first call (which then compiles
    once more, for the state that holds it).

    Args:
        loss_fn: ``loss_fn(params, batch, *, model_state, rng, train)``, see the module doc.
        tx: the optimizer; default ``state.tx`` (it must match the one that built opt_state).
        options: a `StepOptions`.
        **flags: `StepOptions` fields as keywords (``accumulation_steps``,
            ``skip_nonfinite``, ``loss_as_value``, ``pass_loss``, ``donate``,
            ``loss_scale``), overriding
            ``options``.

    Returns:
        The jitted step. Extra keyword arguments (``value=``) are forwarded to ``tx.update``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import TrainState, make_train_step
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> step = make_train_step(loss_fn)
        >>> state, metrics = step(state, {"x": jnp.ones(4), "y": jnp.full(4, 2.0)})
        >>> sorted(metrics), float(metrics["loss"]), round(float(state.params["w"]), 2)
        (['loss', 'num_examples'], 4.0, 0.4)
    """
    options = StepOptions.merge(options, flags)
    fn = train_step_fn(loss_fn, tx, options)
    return jax.jit(fn, donate_argnums=(0,) if options.donate else ())


def make_eval_step(loss_fn: LossFn) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
    """One jit-compiled eval step ``(state, batch) -> metrics`` (``train=False``, no donation).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import TrainState, make_eval_step
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.ones(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> metrics = make_eval_step(loss_fn)(state, {"x": jnp.ones(4), "y": jnp.full(4, 2.0)})
        >>> float(metrics["loss"]), float(metrics["num_examples"])
        (1.0, 4.0)
    """
    return jax.jit(eval_step_fn(loss_fn))
