"""Margin losses: binary hinge and perceptron, and their multiclass forms.

The multiclass forms pick the true class's score with ``take_along_axis``; no one-hot
matrix is built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlopt.losses.checks import check_same_shape


def hinge_loss(predictor_outputs: jax.typing.ArrayLike, targets: jax.typing.ArrayLike) -> jax.Array:
    r"""Binary hinge loss :math:`\max(0, 1 - s\,t)` for targets :math:`t \in \{-1, 1\}`.

    References:
      Cortes and Vapnik, `Support-vector networks
      <https://doi.org/10.1007/BF00994018>`_, 1995.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import hinge_loss
      >>> print(hinge_loss(jnp.array([2.0, 0.3, -1.0]), jnp.array([1.0, 1.0, 1.0])))
      [0.  0.7 2. ]
    """
    return jnp.maximum(0, 1 - jnp.asarray(predictor_outputs) * targets)


def perceptron_loss(
    predictor_outputs: jax.typing.ArrayLike, targets: jax.typing.ArrayLike
) -> jax.Array:
    r"""Binary perceptron loss :math:`\max(0, -s\,t)` for targets :math:`t \in \{-1, 1\}`.

    References:
      Rosenblatt, `The perceptron <https://doi.org/10.1037/h0042519>`_, 1958.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import perceptron_loss
      >>> print(perceptron_loss(jnp.array([2.0, -0.5]), jnp.array([1.0, 1.0])))
      [0.  0.5]
    """
    check_same_shape("predictor_outputs", predictor_outputs, "targets", targets)
    return jnp.maximum(0, -jnp.asarray(predictor_outputs) * targets)


def _true_score(scores: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(scores, labels[..., None], axis=-1)[..., 0]


def multiclass_hinge_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    r"""Multiclass hinge (Crammer–Singer) loss.

    .. math::
      \ell(s, y) = \max_j \big(s_j + [j \ne y]\big) - s_y ,

    zero once the true score beats every other by a margin of 1. torch's
    ``multi_margin_loss`` averages the margins over classes instead of taking their max
    (the two agree, up to the factor ``num_classes``, for two classes).

    References:
      Crammer and Singer, `On the Algorithmic Implementation of Multiclass Kernel-based
      Vector Machines <https://jmlr.org/papers/v2/crammer01a.html>`_, 2001.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import multiclass_hinge_loss
      >>> print(multiclass_hinge_loss(jnp.array([[3.0, 1.0, 2.5]]), jnp.array([0])))
      [0.5]
    """
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    classes = jnp.arange(scores.shape[-1]).reshape((1,) * labels.ndim + (-1,))
    is_true = classes == labels[..., None]
    return jnp.max(jnp.where(is_true, scores, scores + 1.0), axis=-1) - _true_score(scores, labels)


def multiclass_perceptron_loss(
    scores: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    r"""Multiclass perceptron loss :math:`\max_j s_j - s_y`.

    References:
      Collins, `Discriminative Training Methods for Hidden Markov Models
      <https://aclanthology.org/W02-1001/>`_, EMNLP 2002.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import multiclass_perceptron_loss
      >>> print(multiclass_perceptron_loss(jnp.array([[3.0, 1.0, 2.5]]), jnp.array([2])))
      [0.5]
    """
    scores, labels = jnp.asarray(scores), jnp.asarray(labels)
    return jnp.max(scores, axis=-1) - _true_score(scores, labels)
