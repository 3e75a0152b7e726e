"""Cautious updates: drop the components of an update that point uphill, rescale the rest."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    with_extra_args_support,
)
from dlopt.core.per_leaf import per_leaf


def _cautious_leaf(u, g, *, eps, updates_are_steps):
    f = numerics.compute_dtype(u.dtype, g.dtype)
    u_f, g_f = u.astype(f), g.astype(f)
    alignment = jnp.real(u_f * jnp.conj(g_f))  # Re(u * conj(g)): the per-component slope
    agree = alignment < 0 if updates_are_steps else alignment > 0
    mask = agree.astype(jnp.finfo(f).dtype)
    kept = jnp.mean(mask) + tree_lib.scalar_like(eps, mask)
    scale = mask / jnp.where(kept > 0, kept, jnp.ones_like(kept))  # all dropped, eps = 0: 0
    return (u_f * scale.astype(f)).astype(u.dtype)


@per_leaf
def cautious(
    tx: GradientTransformation,
    eps: chex.Numeric = 1e-8,
    *,
    updates_are_steps: bool = True,
) -> GradientTransformationExtraArgs:
    """Makes ``tx`` cautious: keeps only the update components that agree with the gradient.

    With :math:`g` the gradient reaching this transform and :math:`u` the step ``tx`` returns
    for it (added to the params), per parameter array:

    .. math::
        \\phi = \\mathbb{1}[u \\odot g < 0], \\qquad
        u \\leftarrow \\frac{u \\odot \\phi}{\\operatorname{mean}(\\phi) + \\epsilon}

    so a component is kept only where it decreases the loss to first order, and the kept
    ones are scaled up by the fraction dropped (the paper's "one line" ``u * m / (m.mean() +
    eps)``; its :math:`\\alpha = d / (\\mathrm{nnz}(\\phi) + 1)` variant differs only in how the
    division is guarded). The mean is over each parameter array (each torch tensor). Complex
    params use :math:`\\mathrm{Re}(u \\bar g)`. The inner state is returned unchanged (the
    mask acts on the output, not on ``tx``'s moments).

    The paper's C-AdamW masks the Adam direction but not the decoupled weight decay:
    ``chain(cautious(scale_by_adam(), updates_are_steps=False), add_decayed_weights(wd),
    scale_by_learning_rate(lr))``. ``cautious(adamw(lr, weight_decay=wd))`` masks the decay
    too.

    Args:
        tx: the transform whose updates are masked (dlopt's or optax's).
        eps: :math:`\\epsilon` >= 0, guards the division when every component is dropped.
        updates_are_steps: True (default) when ``tx`` returns steps to add to the params (a
            whole optimizer such as ``adamw(lr)``: agreement is :math:`u g < 0`); False when it
            returns a direction that is negated later in a chain (``scale_by_adam()``:
            agreement is :math:`u g > 0`).

    Returns:
        A `GradientTransformationExtraArgs` with ``tx``'s state; extra keyword arguments of
        ``update`` go to ``tx``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.cautious(dlopt.adamw(1e-3))
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Liang, Chen, Liu and Liu, 2024, "Cautious Optimizers: Improving Training with One Line
        of Code", arXiv:2411.16085.
    """
    validation.check_transformation("tx", tx)
    validation.check_non_negative("eps", eps)
    validation.check_flag("updates_are_steps", updates_are_steps)
    inner = with_extra_args_support(tx)

    def update_fn(updates, state, params=None, **extra_args):
        steps, state = inner.update(updates, state, params, **extra_args)
        leaf_fn = functools.partial(_cautious_leaf, eps=eps, updates_are_steps=updates_are_steps)
        return jax.tree.map(leaf_fn, steps, updates), state

    return GradientTransformationExtraArgs(inner.init, update_fn)
