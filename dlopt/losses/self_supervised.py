"""Metric-learning losses: NT-Xent (SimCLR's contrastive loss) and the triplet margin loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlopt.core.validation import check_non_negative, check_positive
from dlopt.losses.checks import check_floating, shape_of
from dlopt.losses.regression import cosine_similarity


def ntxent(
    embeddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    temperature: jax.typing.ArrayLike = 0.07,
) -> jax.Array:
    r"""Normalized temperature-scaled cross-entropy (NT-Xent).

    With :math:`s_{ij} = \cos(z_i, z_j) / \tau`, for each positive pair :math:`(i, j)`
    (same label, :math:`i \ne j`)

    .. math::
      \ell_{ij} = -\log \frac{\exp s_{ij}}{\exp s_{ij} + \sum_{k:\, y_k \ne y_i} \exp s_{ik}},

    averaged over all positive pairs. Computed in log space with the row maximum shifted
    out (held constant in the gradient).

    Args:
      embeddings: ``[batch, features]`` floating embeddings.
      labels: ``[batch]`` group ids; equal ids are positive pairs.
      temperature: :math:`\tau > 0`.

    Returns:
      the scalar loss.

    References:
      Chen et al., `A Simple Framework for Contrastive Learning of Visual Representations
      <https://arxiv.org/abs/2002.05709>`_, 2020.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import ntxent
      >>> z = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> print(f"{ntxent(z, jnp.array([0, 0, 1, 1]), temperature=0.5):.4f}")
      0.2965
    """
    check_floating("embeddings", embeddings)
    check_positive("temperature", temperature)
    embeddings, labels = jnp.asarray(embeddings), jnp.asarray(labels)
    if shape_of(labels)[:1] != shape_of(embeddings)[:1]:
        raise ValueError(
            "Labels and embeddings must have the same leading dimension, found "
            f"{labels.shape[0]} for labels and {embeddings.shape[0]} for embeddings; "
            "pass one label per embedding."
        )
    eps = jnp.finfo(embeddings.dtype).eps
    xcs = cosine_similarity(embeddings[None, :, :], embeddings[:, None, :], epsilon=eps)
    xcs = xcs / temperature
    same = labels[:, None] == labels[None, :]
    negatives = ~same
    positives = same & ~jnp.eye(same.shape[0], dtype=bool)
    xcs_neg = jnp.where(negatives, xcs, -jnp.inf)
    xcs_pos = jnp.where(positives, xcs, -jnp.inf)
    row_max = jnp.max(jnp.concatenate((xcs_neg, xcs_pos), axis=-1), axis=1, keepdims=True)
    row_max = jax.lax.stop_gradient(row_max)
    shifted_neg, shifted_pos = xcs_neg - row_max, xcs_pos - row_max
    denominator = jnp.sum(jnp.exp(shifted_neg), axis=1, keepdims=True) + jnp.exp(shifted_pos)
    log_softmax = shifted_pos - jnp.log(denominator)
    num_pairs = positives.sum().astype(log_softmax.dtype)
    return -jnp.where(positives, log_softmax, 0.0).sum() / num_pairs


def triplet_margin_loss(
    anchors: jax.typing.ArrayLike,
    positives: jax.typing.ArrayLike,
    negatives: jax.typing.ArrayLike,
    axis: int = -1,
    norm_degree: jax.typing.ArrayLike = 2,
    margin: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-6,
) -> jax.Array:
    r"""Triplet margin loss :math:`\max(0,\ d(a, p) - d(a, n) + m)`.

    The distance is :math:`d(x, y) = (\sum_i |x_i - y_i|^q + \epsilon)^{1/q}` for
    :math:`q` = ``norm_degree`` (``eps`` keeps its gradient finite at :math:`x = y`).

    Deliberate difference from optax: the differences enter through their absolute value,
    so odd ``norm_degree`` (1, 3) gives the actual :math:`\ell_q` distance; optax raises
    signed differences to the power, which agrees for even degrees only. torch adds its
    ``eps`` to the difference instead (``pairwise_distance``); with ``eps=0`` both agree.

    Args:
      anchors: ``[batch, features]`` anchor embeddings.
      positives: ``[batch, features]`` embeddings similar to the anchors.
      negatives: ``[batch, features]`` embeddings dissimilar to the anchors.
      axis: the feature axis.
      norm_degree: :math:`q > 0`.
      margin: the margin :math:`m`.
      eps: the stabilizer inside the root, >= 0.

    Returns:
      the loss per triplet.

    References:
      Balntas et al., `Learning local feature descriptors with triplets and shallow
      convolutional neural networks <https://doi.org/10.5244/C.30.119>`_, BMVC 2016.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import triplet_margin_loss
      >>> a = jnp.array([[0.0, 0.0], [1.0, 1.0]])
      >>> p = jnp.array([[0.1, 0.1], [1.1, 1.1]])
      >>> n = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> print(triplet_margin_loss(a, p, n, margin=1.0))
      [0.1414... 0.1414...]
    """
    check_floating("anchors", anchors)
    check_floating("positives", positives)
    check_floating("negatives", negatives)
    check_positive("norm_degree", norm_degree)
    check_non_negative("eps", eps)
    anchors = jnp.asarray(anchors)

    def distance(other):
        return jnp.power(
            jnp.power(jnp.abs(anchors - other), norm_degree).sum(axis) + eps, 1 / norm_degree
        )

    return jnp.maximum(distance(positives) - distance(negatives) + margin, 0)
