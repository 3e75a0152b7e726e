"""Fenchel–Young losses built from a max (regularized prediction) function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp


def make_fenchel_young_loss(max_fun: Callable[..., Any]):
    r"""The Fenchel–Young loss of ``max_fun``.

    .. math::
      \ell(\theta, y) = \Omega^*(\theta) - \langle y, \theta \rangle .

    ``max_fun`` is :math:`\Omega^*`, a convex "max" over the last axis (``logsumexp`` gives
    the softmax cross-entropy up to the target's entropy; a sparsemax value gives the
    sparsemax loss); leading axes are batch axes. The returned
    ``loss(scores, targets, *args, **kwargs)`` forwards extra arguments to ``max_fun``.

    Args:
      max_fun: ``(scores[n], *args, **kwargs) -> scalar``.

    Returns:
      the loss function ``(scores, targets, *args, **kwargs) -> [...]``.

    References:
      Blondel, Martins and Niculae, `Learning with Fenchel-Young Losses
      <https://arxiv.org/abs/1901.02324>`_, JMLR 2020.

    Example:
      >>> import jax.numpy as jnp
      >>> from jax.scipy.special import logsumexp
      >>> from dlopt.losses import make_fenchel_young_loss
      >>> fy_loss = make_fenchel_young_loss(max_fun=logsumexp)
      >>> print(fy_loss(jnp.array([[1.2, -0.8, -0.5]]), jnp.array([[1.0, 0.0, 0.0]])))
      [0.2761...]
    """
    vdot_last_dim = jnp.vectorize(jnp.vdot, signature="(n),(n)->()")
    max_fun_last_dim = jnp.vectorize(max_fun, signature="(n)->()")

    def fenchel_young_loss(scores, targets, *args, **kwargs):
        return max_fun_last_dim(scores, *args, **kwargs) - vdot_last_dim(targets, scores)

    return fenchel_young_loss
