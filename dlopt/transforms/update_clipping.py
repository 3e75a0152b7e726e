"""Clipping the optimizer's output: each update leaf's RMS, and the update norm by its history.

Gradient clipping (`dlopt.transforms.clipping`) bounds what goes into the optimizer; these
bound what comes out of it, after the preconditioner, where one bad step shows as an update
far larger than the steps before it. Levanter offers both (``update_rms_clipping``,
``clip_update_norm``); optax has neither (its ``clip_by_block_rms`` is the plain per-leaf rule
of `clip_by_update_rms` without stacked layers). Place them after the optimizer's scaling and
before the learning rate: ``chain(scale_by_adam(), clip_by_update_rms(1.0),
scale_by_learning_rate(lr))``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, init_empty_state
from dlopt.core.per_leaf import per_leaf
from dlopt.core.rolling import (
    RollingWindow,
    check_window,
    window_init,
    window_push,
    window_threshold,
)


def _clip_rms(u: chex.Array, threshold: chex.Numeric, stacked: int) -> chex.Array:
    """``u / max(1, rms / threshold)``, the RMS over all but the first ``stacked`` axes."""
    if jnp.size(u) == 0:
        return u
    if not 0 <= stacked <= jnp.ndim(u):
        raise ValueError(
            f"stacked_axes={stacked} does not fit a leaf of shape {jnp.shape(u)}; give each "
            "leaf at most its number of dimensions."
        )
    wide = numerics.widen(u)
    axes = tuple(range(stacked, wide.ndim))
    rms = jnp.sqrt(jnp.mean(numerics.abs_sq(wide), axis=axes, keepdims=True))
    denom = jnp.maximum(jnp.ones_like(rms), rms / jnp.asarray(threshold).astype(rms.dtype))
    return (wide / denom.astype(wide.dtype)).astype(u.dtype)


@per_leaf
def clip_by_update_rms(
    threshold: chex.Numeric,
    *,
    stacked_axes: int | Any = 0,
) -> GradientTransformation:
    """Rescales each update leaf (or each layer of a stacked leaf) to an RMS of at most
    ``threshold``.

    .. math::
        \\mathrm{rms}(u) = \\sqrt{\\operatorname{mean}(u^2)}, \\qquad
        u \\leftarrow \\frac{u}{\\max(1, \\mathrm{rms}(u) / \\tau)}

    Levanter's ``update_rms_clipping`` (after Adafactor's update clipping and StableAdamW),
    meant for the preconditioned update :math:`m / \\sqrt{v}`, whose RMS is about 1 in a
    healthy step: ``threshold = 1.0`` is the usual value. Scan-aware as Levanter's: the first
    ``stacked_axes`` axes of a leaf index layers stacked into one array (``nn.scan``, MoE
    experts) and each layer is clipped on its own. With ``stacked_axes=0`` this is
    `dlopt.clip_by_block_rms` (optax's). The mean of squares is taken in float32 (float64
    for float64 leaves); updates come back in each leaf's dtype.

    Args:
        threshold: the largest RMS ``tau`` > 0.
        stacked_axes: leading axes that index stacked layers: an int for every leaf, a tree
            of ints (a prefix of the updates tree), or a function ``updates -> such a tree``.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.clip_by_update_rms(1.0, stacked_axes=1)  # two stacked layers
        >>> u = {"w": jnp.array([[3.0, -3.0], [0.5, 0.5]])}
        >>> tx.update(u, tx.init(u))[0]["w"]
        Array([[ 1. , -1. ],
               [ 0.5,  0.5]], dtype=float32)

    References:
        Levanter ``AdamConfig.update_rms_clipping``; Wortsman et al., 2023, "Stable and
        low-precision training for large-scale vision-language models" (StableAdamW);
        Shazeer & Stern, 2018, "Adafactor".
    """
    validation.check_positive("threshold", threshold)
    if not callable(stacked_axes):
        if stacked_axes is None:
            raise TypeError("stacked_axes must be an int >= 0, a tree of them or a function.")
        for k in jax.tree.leaves(stacked_axes):
            validation.check_int("stacked_axes", k, 0)

    def update_fn(updates, state, params=None):
        del params
        stacked = stacked_axes(updates) if callable(stacked_axes) else stacked_axes
        if isinstance(stacked, int):
            return jax.tree.map(lambda u: _clip_rms(u, threshold, stacked), updates), state
        clipped = jax.tree.map(
            lambda k, sub: jax.tree.map(lambda u: _clip_rms(u, threshold, int(k)), sub),
            stacked,
            updates,
        )
        return clipped, state

    return GradientTransformation(init_empty_state, update_fn)


class ClipByNormHistoryState(NamedTuple):
    """The last ``interval`` update norms (before clipping), a fixed-size ring."""

    norms: RollingWindow


def clip_by_norm_history(
    interval: int = 128,
    scaling_factor: chex.Numeric = 3.0,
    *,
    min_history: int | None = None,
) -> GradientTransformation:
    """Clips the global update norm to ``scaling_factor`` deviations above its recent mean.

    With :math:`\\bar n, s` the mean and (Bessel-corrected) standard deviation of the last
    ``interval`` update norms :math:`n_i = \\|u_i\\|` and :math:`k` = ``scaling_factor``:

    .. math::
        c_t = \\bar n + k\\, s, \\qquad
        u_t \\leftarrow u_t \\cdot \\min\\left(1, \\frac{c_t}{\\|u_t\\|}\\right)

    Levanter's ``clip_update_norm`` ("a less extreme version of skipping bad steps"): a
    spike is shrunk to the size of a typical step instead of dropped. As there, the window
    records the norm *before* clipping (recording the clipped norm lets the bound ratchet
    down), and nothing is clipped until it holds ``min_history`` norms (default
    ``max(2, interval // 2)``). The deviation is floored at ``1e-3`` times the mean
    (`dlopt.core.rolling.window_threshold`). A non-finite norm passes through unclipped and
    unrecorded (the NaN guard's business, `dlopt.apply_if_finite`).

    Args:
        interval: the window: the last ``interval`` steps (>= 2).
        scaling_factor: :math:`k` > 0 in standard deviations (Levanter's default 3;
            Marin's 32B run used 2); ``inf`` never clips.
        min_history: norms in the window before clipping starts, in ``[2, interval]``.

    Returns:
        A `GradientTransformation` with state `ClipByNormHistoryState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.clip_by_norm_history(interval=4)
        >>> state = tx.init(None)
        >>> for scale in [1.0, 1.2, 0.8, 1.0]:  # the history: norms 5, 6, 4, 5
        ...     _, state = tx.update({"w": scale * jnp.array([3.0, 4.0])}, state)
        >>> out, state = tx.update({"w": jnp.array([30.0, 40.0])}, state)  # norm 50
        >>> round(float(jnp.linalg.norm(out["w"])), 3)  # 5 + 3 * 0.816
        7.449

    References:
        Levanter ``ClipUpdateNormConfig`` / ``clip_update_by_historical_norm``.
    """
    min_history = check_window(interval, scaling_factor, min_history)

    def init_fn(params):
        del params
        return ClipByNormHistoryState(window_init(interval))

    def update_fn(updates, state, params=None):
        del params
        updates = tree_lib.as_arrays(updates)
        norm = numerics.global_norm(updates)
        limit = window_threshold(state.norms, scaling_factor)[0].astype(norm.dtype)
        clip = (state.norms.count >= min_history) & (norm > limit)
        safe_norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
        factor = jnp.where(clip, limit / safe_norm, jnp.ones_like(norm))
        clipped = jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)
        norms = window_push(state.norms, norm, jnp.isfinite(norm))
        return clipped, ClipByNormHistoryState(norms)

    return GradientTransformation(init_fn, update_fn)
