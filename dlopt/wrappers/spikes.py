"""`skip_step_on_spikes`: skip an update whose loss or gradient norm spikes above its history.

MaxText's ``skip_step_on_spikes`` and Levanter's ``SkipStepConfig`` (after OLMo-core's
``SkipStepOptimizer``): a step whose loss or gradient norm lies more than ``scaling_factor``
standard deviations above the mean of the last ``interval`` steps is not applied. optax has
no such wrapper. The skip is the one skip mechanism of `dlopt.wrappers.finite` (the
``lax.cond`` of `guarded_update`, the counter rule `count_nonfinite`), and a dlopt train step
counts it in ``TrainState.skipped_steps`` (`dlopt.wrappers.finite.skipped_in`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.base import with_extra_args_support as _extra_args
from dlopt.core.rolling import (
    RollingWindow,
    check_window,
    window_init,
    window_push,
    window_restart,
    window_threshold,
)
from dlopt.wrappers.finite import count_nonfinite, guarded_update


class SkipStepOnSpikesState(NamedTuple):
    """The spike wrapper's state: fixed shapes (a ring of ``interval`` rows), checkpointable."""

    history: RollingWindow  # rows (loss, grad norm) of the last applied steps
    consecutive: chex.Array  # int32: finite spikes skipped in a row
    step_skipped: chex.Array  # bool: the update that produced this state was skipped
    total_skipped: chex.Array  # int32: steps skipped over the run (saturating)
    inner_state: Any  # the wrapped transform's state, untouched by a skipped step


def skip_step_on_spikes(
    tx: GradientTransformation,
    interval: int = 128,
    scaling_factor: chex.Numeric = 6.0,
    *,
    min_history: int | None = None,
    max_consecutive_skips: int | None = 16,
) -> GradientTransformationExtraArgs:
    """Skips an update whose loss or gradient norm spikes above its recent history.

    With :math:`\\bar x, s` the mean and the (Bessel-corrected) standard deviation of the
    last ``interval`` applied steps' values of :math:`x` (the loss :math:`\\ell_t`, given as
    ``update(..., loss=...)``, and the gradient norm :math:`\\|g_t\\|`), and :math:`k` =
    ``scaling_factor``:

    .. math::
        \\text{spike}_t = \\ell_t > \\bar\\ell + k\\, s_\\ell \\ \\lor\\
        \\|g_t\\| > \\overline{\\|g\\|} + k\\, s_{\\|g\\|}, \\qquad
        u_t, S_t = \\begin{cases} 0,\\ S_{t-1} & \\text{spike}_t \\\\
        \\mathrm{tx.update}(g_t, S_{t-1}) & \\text{otherwise} \\end{cases}

    A skipped step returns zero updates and leaves the inner state bit for bit as it was
    (one ``lax.cond``: the inner update does not even run). Without ``loss=`` the gradient
    norm alone is watched (give ``loss=`` every step or never: the loss column is not
    watched while it is absent, and what it holds then is meaningless).

    How the history behaves:

    - Only applied steps enter it, so a spike does not widen the deviation it is measured
      against (MaxText and Levanter record spikes too; then one spike blinds the detector
      for ``interval`` steps). The deviation is floored at ``1e-3 |mean|``
      (`dlopt.core.rolling.window_threshold`).
    - Warm-up: until the window holds ``min_history`` values (default
      ``max(2, interval // 2)``, as MaxText, Levanter and OLMo-core) no finite step is
      skipped; every one is applied and recorded.
    - A level shift is not a spike: after ``max_consecutive_skips`` finite spikes in a row
      the next one is applied, and the window restarts from it (warm-up again), so training
      cannot stall on a new normal. ``None``: never give up.
    - A non-finite loss or gradient norm is always skipped (also in warm-up), never
      recorded, and does not count towards ``max_consecutive_skips``; inside a dlopt train
      step its NaN/Inf guard skips such a step first.

    Counts: ``total_skipped`` (every skipped step) and ``step_skipped`` (the last step) in
    the state. A dlopt train step adds this wrapper's skips to ``TrainState.skipped_steps``
    (`dlopt.wrappers.finite.skipped_in`), which `dlopt.training.fit` reports per epoch as
    ``"skipped_steps"`` in the History; pass ``pass_loss=True`` to the step to give it the
    batch loss. A skip there holds params and optimizer state; the model state (BatchNorm
    statistics) and the model averages step as on any applied step.

    Args:
        tx: the transform to protect (the whole optimizer, so that a skip holds all of it).
        interval: the window: the last ``interval`` applied steps (>= 2).
        scaling_factor: :math:`k` > 0, in standard deviations; ``inf`` skips only
            non-finite steps.
        min_history: values in the window before any step can be skipped, in
            ``[2, interval]``; default ``max(2, interval // 2)``.
        max_consecutive_skips: finite spikes skipped in a row before the next is applied and
            the window restarts (>= 0), or None.

    Returns:
        A `GradientTransformationExtraArgs` with state `SkipStepOnSpikesState`; its
        ``update`` takes an optional ``loss=`` (a scalar) and passes every extra argument on.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.skip_step_on_spikes(dlopt.sgd(0.1), interval=4)
        >>> params = {"w": jnp.zeros(2)}
        >>> state = tx.init(params)
        >>> for loss in [1.0, 1.1, 0.9, 1.0]:  # warm-up and a steady history
        ...     updates, state = tx.update({"w": jnp.ones(2)}, state, params, loss=loss)
        >>> updates, state = tx.update({"w": jnp.ones(2)}, state, params, loss=50.0)
        >>> updates["w"], bool(state.step_skipped), int(state.total_skipped)
        (Array([0., 0.], dtype=float32), True, 1)

    References:
        MaxText ``skip_step_on_spikes``; Levanter ``SkipStepConfig``; OLMo-core
        ``SkipStepOptimizer`` (Groeneveld et al., 2024, OLMo 2 report, arXiv 2501.00656).
    """
    min_history = check_window(interval, scaling_factor, min_history)
    if max_consecutive_skips is not None:
        validation.check_int("max_consecutive_skips", max_consecutive_skips, 0)
    inner = _extra_args(tx)

    def init_fn(params):
        return SkipStepOnSpikesState(
            history=window_init(interval, 2),
            consecutive=jnp.zeros([], jnp.int32),
            step_skipped=jnp.array(False),
            total_skipped=jnp.zeros([], jnp.int32),  # its own buffer: states are donated
            inner_state=inner.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        loss = extra_args.get("loss")
        norm = numerics.global_norm(tree_lib.as_arrays(updates)).astype(jnp.float32)
        watched = jnp.array([loss is not None, True])
        row = jnp.stack([jnp.zeros([], jnp.float32) if loss is None else _scalar(loss), norm])

        finite = jnp.all(jnp.isfinite(row))
        above = jnp.any(watched & (row > window_threshold(state.history, scaling_factor)))
        spike = finite & above & (state.history.count >= min_history)
        give_up = spike & (
            False if max_consecutive_skips is None else state.consecutive >= max_consecutive_skips
        )
        apply = finite & (~spike | give_up)

        new_updates, inner_state = guarded_update(
            apply, inner, updates, state.inner_state, params, extra_args
        )
        history = window_push(window_restart(state.history, give_up), row, apply)
        consecutive = jnp.where(
            spike & ~give_up, tree_lib.safe_increment(state.consecutive), state.consecutive
        )
        consecutive = jnp.where(apply, jnp.zeros_like(consecutive), consecutive)
        total = count_nonfinite(apply, state.total_skipped)
        return new_updates, SkipStepOnSpikesState(history, consecutive, ~apply, total, inner_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def _scalar(loss: Any) -> chex.Array:
    loss = jnp.asarray(loss)
    if loss.size != 1:
        raise ValueError(
            f"loss= must be a scalar (the batch mean), got an array of shape {loss.shape}."
        )
    return jnp.reshape(loss, ()).astype(jnp.float32)
