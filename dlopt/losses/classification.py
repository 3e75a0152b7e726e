"""Softmax cross-entropy: one-hot or soft labels, integer labels, the 0·log 0-safe form, PolyLoss.

All go through ``log_softmax`` / ``logsumexp`` (max-shifted), never ``log(softmax(x))``.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp

from dlopt.losses.checks import check_floating, check_integer, shape_of


def _canonical_axis(axis: int, ndim: int) -> int:
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis {axis} is out of bounds for array of dimension {ndim}; "
            f"pass an axis in [-{ndim}, {ndim})."
        )
    return axis % ndim


def _expand_where(where, logits, axis):
    """A ``where`` given per example (``[batch]``) is broadcast over the class axis."""
    if where is not None and jnp.ndim(where) != jnp.ndim(logits):
        where = jnp.expand_dims(where, axis)
    return where


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy against probability labels (one-hot or soft).

    .. math::
      \ell(x, y) = -\sum_j y_j \log \operatorname{softmax}(x)_j
                 = \operatorname{logsumexp}(x) \textstyle\sum_j y_j - \sum_j y_j x_j .

    Computed with ``log_softmax`` (max-shifted), so huge logits stay finite. Same as
    torch's ``cross_entropy(logits, probs, reduction="none")``.

    Args:
      logits: unnormalized log-probabilities ``[..., num_classes]``.
      labels: probabilities broadcastable to ``logits``.
      axis: the class axis (or axes).
      where: optional mask of the classes that count, shaped like ``logits`` or like the
        batch (then broadcast over ``axis``).

    Returns:
      the cross-entropy per example (``axis`` reduced).

    References:
      Goodfellow et al., `Deep Learning <https://www.deeplearningbook.org>`_, 2016, §6.2.2.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import softmax_cross_entropy
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> print(softmax_cross_entropy(logits, labels))
      [0.2761... 2.9517...]
    """
    check_floating("logits", logits)
    where = _expand_where(where, logits, axis)
    log_probs = jax.nn.log_softmax(logits, axis, where)
    return -(labels * log_probs).sum(axis, where=where)


def _weighted_log_softmax(x: jax.Array, weights: jax.Array) -> jax.Array:
    """``weights * log_softmax(x)`` with 0·log 0 = 0, and a gradient free of NaN there.

    Only a ``-inf`` log-probability under a zero weight is replaced (by 0), so the product is
    0 there and the derivative in the weights is ``log_softmax(x)`` wherever that is finite;
    the derivative in ``x`` is ``w - softmax(x) * sum(w)``, finite everywhere.
    """
    log_p = jax.nn.log_softmax(x, axis=-1)
    keep = jnp.logical_or(weights != 0, jnp.isfinite(log_p))
    return weights * jnp.where(keep, log_p, 0.0)


def safe_softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
) -> jax.Array:
    r"""`softmax_cross_entropy` over the last axis with :math:`0 \log 0 = 0`.

    A class with logit ``-inf`` and label 0 contributes 0 (the plain form gives NaN, from
    ``0 * -inf``), in the value and in the gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import safe_softmax_cross_entropy
      >>> logits = jnp.array([0.0, 0.0, -jnp.inf])
      >>> print(safe_softmax_cross_entropy(logits, jnp.array([1.0, 0.0, 0.0])))
      0.6931...
    """
    check_floating("logits", logits)
    logits = jnp.asarray(logits)
    labels = jnp.broadcast_to(jnp.asarray(labels, logits.dtype), logits.shape)
    return -jnp.sum(_weighted_log_softmax(logits, labels), axis=-1)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax cross-entropy with integer class labels, without a one-hot matrix.

    .. math::
      \ell(x, y) = \operatorname{logsumexp}_j(x_j) - x_y ,

    the label's logit picked with ``take_along_axis``. With a tuple ``axis`` the classes
    are the flattened slice over those axes and a label is a flat index into it. Same as
    torch's ``cross_entropy(logits, labels, reduction="none")``. Examples whose ``where``
    masks every class give 0 (and a zero gradient).

    Args:
      logits: unnormalized log-probabilities ``[batch..., num_classes]``.
      labels: integer labels ``[batch...]`` in ``[0, num_classes)``.
      axis: the class axis, or a tuple of axes.
      where: optional mask, shaped like ``logits`` or like ``labels``.

    Returns:
      the cross-entropy per example, shaped like ``labels``.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import softmax_cross_entropy_with_integer_labels
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> print(softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])))
      [0.2761... 2.9517...]
    """
    check_floating("logits", logits)
    check_integer("labels", labels)
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    where = _expand_where(where, logits, axis)
    if isinstance(axis, int):
        axis = _canonical_axis(axis, logits.ndim)
    elif isinstance(axis, tuple):
        # Class axes to the end, in order, flattened into one.
        class_axes = tuple(_canonical_axis(a, logits.ndim) for a in axis)
        batch_axes = tuple(a for a in range(logits.ndim) if a not in class_axes)
        logits = logits.transpose(batch_axes + class_axes)
        logits = logits.reshape(logits.shape[: len(batch_axes)] + (-1,))
        if where is not None:
            where = jnp.broadcast_to(where, shape_of(where)).transpose(batch_axes + class_axes)
            where = where.reshape(where.shape[: len(batch_axes)] + (-1,))
        axis = len(batch_axes)
    else:
        raise ValueError(
            "Keyword argument 'axis' must be of type 'int' or 'tuple[int, ...]' but actual "
            f"type is {type(axis)}; pass e.g. axis=-1."
        )
    label_logits = jnp.take_along_axis(logits, jnp.expand_dims(labels, axis), axis=axis)
    label_logits = label_logits.take(0, axis=axis)
    if where is None:
        return jax.nn.logsumexp(logits, axis=axis) - label_logits
    any_valid = jnp.any(where, axis)
    # A fully masked row: logsumexp would be -inf (NaN in the gradient); feed it a harmless
    # all-True mask and zero the result instead.
    safe_where = jnp.logical_or(where, ~jnp.expand_dims(any_valid, axis))
    out = jax.nn.logsumexp(logits, axis=axis, where=safe_where) - label_logits
    return jnp.where(any_valid, out, 0.0)


def poly_loss_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    epsilon: jax.typing.ArrayLike = 2.0,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Poly-1 loss: cross-entropy plus :math:`\epsilon\,(1 - p_t)`.

    .. math::
      L_{\text{Poly-1}} = -\textstyle\sum_j y_j \log p_j + \epsilon \sum_j y_j (1 - p_j),
      \quad p = \operatorname{softmax}(x),

    the first term of the Taylor expansion of cross-entropy in :math:`(1 - p_t)` reweighted.
    The paper recommends ``epsilon=2`` for ImageNet classification and ``-1`` for detection;
    any real ``epsilon`` is accepted (``epsilon > -1`` keeps the loss monotone in
    :math:`p_t`).

    Args:
      logits: unnormalized log-probabilities ``[..., num_classes]``.
      labels: floating probabilities broadcastable to ``logits``.
      epsilon: the coefficient of the first polynomial term.
      axis: the class axis (or axes).
      where: optional mask of the classes that count.

    Returns:
      the loss per example (``axis`` reduced).

    References:
      Leng et al., `PolyLoss: A Polynomial Expansion Perspective of Classification Loss
      Functions <https://arxiv.org/abs/2204.12511>`_, 2022.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import poly_loss_cross_entropy
      >>> logits = jnp.array([[1.2, -0.8, -0.5]])
      >>> print(poly_loss_cross_entropy(logits, jnp.array([[1.0, 0.0, 0.0]]), epsilon=2.0))
      [0.7587...]
    """
    check_floating("logits", logits)
    check_floating("labels", labels)
    p = jax.nn.softmax(logits, axis=axis, where=where)
    one_minus_pt = jnp.sum(labels * (1 - p), axis=axis, where=where)
    cross_entropy = softmax_cross_entropy(logits, labels, axis=axis, where=where)
    return cross_entropy + epsilon * one_minus_pt
