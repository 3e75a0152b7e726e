"""Rprop: per-parameter step sizes adapted by the agreement of successive gradient signs."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.combine import chain
from dlopt.transforms.scaling import scale


def _rprop_leaf(g, step, prev, out_dtype, *, eta_minus, eta_plus, min_step, max_step):
    f = numerics.compute_dtype(g.dtype, step.dtype, prev.dtype)
    g = g.astype(f)
    agreement = jnp.sign(g) * jnp.sign(prev.astype(f))  # sign(g_t g_{t-1}), overflow-free
    factor = jnp.where(
        agreement > 0,
        tree_lib.scalar_like(eta_plus, g),
        jnp.where(agreement < 0, tree_lib.scalar_like(eta_minus, g), jnp.ones_like(g)),
    )
    low, high = tree_lib.scalar_like(min_step, g), tree_lib.scalar_like(max_step, g)
    new_step = jnp.clip(step.astype(f) * factor, low, high).astype(step.dtype)
    direction = jnp.where(agreement < 0, jnp.zeros_like(g), jnp.sign(g))  # no step on a flip
    update = direction * new_step.astype(f)
    return update.astype(out_dtype), new_step, update.astype(prev.dtype)


class ScaleByRpropState(NamedTuple):
    step_sizes: chex.ArrayTree  # the per-parameter step sizes
    prev_updates: chex.ArrayTree  # the previous update, sign(g) * step (0 after a sign flip)


def _check(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size) -> None:
    validation.check_non_negative("learning_rate", learning_rate)
    validation.check_in_range("eta_minus", eta_minus, 0.0, 1.0, high_closed=True)
    validation.check_in_range("eta_plus", eta_plus, 1.0, math.inf)
    validation.check_non_negative("min_step_size", min_step_size)
    validation.check_positive("max_step_size", max_step_size)
    concrete = not any(isinstance(v, jax.core.Tracer) for v in (min_step_size, max_step_size))
    if concrete and float(max_step_size) < float(min_step_size):
        raise ValueError(
            f"max_step_size must be >= min_step_size, got max_step_size={max_step_size!r} and "
            f"min_step_size={min_step_size!r}."
        )


def scale_by_rprop(
    learning_rate: chex.Numeric,
    eta_minus: chex.Numeric = 0.5,
    eta_plus: chex.Numeric = 1.2,
    min_step_size: chex.Numeric = 1e-6,
    max_step_size: chex.Numeric = 50.0,
) -> GradientTransformation:
    """Scales by Rprop's step (torch.optim.Rprop's rule): ``sign(g)`` times a per-parameter
    step size that grows while the gradient keeps its sign and shrinks when it flips.

    .. math::
        s_t = \\operatorname{sign}(g_t g_{t-1}), \\quad
        \\Delta_t = \\operatorname{clip}\\left(\\Delta_{t-1} \\cdot
        \\begin{cases} \\eta^+ & s_t > 0 \\\\ \\eta^- & s_t < 0 \\\\ 1 & s_t = 0
        \\end{cases},\\ \\Delta_{\\min}, \\Delta_{\\max}\\right), \\quad
        u_t = \\begin{cases} 0 & s_t < 0 \\\\ \\operatorname{sign}(g_t)\\, \\Delta_t &
        \\text{otherwise} \\end{cases}

    with :math:`\\Delta_0` = ``learning_rate`` and, after a sign flip, :math:`g_t` counted
    as 0 at the next step (Rprop without backtracking, "Rprop-"/iRprop-). The first step is
    :math:`\\operatorname{sign}(g_1) \\operatorname{clip}(\\Delta_0)`.

    Deliberate difference from optax: optax's ``scale_by_rprop`` returns at each step the
    step computed from the previous gradient (so its first update is zero and it lags one
    step behind), and leaves an unchanged step size unclipped; dlopt follows
    torch.optim.Rprop exactly (its updates are -1 times this transform's).

    Args:
        learning_rate: :math:`\\Delta_0` >= 0, the initial step size (a number: Rprop adapts
            its own step sizes, so there is no schedule).
        eta_minus: :math:`\\eta^-` in [0, 1], the factor on a sign flip.
        eta_plus: :math:`\\eta^+` >= 1, the factor while the sign holds.
        min_step_size: :math:`\\Delta_{\\min}` >= 0.
        max_step_size: :math:`\\Delta_{\\max}` > 0, at least ``min_step_size``.

    Returns:
        A `GradientTransformation` with state `ScaleByRpropState` (optax's field names).

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_rprop(1e-2), dlopt.scale(-1.0))
    """
    _check(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)

    def init_fn(params):
        tree_lib.check_float_params(params)
        return ScaleByRpropState(
            step_sizes=jax.tree.map(
                lambda p: jnp.full_like(p, learning_rate, dtype=tree_lib.dtype_of(p)), params
            ),
            prev_updates=tree_lib.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        updates, step_sizes, prev_updates = tree_lib.map_unzip(
            functools.partial(
                _rprop_leaf, eta_minus=eta_minus, eta_plus=eta_plus, min_step=min_step_size,
                max_step=max_step_size,
            ),
            updates,
            state.step_sizes,
            state.prev_updates,
            numerics.out_dtypes(updates, params, state.step_sizes),
        )  # fmt: skip
        return updates, ScaleByRpropState(step_sizes=step_sizes, prev_updates=prev_updates)

    return GradientTransformation(init_fn, update_fn)


def rprop(
    learning_rate: chex.Numeric,
    eta_minus: chex.Numeric = 0.5,
    eta_plus: chex.Numeric = 1.2,
    min_step_size: chex.Numeric = 1e-6,
    max_step_size: chex.Numeric = 50.0,
) -> GradientTransformationExtraArgs:
    """Rprop (resilient backpropagation), as torch.optim.Rprop: each parameter moves by its
    own step size in the direction of ``-sign(g)``; the step grows by ``eta_plus`` while the
    gradient keeps its sign and shrinks by ``eta_minus`` (with no move) when it flips.

    .. math::
        w \\leftarrow w - \\operatorname{sign}(g_t)\\, \\Delta_t \\ (\\text{no move if }
        g_t g_{t-1} < 0)

    with :math:`\\Delta_t` as in `scale_by_rprop`. Meant for full-batch gradients: with
    minibatch noise the signs flip at random. Deliberate difference from optax: torch's
    semantics, so the first step moves by ``learning_rate`` (optax's first step is zero and
    each later one uses the previous gradient; see `scale_by_rprop`).

    Args:
        learning_rate, eta_minus, eta_plus, min_step_size, max_step_size: as in
            `scale_by_rprop` (torch's ``lr``, ``etas`` and ``step_sizes``).

    Returns:
        ``chain(scale_by_rprop(...), scale(-1.0))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.rprop(1e-2)
        >>> params = {"w": jnp.array([1.0, -1.0])}
        >>> updates, _ = tx.update({"w": jnp.array([0.3, -2.0])}, tx.init(params), params)
        >>> updates["w"]
        Array([-0.01,  0.01], dtype=float32)

    References:
        Riedmiller and Braun, 1993, "A Direct Adaptive Method for Faster Backpropagation
        Learning: The RPROP Algorithm", IEEE ICNN; Igel and Hüsken, 2003, "Empirical
        Evaluation of the Improved Rprop Learning Algorithms", Neurocomputing.
    """
    return chain(
        scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size, max_step_size),
        scale(-1.0),
    )
