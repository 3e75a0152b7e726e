"""Label smoothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlopt.core.validation import check_in_range
from dlopt.losses.checks import check_floating


def smooth_labels(
    labels: jax.typing.ArrayLike,
    alpha: jax.typing.ArrayLike,
    *,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Label smoothing: :math:`(1 - \alpha)\, y + \alpha / K` over ``K`` classes.

    ``K`` is the size of ``axis``, or the number of ``where``-selected classes. Smoothed
    one-hot targets with `softmax_cross_entropy` equal torch's
    ``cross_entropy(..., label_smoothing=alpha)``.

    Args:
      labels: floating one-hot (or probability) labels.
      alpha: the smoothing factor, in [0, 1].
      axis: the class axis (or axes).
      where: optional mask of the classes that count.

    Returns:
      the smoothed labels, shaped like ``labels``.

    References:
      Szegedy et al., `Rethinking the Inception Architecture for Computer Vision
      <https://arxiv.org/abs/1512.00567>`_, 2016; Müller et al., `When does label smoothing
      help? <https://arxiv.org/abs/1906.02629>`_, 2019.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import smooth_labels
      >>> print(smooth_labels(jnp.array([0.0, 1.0, 0.0, 0.0]), 0.2))
      [0.05 0.85 0.05 0.05]
    """
    check_floating("labels", labels)
    check_in_range("alpha", alpha, 0.0, 1.0, high_closed=True)
    if where is None:
        num_categories = jnp.size(labels, axis)
    else:
        num_categories = jnp.sum(where, axis, keepdims=True)
    return (1.0 - alpha) * labels + alpha / num_categories
