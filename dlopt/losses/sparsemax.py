"""Sparsemax losses (binary and multiclass): the Fenchel–Young losses of the Gini entropy.

Their link function is sparsemax, the Euclidean projection onto the simplex, which can put
exactly zero probability on classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sparsemax(scores: jax.typing.ArrayLike) -> jax.Array:
    r"""Sparsemax over the last axis: :math:`\arg\min_{p \in \Delta} \|p - z\|^2`.

    Sort-based: with :math:`z_{(1)} \ge z_{(2)} \ge \dots`, the support size is the largest
    :math:`k` with :math:`1 + k z_{(k)} > \sum_{j \le k} z_{(j)}`, the threshold
    :math:`\tau = (\sum_{j \le k} z_{(j)} - 1) / k`, and :math:`p = \max(z - \tau, 0)`.

    References:
      Martins and Astudillo, `From Softmax to Sparsemax
      <https://arxiv.org/abs/1602.02068>`_, 2016.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses.sparsemax import sparsemax
      >>> print(sparsemax(jnp.array([2.0, 1.5, -1.0])))
      [0.75 0.25 0.  ]
    """
    z = jnp.asarray(scores)
    z_sorted = -jnp.sort(-z, axis=-1)
    cumsum = jnp.cumsum(z_sorted, axis=-1)
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    support = jnp.sum(1 + k * z_sorted > cumsum, axis=-1, keepdims=True)
    tau = (jnp.take_along_axis(cumsum, support - 1, axis=-1) - 1) / support.astype(z.dtype)
    return jnp.maximum(z - tau, 0)


def sparsemax_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    r"""Binary sparsemax loss: :math:`\operatorname{sparseplus}(-x)` for label 1, of ``x`` for 0.

    ``sparseplus`` is 0 below -1, :math:`(x + 1)^2 / 4` on [-1, 1] and ``x`` above; the
    loss is zero exactly when ``jax.nn.sparse_sigmoid(logits) == labels``.

    References:
      Blondel, Martins and Niculae, `Learning with Fenchel-Young Losses
      <https://arxiv.org/abs/1901.02324>`_, JMLR 2020, §4.4.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import sparsemax_loss
      >>> print(sparsemax_loss(jnp.array([2.0, 0.0, -3.0]), jnp.array([1, 1, 1])))
      [0.   0.25 3.  ]
    """
    logits = jnp.asarray(logits)
    return jax.nn.sparse_plus(jnp.where(labels, -logits, logits))


def _multiclass_sparsemax_loss(scores: jax.Array, label: jax.Array) -> jax.Array:
    proba = sparsemax(scores)
    # <p, z - z_y> + (1 - <p, p>) / 2, the Gini conjugate minus the true score; the true
    # class's own term is exactly 0.
    scores = (scores - scores[label]).at[label].set(0.0)
    return jnp.dot(proba, jnp.where(proba > 0, scores, 0.0)) + 0.5 * (1.0 - jnp.dot(proba, proba))


def multiclass_sparsemax_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    r"""Multiclass sparsemax loss, one per row of ``[batch, classes]`` scores.

    .. math::
      \ell(z, y) = \langle p, z \rangle + \tfrac12 (1 - \|p\|^2) - z_y,
      \quad p = \operatorname{sparsemax}(z),

    zero once the true class takes all the sparsemax mass; its gradient is
    :math:`p - e_y`.

    References:
      Martins and Astudillo, `From Softmax to Sparsemax: A Sparse Model of Attention and
      Multi-Label Classification <https://arxiv.org/abs/1602.02068>`_, 2016.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import multiclass_sparsemax_loss
      >>> print(multiclass_sparsemax_loss(jnp.array([[2.0, 1.5, -1.0]]), jnp.array([1])))
      [0.5625]
    """
    return jax.vmap(_multiclass_sparsemax_loss)(jnp.asarray(scores), jnp.asarray(labels))
