"""Gradient clipping: by value, by global norm, by per-leaf RMS, and adaptive (unit-wise).

Each transform is stateless and slots anywhere into a `chain`, usually first:
``chain(clip_by_global_norm(1.0), adam(1e-3))``. Norms are accumulated in float32 (float64
for float64 leaves); updates come back in each leaf's dtype; ``None`` leaves pass through.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import EmptyState, GradientTransformation, init_empty_state
from dlopt.core.per_leaf import per_leaf

# the states of the stateless clipping transforms (optax's aliases of EmptyState)
ClipState = EmptyState
ClipByGlobalNormState = EmptyState
AdaptiveGradClipState = EmptyState


def clip(max_delta: chex.Numeric) -> GradientTransformation:
    """Clips every update element to ``[-max_delta, max_delta]``.

    .. math:: u \\leftarrow \\min(\\max(u, -c), c)

    The same as ``torch.nn.utils.clip_grad_value_(params, c)`` and ``optax.clip(c)``.

    Args:
        max_delta: the bound ``c`` >= 0.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.clip(1.0)
        >>> tx.update({"w": jnp.array([-3.0, 0.5, 2.0])}, tx.init(None))[0]["w"]
        Array([-1. ,  0.5,  1. ], dtype=float32)
    """
    validation.check_non_negative("max_delta", max_delta)

    def clip_leaf(u):
        bound = tree_lib.scalar_like(max_delta, u)
        return jnp.clip(u, -bound, bound)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(clip_leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn)


def clip_by_global_norm(max_norm: chex.Numeric) -> GradientTransformation:
    """Rescales all updates together so that their global norm is at most ``max_norm``.

    .. math::
        \\|u\\| = \\sqrt{\\textstyle\\sum_{\\text{leaves}} \\sum u^2}, \\qquad
        u \\leftarrow u \\cdot \\min\\left(1, \\frac{c}{\\|u\\|}\\right)

    The direction of the whole update is kept. Matches ``optax.clip_by_global_norm``;
    ``torch.nn.utils.clip_grad_norm_`` divides by ``||u|| + 1e-6`` instead (a relative
    difference of ``1e-6 / ||u||``). Zero updates stay zero (no ``0 / 0``), also for ``c = 0``.

    Args:
        max_norm: the largest global norm ``c`` >= 0.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.clip_by_global_norm(1.0)
        >>> tx.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, tx.init(None))[0]
        {'a': Array([0.6], dtype=float32), 'b': Array([0.8], dtype=float32)}

    References:
        Pascanu et al., 2013, "On the difficulty of training recurrent neural networks".
    """
    validation.check_non_negative("max_norm", max_norm)

    def update_fn(updates, state, params=None):
        del params
        updates = tree_lib.as_arrays(updates)
        norm = numerics.global_norm(updates)
        limit = jnp.asarray(max_norm).astype(norm.dtype)
        safe_norm = jnp.where(norm > 0, norm, jnp.ones_like(norm))
        factor = jnp.where(norm < limit, jnp.ones_like(norm), limit / safe_norm)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state

    return GradientTransformation(init_empty_state, update_fn)


@per_leaf
def clip_by_block_rms(threshold: chex.Numeric) -> GradientTransformation:
    """Rescales each leaf (block) so that its root-mean-square is at most ``threshold``.

    .. math::
        \\mathrm{rms}(u) = \\sqrt{\\operatorname{mean}(u^2)}, \\qquad
        u \\leftarrow \\frac{u}{\\max(1, \\mathrm{rms}(u) / \\tau)} \\quad \\text{per leaf}

    Matches ``optax.clip_by_block_rms``. Each weight matrix, kernel or bias vector is
    clipped on its own, so one exploding layer does not shrink the others.

    Args:
        threshold: the largest RMS ``tau`` > 0 of each leaf.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.clip_by_block_rms(1.0)
        >>> tx.update({"w": jnp.array([3.0, -3.0]), "b": jnp.array([0.5])}, tx.init(None))[0]
        {'b': Array([0.5], dtype=float32), 'w': Array([ 1., -1.], dtype=float32)}
    """
    validation.check_positive("threshold", threshold)

    def clip_leaf(u):
        if jnp.size(u) == 0:
            return u
        wide = numerics.widen(u)  # complex stays complex
        rms = jnp.sqrt(jnp.mean(numerics.abs_sq(wide)))
        denom = jnp.maximum(jnp.ones_like(rms), rms / jnp.asarray(threshold).astype(rms.dtype))
        return (wide / denom.astype(wide.dtype)).astype(u.dtype)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(clip_leaf, updates), state

    return GradientTransformation(init_empty_state, update_fn)


Axis = int | Sequence[int] | None


def unitwise_norm(x: chex.Array, axis: Axis = None) -> chex.Array:
    """The L2 norm of each unit of ``x``, broadcast back to ``x``'s shape (in float32).

    A unit is what one output neuron owns. With ``axis=None`` the reduction axes follow the
    layer layout (as in optax): scalars and vectors are one unit; rank 2 or 3 (dense
    ``(in, out)``, multi-head ``(in, heads, dim)``) reduce axis 0; rank 4 (conv
    ``(H, W, in, out)``) reduces ``(0, 1, 2)``; rank 5 (3-D conv) reduces ``(0, 1, 2, 3)``.
    Pass ``axis`` for other layouts.
    """
    x = numerics.widen(x)
    squares = numerics.abs_sq(x)
    if axis is not None:
        reduce = axis
    elif jnp.squeeze(x).ndim <= 1:
        reduce = None
    elif x.ndim in (2, 3):
        reduce = 0
    elif x.ndim in (4, 5):
        reduce = tuple(range(x.ndim - 1))
    else:
        raise ValueError(
            f"unitwise_norm needs a leaf of rank 0 to 5 or an explicit axis, got shape "
            f"{x.shape}. Pass axis= naming the fan-in axes."
        )
    norm = jnp.sqrt(jnp.sum(squares, axis=reduce, keepdims=True))
    return jnp.broadcast_to(norm, x.shape)


def _agc_leaf(u, p, clipping, eps, axis):
    g_norm = unitwise_norm(u, axis)
    p_norm = unitwise_norm(p, axis)
    max_norm = jnp.asarray(clipping).astype(p_norm.dtype) * jnp.maximum(
        p_norm, jnp.asarray(eps).astype(p_norm.dtype)
    )
    return unitwise_clip(g_norm, max_norm, u)


def unitwise_clip(
    g_norm: chex.Array, max_norm: chex.Array, grad: chex.Array, div_eps: chex.Numeric = 1e-6
) -> chex.Array:
    """``grad`` where ``g_norm < max_norm``, else ``grad * max_norm / max(g_norm, div_eps)``
    (the three arrays of one shape; `unitwise_norm` gives ``g_norm``).

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> g = jnp.array([3.0, 4.0])
        >>> dlopt.transforms.unitwise_clip(jnp.full(2, 5.0), jnp.full(2, 1.0), g)
        Array([0.6, 0.8], dtype=float32)
    """
    if not (jnp.shape(g_norm) == jnp.shape(max_norm) == jnp.shape(grad)):
        raise ValueError(
            "unitwise_clip needs g_norm, max_norm and grad of one shape, got "
            f"{jnp.shape(g_norm)}, {jnp.shape(max_norm)}, {jnp.shape(grad)}."
        )
    # The floor on the divisor only avoids 0/0; where it could engage, g_norm < max_norm.
    factor = max_norm / jnp.maximum(g_norm, jnp.asarray(div_eps, g_norm.dtype))
    wide = numerics.widen(grad)
    clipped = (wide * factor.astype(wide.dtype)).astype(grad.dtype)
    return jnp.where(g_norm < max_norm, grad, clipped)


@per_leaf
def adaptive_grad_clip(
    clipping: chex.Numeric, eps: chex.Numeric = 1e-3, axis: Axis = None
) -> GradientTransformation:
    """Adaptive gradient clipping (AGC): each unit's update norm is at most ``clipping``
    times its parameter norm.

    .. math::
        u_i \\leftarrow
        \\begin{cases}
          \\lambda \\dfrac{\\max(\\|w_i\\|, \\epsilon)}{\\|u_i\\|}\\, u_i
            & \\text{if } \\|u_i\\| \\ge \\lambda \\max(\\|w_i\\|, \\epsilon) \\\\
          u_i & \\text{otherwise}
        \\end{cases}

    where ``i`` runs over units (output neurons, see `unitwise_norm`). Matches
    ``optax.adaptive_grad_clip``. ``eps`` keeps zero-initialised parameters (biases) from
    being clipped to zero.

    Args:
        clipping: the largest ratio ``lambda`` >= 0 of update norm to parameter norm.
        eps: the floor ``epsilon`` >= 0 on the parameter norm.
        axis: the axes forming one unit's fan-in, overriding the rank-based default.

    Returns:
        A stateless `GradientTransformation`; it needs ``params`` in ``update``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adaptive_grad_clip(0.01)
        >>> params = {"w": jnp.ones((2, 3))}
        >>> u, _ = tx.update({"w": jnp.full((2, 3), 10.0)}, tx.init(params), params)
        >>> u["w"]  # each unit's gradient norm cut to 0.01 times its weight norm
        Array([[0.01, 0.01, 0.01],
               [0.01, 0.01, 0.01]], dtype=float32)

    References:
        Brock et al., 2021, "High-Performance Large-Scale Image Recognition Without
        Normalization".
    """
    validation.check_non_negative("clipping", clipping)
    validation.check_non_negative("eps", eps)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "adaptive_grad_clip needs params: call update(updates, state, params)."
            )
        updates = jax.tree.map(lambda u, p: _agc_leaf(u, p, clipping, eps, axis), updates, params)
        return updates, state

    return GradientTransformation(init_empty_state, update_fn)
