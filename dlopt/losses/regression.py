"""Regression losses: squared error, L2, Huber, log-cosh, cosine similarity and distance.

Each returns the elementwise (or per-vector) loss; reduce it yourself (``.mean()``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlopt.core.validation import check_non_negative
from dlopt.losses.checks import check_floating, check_same_shape


def _errors(predictions: jax.typing.ArrayLike, targets: jax.typing.ArrayLike | None) -> jax.Array:
    predictions = jnp.asarray(predictions)
    return predictions if targets is None else predictions - targets


def squared_error(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Elementwise squared error :math:`(p - t)^2` (``targets=None`` means zeros).

    Mean squared error is ``squared_error(p, t).mean()``. ``targets`` must have the shape
    of ``predictions`` (no silent broadcasting).

    Args:
      predictions: floating array of any shape.
      targets: array of the same shape, or None for zeros.

    Returns:
      the squared differences, shaped like ``predictions``.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import squared_error
      >>> print(squared_error(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))
      [1. 4.]
    """
    check_floating("predictions", predictions)
    if targets is not None:
        check_same_shape("predictions", predictions, "targets", targets)
    return _errors(predictions, targets) ** 2


def l2_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Elementwise L2 loss :math:`\tfrac12 (p - t)^2`, half of `squared_error`.

    The 1/2 is Bishop's convention (Pattern Recognition and Machine Learning), so the
    gradient is the plain residual :math:`p - t`.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import l2_loss
      >>> print(l2_loss(jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0])))
      [0.5 2. ]
    """
    return 0.5 * squared_error(predictions, targets)


def huber_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike | None = None,
    *,
    delta: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    r"""Huber loss: quadratic near zero, linear beyond ``delta``.

    With :math:`e = |p - t|`,

    .. math::
      \ell(e) = \tfrac12 \min(e, \delta)^2 + \delta\,(e - \min(e, \delta)),

    i.e. :math:`\tfrac12 e^2` for :math:`e \le \delta` and
    :math:`\delta (e - \tfrac12\delta)` above. Its gradient is the L2 gradient clipped to
    :math:`[-\delta, \delta]`. Equals torch's ``huber_loss(..., delta=delta)`` elementwise,
    and ``delta * smooth_l1_loss(..., beta=delta)``.

    Args:
      predictions: floating array of any shape.
      targets: array broadcastable to ``predictions``, or None for zeros.
      delta: the threshold, >= 0.

    Returns:
      the elementwise Huber loss.

    References:
      Huber, `Robust Estimation of a Location Parameter
      <https://doi.org/10.1214/aoms/1177703732>`_, 1964.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import huber_loss
      >>> print(huber_loss(jnp.array([0.5, 3.0]), delta=1.0))
      [0.125 2.5  ]
    """
    check_floating("predictions", predictions)
    check_non_negative("delta", delta)
    abs_errors = jnp.abs(_errors(predictions, targets))
    quadratic = jnp.minimum(abs_errors, delta)
    # abs - min(abs, delta) == max(abs - delta, 0) without a doubled gradient at the kink.
    return 0.5 * quadratic**2 + delta * (abs_errors - quadratic)


def log_cosh(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Elementwise log-cosh loss :math:`\log\cosh(p - t)`.

    About :math:`e^2/2` for small errors and :math:`|e| - \log 2` for large ones: a twice
    differentiable Huber. Computed as :math:`\operatorname{logaddexp}(e, -e) - \log 2`,
    which never overflows (``cosh`` does at :math:`|e| > 89` in float32).

    References:
      Chen et al., `Log Hyperbolic Cosine Loss Improves Variational Auto-Encoder
      <https://openreview.net/pdf?id=rkglvsC9Ym>`_, 2019.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import log_cosh
      >>> print(log_cosh(jnp.array([0.0, 1000.0])))
      [  0.     999.3068]
    """
    check_floating("predictions", predictions)
    errors = _errors(predictions, targets)
    return jnp.logaddexp(errors, -errors) - jnp.log(2.0).astype(errors.dtype)


def cosine_similarity(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 0.0,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Cosine similarity along ``axis``: :math:`\langle a, b\rangle / (\|a\| \|b\|)`.

    Each squared norm is clipped from below at ``epsilon`` before the square root, so
    ``epsilon > 0`` makes zero vectors give 0 instead of NaN. ``where`` selects the elements
    that enter the dot products and norms.

    Args:
      predictions: floating array ``[..., dim]``.
      targets: floating array ``[..., dim]``.
      epsilon: lower bound on each squared norm, >= 0.
      axis: axis or axes reduced over.
      where: optional boolean mask of the elements to include.

    Returns:
      the similarities, with ``axis`` reduced.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import cosine_similarity
      >>> print(cosine_similarity(jnp.array([[1.0, 0.0], [1.0, 1.0]]), jnp.array([[1.0, 1.0]])))
      [0.7071... 0.9999...]
    """
    check_floating("predictions", predictions)
    check_floating("targets", targets)
    check_non_negative("epsilon", epsilon)
    a, b = jnp.asarray(predictions), jnp.asarray(targets)
    a_norm = jnp.sqrt(jnp.square(a).sum(axis=axis, where=where, keepdims=True).clip(epsilon))
    b_norm = jnp.sqrt(jnp.square(b).sum(axis=axis, where=where, keepdims=True).clip(epsilon))
    return ((a / a_norm) * (b / b_norm)).sum(axis=axis, where=where)


def cosine_distance(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 0.0,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Cosine distance :math:`1 - \cos\theta`; see `cosine_similarity` for the arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import cosine_distance
      >>> print(cosine_distance(jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])))
      1.0
    """
    similarity = cosine_similarity(predictions, targets, epsilon=epsilon, axis=axis, where=where)
    return 1.0 - similarity
