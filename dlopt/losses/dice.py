"""Segmentation losses: soft Dice / Tversky, its binary form, and the generalized Dice loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlopt.core.validation import check_choice, check_non_negative
from dlopt.losses.checks import check_rank, check_same_shape, concrete

_REDUCTIONS = ("mean", "sum", "none")


def dice_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    class_weights: jax.typing.ArrayLike | None = None,
    smooth: jax.typing.ArrayLike = 1.0,
    alpha: jax.typing.ArrayLike = 0.5,
    beta: jax.typing.ArrayLike = 0.5,
    apply_softmax: bool = True,
    reduction: str = "mean",
    ignore_background: bool = False,
    axis: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Soft Dice (Tversky) loss per class, reduced over classes.

    With probabilities :math:`p` and targets :math:`t` summed over ``axis`` (by default every
    axis but the first and the last),

    .. math::
      I_c = \sum_i p_{ic} t_{ic}, \quad
      \ell_c = 1 - \frac{I_c + s}{I_c + \alpha (P_c - I_c) + \beta (T_c - I_c) + s},

    where :math:`P_c = \sum_i p_{ic}`, :math:`T_c = \sum_i t_{ic}` and :math:`s` is
    ``smooth``. :math:`\alpha = \beta = 1/2` is the Dice loss; other values weigh false
    positives (:math:`\alpha`) against false negatives (:math:`\beta`): the Tversky loss.
    Logits go through a softmax over the last axis (a sigmoid when it has size 1) unless
    ``apply_softmax=False``, in which case ``predictions`` must already be probabilities
    (checked when the values are concrete).

    Args:
      predictions: logits ``[batch, ..., classes]`` (or ``[batch, ...]`` for binary).
      targets: one-hot targets of the same shape (or without the class axis for binary).
      class_weights: optional ``[classes]`` weights of the per-class losses.
      smooth: additive smoothing, >= 0.
      alpha: weight of false positives, >= 0.
      beta: weight of false negatives, >= 0.
      apply_softmax: turn logits into probabilities first.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` over classes.
      ignore_background: drop class 0 before the reduction.
      axis: the axes summed over; None for every axis but the first and the last.

    Returns:
      ``[batch]`` losses, or ``[batch, classes]`` with ``reduction="none"``.

    References:
      Milletari et al., `V-Net: Fully Convolutional Neural Networks for Volumetric Medical
      Image Segmentation <https://arxiv.org/abs/1606.04797>`_, 2016; Salehi et al.,
      `Tversky loss function for image segmentation
      <https://arxiv.org/abs/1706.05721>`_, 2017.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import dice_loss
      >>> probs = jnp.array([[[0.9, 0.1], [0.2, 0.8]]])
      >>> targets = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
      >>> print(dice_loss(probs, targets, apply_softmax=False, smooth=0.0))
      [0.1503...]
    """
    check_non_negative("smooth", smooth)
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)
    check_choice("reduction", reduction, _REDUCTIONS)
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if predictions.ndim == targets.ndim - 1:
        predictions = predictions[..., None]
    if targets.ndim == predictions.ndim - 1:
        targets = targets[..., None]
    check_same_shape("predictions", predictions, "targets", targets)
    if class_weights is not None:
        check_rank("class_weights", class_weights, 1)

    if apply_softmax:
        if predictions.shape[-1] == 1:
            probs = jax.nn.sigmoid(predictions)
        else:
            probs = jax.nn.softmax(predictions, axis=-1)
    else:
        if concrete(predictions):
            sums = jnp.sum(predictions, axis=-1)
            if not jnp.allclose(sums, 1.0, rtol=1e-5):
                raise ValueError(
                    "When apply_softmax=False, predictions must be valid probability "
                    "distributions that sum to 1 along the class axis. Found sum range: "
                    f"[{jnp.min(sums):.6f}, {jnp.max(sums):.6f}]; pass logits with "
                    "apply_softmax=True instead."
                )
        probs = predictions

    if axis is None:
        axis = tuple(range(1, probs.ndim - 1))
    intersection = jnp.sum(probs * targets, axis=axis)
    pred_sum = jnp.sum(probs, axis=axis)
    target_sum = jnp.sum(targets, axis=axis)
    denominator = (
        intersection
        + alpha * (pred_sum - intersection)
        + beta * (target_sum - intersection)
        + smooth
    )
    loss = 1.0 - (intersection + smooth) / denominator
    if class_weights is not None:
        loss = loss * jnp.broadcast_to(class_weights, loss.shape)
    if ignore_background and probs.shape[-1] > 1:
        loss = loss[..., 1:]
    if reduction == "mean":
        return jnp.mean(loss, axis=-1)
    if reduction == "sum":
        return jnp.sum(loss, axis=-1)
    return loss


def multiclass_generalized_dice_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    smooth: jax.typing.ArrayLike = 1.0,
    apply_softmax: bool = True,
    ignore_background: bool = False,
) -> jax.Array:
    r"""Generalized Dice loss: `dice_loss` with class weights from the class frequencies.

    The weight of class :math:`c` is :math:`w_c \propto 1 / (T_c^2 + 10^{-7})`, with
    :math:`T_c` its target count over the whole batch, normalized to sum to the number of
    classes; the result is the mean of the weighted per-class losses (a scalar). Rare
    classes weigh as much as frequent ones.

    References:
      Sudre et al., `Generalised Dice overlap as a deep learning loss function for highly
      unbalanced segmentations <https://arxiv.org/abs/1707.03237>`_, 2017.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import multiclass_generalized_dice_loss
      >>> probs = jnp.array([[[0.9, 0.1], [0.2, 0.8]]])
      >>> targets = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])
      >>> print(multiclass_generalized_dice_loss(probs, targets, apply_softmax=False))
      0.0750...
    """
    check_same_shape("predictions", predictions, "targets", targets)
    targets = jnp.asarray(targets)
    class_frequencies = jnp.sum(targets, axis=tuple(range(targets.ndim - 1)))
    class_weights = 1.0 / (class_frequencies**2 + 1e-7)
    class_weights = class_weights / jnp.sum(class_weights) * len(class_weights)
    losses = dice_loss(
        predictions,
        targets,
        class_weights=class_weights,
        smooth=smooth,
        apply_softmax=apply_softmax,
        reduction="none",
        ignore_background=ignore_background,
    )
    return jnp.mean(losses)


def binary_dice_loss(
    predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    *,
    smooth: jax.typing.ArrayLike = 1.0,
    apply_sigmoid: bool = True,
) -> jax.Array:
    """Binary `dice_loss`: logits ``[batch, ...]`` (or ``[batch, ..., 1]``) through a sigmoid.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import binary_dice_loss
      >>> logits = jnp.array([[4.0, -4.0, 4.0]])
      >>> print(binary_dice_loss(logits, jnp.array([[1.0, 0.0, 1.0]])))
      [0.0...]
    """
    predictions, targets = jnp.asarray(predictions), jnp.asarray(targets)
    if predictions.ndim == targets.ndim and predictions.shape[-1] != 1:
        predictions, targets = predictions[..., None], targets[..., None]
    return dice_loss(
        predictions, targets, smooth=smooth, apply_softmax=apply_sigmoid, reduction="mean"
    )
