"""Sigmoid (independent binary) losses: binary cross-entropy and the focal loss.

Both are written with ``log_sigmoid``, :math:`\\log\\sigma(x) = -\\operatorname{softplus}(-x)`,
which is finite for every finite logit; ``log(sigmoid(x))`` is ``-inf`` once
:math:`\\sigma(x)` rounds to 0 (x < -88 in float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from dlopt.core.validation import check_in_range, check_non_negative
from dlopt.losses.checks import check_floating


def sigmoid_binary_cross_entropy(logits, labels):
    r"""Elementwise sigmoid cross-entropy (binary or multi-label classification).

    .. math::
      \ell(x, y) = -y \log\sigma(x) - (1 - y) \log\sigma(-x),

    with both logs computed by ``log_sigmoid``. ``labels`` are 0/1 or target probabilities,
    broadcastable to ``logits``. Same as torch's ``binary_cross_entropy_with_logits``.

    Args:
      logits: floating logits, one per binary decision.
      labels: labels in [0, 1].

    Returns:
      the cross-entropy per element, shaped like ``logits``.

    References:
      Goodfellow et al., `Deep Learning <https://www.deeplearningbook.org>`_, 2016, §6.2.2.2.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import sigmoid_binary_cross_entropy
      >>> print(sigmoid_binary_cross_entropy(jnp.array([0.0, 200.0]), jnp.array([1.0, 0.0])))
      [  0.6931... 200. ...]
    """
    check_floating("logits", logits)
    logits = jnp.asarray(logits)
    labels = jnp.astype(labels, logits.dtype)
    return -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)


def sigmoid_focal_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    alpha: jax.typing.ArrayLike | None = None,
    gamma: jax.typing.ArrayLike = 2.0,
) -> jax.Array:
    r"""Sigmoid focal loss: cross-entropy scaled down on well-classified elements.

    .. math::
      FL = \alpha_t\, (1 - p_t)^\gamma\, \mathrm{BCE}(x, y), \qquad
      1 - p_t = y\,(1 - \sigma(x)) + (1 - y)\,\sigma(x),

    with :math:`\alpha_t = \alpha y + (1 - \alpha)(1 - y)` (no weighting when ``alpha`` is
    None). The factor is :math:`\exp(\gamma \log(1 - p_t))` with the log a weighted
    ``logsumexp`` of the two ``log_sigmoid`` terms, so it is finite for extreme logits and
    any :math:`\gamma \ge 0`. Same as torchvision's ``sigmoid_focal_loss`` (which uses
    ``alpha=0.25``).

    Args:
      logits: floating logits.
      labels: labels in [0, 1] broadcastable to ``logits`` (soft labels allowed).
      alpha: optional weight of the positive class, in [0, 1].
      gamma: focusing exponent, >= 0 (0 gives plain cross-entropy).

    Returns:
      the focal loss per element.

    References:
      Lin et al., `Focal Loss for Dense Object Detection
      <https://arxiv.org/abs/1708.02002>`_, 2017.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import sigmoid_focal_loss
      >>> print(sigmoid_focal_loss(jnp.array([3.0, -3.0]), jnp.array([1.0, 1.0])))
      [1.0928...e-04 2.7662...e+00]
    """
    check_floating("logits", logits)
    if alpha is not None:
        check_in_range("alpha", alpha, 0.0, 1.0, high_closed=True)
    check_non_negative("gamma", gamma)
    logits = jnp.asarray(logits)
    labels = jnp.astype(labels, logits.dtype)
    ce_loss = sigmoid_binary_cross_entropy(logits, labels)
    log_p, log_q = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    log_p, log_q, labels_b = jnp.broadcast_arrays(log_p, log_q, labels)
    log_one_minus_p_t = logsumexp(
        jnp.stack([log_p, log_q], axis=-1), axis=-1, b=jnp.stack([1 - labels_b, labels_b], -1)
    )
    loss = ce_loss * jnp.exp(gamma * log_one_minus_p_t)
    if alpha is None:
        return loss
    return (alpha * labels + (1.0 - alpha) * (1.0 - labels)) * loss
