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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dlopt import tree as tree_lib
from dlopt.base import GradientTransformation, apply_updates, with_extra_args_support
from dlopt.training.state import TrainState

LossFn = Callable[..., Any]
NUM_EXAMPLES = "num_examples"


def batch_weight(batch: Any) -> jax.Array:
    """The number of valid rows of ``batch``: ``sum(batch["mask"])`` or the leading size."""
    if isinstance(batch, Mapping) and "mask" in batch:
        return jnp.sum(jnp.asarray(batch["mask"]).astype(jnp.float32))
    return jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)


def _call_loss(loss_fn, params, batch, model_state, rng, train):
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


def _scaled(tree, w):
    """``x * w``, and exactly 0 where ``w == 0`` (an all-padding shard may have a NaN loss)."""
    return jax.tree.map(lambda x: jnp.where(w > 0, x * w.astype(x.dtype), jnp.zeros_like(x)), tree)


def _divided(tree, w):
    safe = jnp.where(w > 0, w, jnp.ones_like(w))
    return jax.tree.map(lambda x: x / safe.astype(x.dtype), tree)


def _float_mean(tree, reduce_mean):
    """Averages the float leaves of ``tree`` over the device axis (integer leaves untouched)."""
    return jax.tree.map(
        lambda x: reduce_mean(x) if jnp.issubdtype(x.dtype, jnp.inexact) else x, tree
    )


def gradients(
    loss_fn: LossFn,
    params: Any,
    batch: Any,
    model_state: Any,
    rng: jax.Array,
    *,
    accumulation_steps: int = 1,
) -> tuple[Any, Any, dict[str, jax.Array], jax.Array]:
    """Example-weighted mean gradients over ``accumulation_steps`` micro-batches.

    Returns ``(grads, new_model_state, metrics_sums, weight)`` where ``metrics_sums`` are the
    metrics times the valid-row count and ``weight`` the count (so sums over devices divide
    into exact means). The model state is threaded through the micro-batches in order.
    """

    def one(model_state, micro, rng):
        def objective(p):
            loss, new_ms, metrics = _call_loss(loss_fn, p, micro, model_state, rng, True)
            return loss, (new_ms, metrics)

        w = batch_weight(micro)
        (_, (new_ms, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return new_ms, _scaled(grads, w), _scaled(metrics, w), w

    if accumulation_steps == 1:
        new_ms, grads, metrics, w = one(model_state, batch, rng)
        return grads, new_ms, metrics, w

    micro = _split_micro(batch, accumulation_steps)

    def body(carry, xs):
        ms, g_sum, m_sum, w_sum = carry
        micro_batch, i = xs
        ms, g, m, w = one(ms, micro_batch, jax.random.fold_in(rng, i))
        add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731
        return (ms, add(g_sum, g), add(m_sum, m), w_sum + w), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: one(model_state, first, rng))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1:])
    (new_ms, grads, metrics, w), _ = jax.lax.scan(
        body,
        (model_state, *zeros),
        (micro, jnp.arange(accumulation_steps, dtype=jnp.uint32)),
    )
    return grads, new_ms, metrics, w


def train_step_fn(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    *,
    axis_name: str | None = None,
    per_device_rng: bool = True,
    accumulation_steps: int = 1,
    skip_nonfinite: bool = True,
    loss_as_value: bool = False,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted train step; `make_train_step` and the parallel builders wrap it.

    With ``axis_name`` (inside ``pmap``), gradients, metrics and float model state are
    example-weighted means over the devices of that axis.
    """
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be an int >= 1, got {accumulation_steps=}.")

    def total(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    def step(state: TrainState, batch: Any, **extra_args: Any):
        step_key = jax.random.fold_in(state.key, state.step)
        if axis_name is not None and per_device_rng:
            step_key = jax.random.fold_in(step_key, jax.lax.axis_index(axis_name))
        grads, model_state, metrics, w = gradients(
            loss_fn,
            state.params,
            batch,
            state.model_state,
            step_key,
            accumulation_steps=accumulation_steps,
        )
        w = total(w)
        grads = _divided(jax.tree.map(total, grads), w)
        metrics = _divided(jax.tree.map(total, metrics), w)
        if axis_name is not None:
            model_state = _float_mean(model_state, lambda x: jax.lax.pmean(x, axis_name))
        if loss_as_value:
            extra_args = {"value": metrics["loss"], **extra_args}
        update = with_extra_args_support(tx if tx is not None else state.tx).update
        updates, opt_state = update(grads, state.opt_state, state.params, **extra_args)
        new = state.replace(
            params=apply_updates(state.params, updates),
            opt_state=opt_state,
            model_state=model_state,
        )
        skipped = state.skipped_steps
        if skip_nonfinite:
            finite = jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves((grads, metrics))])
            )
            keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(finite, x, y), a, b)  # noqa: E731
            new = new.replace(
                params=keep(new.params, state.params),
                opt_state=keep(new.opt_state, state.opt_state),
                model_state=keep(new.model_state, state.model_state),
            )
            skipped = jnp.where(finite, skipped, tree_lib.safe_increment(skipped))
        new = new.replace(step=tree_lib.safe_increment(state.step), skipped_steps=skipped)
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
        _, _, metrics = _call_loss(loss_fn, state.params, batch, state.model_state, key, False)
        w = batch_weight(batch)
        w_total = total(w)
        metrics = _divided(jax.tree.map(total, _scaled(metrics, w)), w_total)
        return {**metrics, NUM_EXAMPLES: w_total}

    return step


def make_train_step(
    loss_fn: LossFn,
    tx: GradientTransformation | None = None,
    *,
    accumulation_steps: int = 1,
    skip_nonfinite: bool = True,
    loss_as_value: bool = False,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """One jit-compiled train step ``(state, batch, **extra_args) -> (state, metrics)``.

    .. math::
        g = \\frac{\\sum_i w_i \\nabla L_i}{\\sum_i w_i},\\quad
        (u, s) = tx.update(g, s, \\theta, **extra),\\quad \\theta \\leftarrow \\theta + u

    over ``accumulation_steps`` micro-batches ``i`` with ``w_i`` valid rows each (one
    optimizer update per call; BatchNorm state threads through the micro-batches). The RNG
    given to ``loss_fn`` is ``fold_in(state.rng, state.step)`` (then the micro-batch index).
    When the gradients or the loss are not finite the step is skipped: params, opt_state and
    model state stay, ``skipped_steps`` and ``step`` count up.

    Args:
        loss_fn: ``loss_fn(params, batch, *, model_state, rng, train)``, see the module doc.
        tx: the optimizer; default ``state.tx`` (it must match the one that built opt_state).
        accumulation_steps: micro-batches per update (must divide the batch size).
        skip_nonfinite: the NaN/Inf guard above.
        loss_as_value: pass the batch loss as ``value=`` to ``tx.update`` (plateau
            transforms); an explicit ``value=`` keyword to the step wins.
        donate: donate the input state's buffers (the old state is unusable after a call).

    Returns:
        The jitted step. Extra keyword arguments (``value=``) are forwarded to ``tx.update``.

    Example:
        >>> step = make_train_step(loss_fn)            # doctest: +SKIP
        >>> state, metrics = step(state, {"x": x, "y": y})  # doctest: +SKIP
    """
    fn = train_step_fn(
        loss_fn,
        tx,
        accumulation_steps=accumulation_steps,
        skip_nonfinite=skip_nonfinite,
        loss_as_value=loss_as_value,
    )
    return jax.jit(fn, donate_argnums=(0,) if donate else ())


def make_eval_step(loss_fn: LossFn) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
    """One jit-compiled eval step ``(state, batch) -> metrics`` (``train=False``, no donation).

    Example:
        >>> metrics = make_eval_step(loss_fn)(state, batch)  # doctest: +SKIP
    """
    return jax.jit(eval_step_fn(loss_fn))
