"""Classification metrics as jit-able JAX functions, in scikit-learn's argument order.

Everything derives from one confusion matrix ``C`` (rows: true class, columns: predicted
class), so the batch functions and the streaming `ConfusionMatrix` accumulator agree exactly.
Per class ``c``: ``tp = C[c, c]``, ``predicted = sum_i C[i, c]``, ``support = sum_j C[c, j]``.

Zero division follows scikit-learn's ``zero_division=0`` (its default, minus the warning): a
precision with no predicted samples, a recall with no true samples, or an F1 with
``2 tp + fp + fn = 0`` is ``zero_division`` (0.0, 1.0 or nan; nan entries are left out of the
averages, as in scikit-learn).

Labels are integers in ``[0, num_classes)``; out-of-range labels (e.g. ``-1`` padding) count
nowhere. ``num_classes``, ``average``, ``pos_label`` and ``zero_division`` are Python values:
static under `jax.jit` (close over them or pass them as ``static_argnames``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import validation

AVERAGES = ("binary", "macro", "micro", "weighted", None)


def labels_from_logits(logits: chex.Array) -> chex.Array:
    """Predicted labels from logits: argmax over the last axis, or ``logit > 0`` for one column.

    A ``(n, 1)`` or ``(n,)`` input is a binary (sigmoid) output: label 1 where the logit is
    positive (probability above 0.5). A ``(n, num_classes)`` input gives its argmax.

    Args:
        logits: ``(..., num_classes)``, ``(..., 1)`` or ``(n,)`` scores.

    Returns:
        int32 labels, the trailing class axis removed.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import labels_from_logits
        >>> labels_from_logits(jnp.array([[0.1, 2.0], [3.0, -1.0]]))
        Array([1, 0], dtype=int32)
    """
    logits = jnp.asarray(logits)
    if logits.ndim <= 1 or logits.shape[-1] == 1:
        return threshold_labels(logits, threshold=0.0)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def labels_from_probabilities(probabilities: chex.Array, *, threshold: float = 0.5) -> chex.Array:
    """Predicted labels from probabilities: argmax, or ``p > threshold`` for one column.

    Args:
        probabilities: ``(..., num_classes)`` softmax outputs, or ``(..., 1)`` / ``(n,)``
            sigmoid outputs.
        threshold: the decision threshold of a one-column (binary) output.

    Returns:
        int32 labels, the trailing class axis removed.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import labels_from_probabilities
        >>> labels_from_probabilities(jnp.array([[0.7], [0.2]]))
        Array([1, 0], dtype=int32)
    """
    probabilities = jnp.asarray(probabilities)
    if probabilities.ndim <= 1 or probabilities.shape[-1] == 1:
        return threshold_labels(probabilities, threshold=threshold)
    return jnp.argmax(probabilities, axis=-1).astype(jnp.int32)


def threshold_labels(scores: chex.Array, *, threshold: float = 0.5) -> chex.Array:
    """``1`` where ``score > threshold``, else ``0``; a trailing axis of size 1 is dropped."""
    scores = jnp.asarray(scores)
    if scores.ndim >= 1 and scores.shape[-1] == 1:
        scores = scores[..., 0]
    return (scores > jnp.asarray(threshold, scores.dtype)).astype(jnp.int32)


def _labels(y: chex.Array, name: str) -> chex.Array:
    y = jnp.asarray(y)
    if y.ndim == 2 and y.shape[-1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of integer labels, got shape {y.shape}. Turn scores "
            "into labels with labels_from_logits / labels_from_probabilities."
        )
    if jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(
            f"{name} must hold integer labels, got dtype {y.dtype}. Use labels_from_logits or "
            "labels_from_probabilities, or cast with .astype(jnp.int32)."
        )
    return y.astype(jnp.int32)


def _weights(sample_weight: chex.Array | None, n: int) -> chex.Array | None:
    if sample_weight is None:
        return None
    w = jnp.asarray(sample_weight).astype(jnp.float32)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {w.shape}.")
    return w


def confusion_matrix(
    y_true: chex.Array,
    y_pred: chex.Array,
    num_classes: int,
    *,
    sample_weight: chex.Array | None = None,
) -> chex.Array:
    """The ``(num_classes, num_classes)`` confusion matrix: ``C[i, j]`` = #(true i, predicted j).

    Args:
        y_true: ``(n,)`` integer true labels.
        y_pred: ``(n,)`` integer predicted labels.
        num_classes: the number of classes (a Python int).
        sample_weight: optional ``(n,)`` weights (0 masks a padded example).

    Returns:
        int32 counts, or float32 sums of weights when ``sample_weight`` is given. Samples with
        a label outside ``[0, num_classes)`` are not counted.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import confusion_matrix
        >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), 2)
        Array([[1, 0],
               [1, 1]], dtype=int32)

    References:
        ``sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(num_classes))``.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes=}.")
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}.")
    w = _weights(sample_weight, y_true.shape[0])
    valid = (y_true >= 0) & (y_true < num_classes) & (y_pred >= 0) & (y_pred < num_classes)
    flat = jnp.where(valid, y_true * num_classes + y_pred, num_classes * num_classes)
    if w is None:
        counts = jnp.bincount(flat, length=num_classes * num_classes + 1)
        counts = counts.astype(jnp.int32)
    else:
        counts = jnp.zeros(num_classes * num_classes + 1, jnp.float32).at[flat].add(w)
    return counts[:-1].reshape(num_classes, num_classes)


def accuracy(
    y_true: chex.Array,
    y_pred: chex.Array,
    *,
    normalize: bool = True,
    sample_weight: chex.Array | None = None,
) -> chex.Array:
    """Fraction (or count, ``normalize=False``) of samples with ``y_pred == y_true``.

    Args:
        y_true: ``(n,)`` integer true labels.
        y_pred: ``(n,)`` integer predicted labels.
        normalize: return the fraction; otherwise the (weighted) number of hits.
        sample_weight: optional ``(n,)`` weights.

    Returns:
        A float32 scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import accuracy
        >>> float(accuracy(jnp.array([0, 1, 2, 2]), jnp.array([0, 1, 1, 2])))
        0.75

    References:
        ``sklearn.metrics.accuracy_score``.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    hits = (y_true == y_pred).astype(jnp.float32)
    return _average_hits(hits, _weights(sample_weight, hits.shape[0]), normalize)


def top_k_accuracy(
    y_true: chex.Array,
    y_score: chex.Array,
    *,
    k: int = 2,
    normalize: bool = True,
    sample_weight: chex.Array | None = None,
) -> chex.Array:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    Ties are broken as scikit-learn does (a stable descending sort ranks the higher class
    index first): the true class ``t`` of a row ``s`` is a hit when
    ``#{j : s_j > s_t} + #{j > t : s_j = s_t} < k``.

    Args:
        y_true: ``(n,)`` integer true labels.
        y_score: ``(n, num_classes)`` scores (logits or probabilities).
        k: how many top classes count as a hit.
        normalize: return the fraction; otherwise the (weighted) number of hits.
        sample_weight: optional ``(n,)`` weights.

    Returns:
        A float32 scalar.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import top_k_accuracy
        >>> scores = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
        >>> float(top_k_accuracy(jnp.array([1, 0]), scores, k=2))
        0.5

    References:
        ``sklearn.metrics.top_k_accuracy_score``.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k=}.")
    y_true = _labels(y_true, "y_true")
    y_score = jnp.asarray(y_score)
    if y_score.ndim != 2 or y_score.shape[0] != y_true.shape[0]:
        raise ValueError(
            f"y_score must have shape (n, num_classes) with n = {y_true.shape[0]}, "
            f"got {y_score.shape}."
        )
    true_score = jnp.take_along_axis(y_score, y_true[:, None], axis=1)
    later = jnp.arange(y_score.shape[1])[None, :] > y_true[:, None]
    ahead = (y_score > true_score) | ((y_score == true_score) & later)
    hits = (jnp.sum(ahead, axis=1) < k).astype(jnp.float32)
    return _average_hits(hits, _weights(sample_weight, hits.shape[0]), normalize)


def _average_hits(hits: chex.Array, w: chex.Array | None, normalize: bool) -> chex.Array:
    if w is None:
        return jnp.mean(hits) if normalize else jnp.sum(hits)
    total = jnp.sum(hits * w)
    return total / jnp.sum(w) if normalize else total


def _divide(numerator: chex.Array, denominator: chex.Array, zero_division: float) -> chex.Array:
    safe = jnp.where(denominator == 0, jnp.ones_like(denominator), denominator)
    return jnp.where(denominator == 0, jnp.float32(zero_division), numerator / safe)


def _check_average(average: str | None, num_classes: int, pos_label: int) -> None:
    validation.check_choice("average", average, AVERAGES)
    if average == "binary":
        if num_classes != 2:
            raise ValueError(
                f"average='binary' needs num_classes=2, got num_classes={num_classes}. Pass "
                "average='macro', 'micro' or 'weighted' for multiclass targets."
            )
        validation.check_choice("pos_label", pos_label, (0, 1))


def _check_zero_division(zero_division: float) -> float:
    value = float(zero_division)
    if not (value in (0.0, 1.0) or math.isnan(value)):
        raise ValueError(f"zero_division must be 0.0, 1.0 or nan, got {zero_division=}.")
    return value


def _scores(
    cm: chex.Array, metric: str, average: str | None, pos_label: int, zero_division: float
) -> chex.Array:
    """Precision, recall or F1 (``metric``) from a confusion matrix, averaged as asked."""
    num_classes = cm.shape[0]
    _check_average(average, num_classes, pos_label)
    zero_division = _check_zero_division(zero_division)
    cm = cm.astype(jnp.float32)
    tp = jnp.diagonal(cm)
    predicted = jnp.sum(cm, axis=0)
    support = jnp.sum(cm, axis=1)
    if average == "micro":
        tp, predicted, support = jnp.sum(tp), jnp.sum(predicted), jnp.sum(support)
    if metric == "precision":
        score = _divide(tp, predicted, zero_division)
    elif metric == "recall":
        score = _divide(tp, support, zero_division)
    else:  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (predicted + support)
        score = _divide(2 * tp, predicted + support, zero_division)
    if average is None or average == "micro":
        return score
    if average == "binary":
        return score[pos_label]
    # macro / weighted: over the classes that occur in y_true or y_pred (scikit-learn's
    # labels=None), skipping nan scores (zero_division=nan).
    valid = ((predicted + support) > 0) & ~jnp.isnan(score)
    weight = valid.astype(jnp.float32)
    if average == "weighted":
        by_support = support * weight
        weight = jnp.where(jnp.sum(by_support) > 0, by_support, weight)
    total = jnp.sum(jnp.where(valid, score, 0.0) * weight)
    count = jnp.sum(weight)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), jnp.nan)


def _metric_from_labels(
    metric, y_true, y_pred, num_classes, average, pos_label, zero_division, sample_weight
):
    cm = confusion_matrix(y_true, y_pred, num_classes, sample_weight=sample_weight)
    return _scores(cm, metric, average, pos_label, zero_division)


_PRF_DOC = """{summary}

    .. math::
        {formula}

    computed per class ``c`` from the confusion matrix, then averaged:

    - ``"binary"``: the score of class ``pos_label`` (needs ``num_classes=2``);
    - ``"micro"``: from the summed ``tp``, ``fp``, ``fn`` of all classes (equals accuracy
      for single-label multiclass data);
    - ``"macro"``: the unweighted mean over the classes present in ``y_true`` or ``y_pred``
      (scikit-learn's ``labels=None``; a class with no sample at all is left out);
    - ``"weighted"``: the mean weighted by each class's support (number of true samples);
    - ``None``: the ``(num_classes,)`` per-class scores (scikit-learn's
      ``labels=range(num_classes)``).

    Args:
        y_true: ``(n,)`` integer true labels.
        y_pred: ``(n,)`` integer predicted labels.
        num_classes: the number of classes (a Python int).
        average: ``"binary"``, ``"macro"``, ``"micro"``, ``"weighted"`` or None.
        pos_label: the positive class for ``average="binary"``.
        zero_division: the value of an undefined (0/0) score: 0.0 (scikit-learn's default),
            1.0 or nan.
        sample_weight: optional ``(n,)`` weights (0 masks a padded example).

    Returns:
        A float32 scalar, or ``(num_classes,)`` scores for ``average=None``.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import {name}
        >>> y_true, y_pred = jnp.array([0, 1, 1, 1]), jnp.array([0, 1, 0, 1])
        >>> float({name}(y_true, y_pred, num_classes=2))
        {example}

    References:
        ``sklearn.metrics.{sklearn}(y_true, y_pred, average=..., zero_division=0)``.
    """


def precision(
    y_true: chex.Array,
    y_pred: chex.Array,
    *,
    num_classes: int,
    average: str | None = "binary",
    pos_label: int = 1,
    zero_division: float = 0.0,
    sample_weight: chex.Array | None = None,
) -> chex.Array:
    return _metric_from_labels(
        "precision", y_true, y_pred, num_classes, average, pos_label, zero_division, sample_weight
    )


def recall(
    y_true: chex.Array,
    y_pred: chex.Array,
    *,
    num_classes: int,
    average: str | None = "binary",
    pos_label: int = 1,
    zero_division: float = 0.0,
    sample_weight: chex.Array | None = None,
) -> chex.Array:
    return _metric_from_labels(
        "recall", y_true, y_pred, num_classes, average, pos_label, zero_division, sample_weight
    )


def f1_score(
    y_true: chex.Array,
    y_pred: chex.Array,
    *,
    num_classes: int,
    average: str | None = "binary",
    pos_label: int = 1,
    zero_division: float = 0.0,
    sample_weight: chex.Array | None = None,
) -> chex.Array:
    return _metric_from_labels(
        "f1", y_true, y_pred, num_classes, average, pos_label, zero_division, sample_weight
    )


precision.__doc__ = _PRF_DOC.format(
    summary="Precision ``tp / (tp + fp)``: the fraction of predicted positives that are right.",
    formula="P_c = tp_c / (tp_c + fp_c)",
    name="precision",
    example="1.0",
    sklearn="precision_score",
)
recall.__doc__ = _PRF_DOC.format(
    summary="Recall ``tp / (tp + fn)``: the fraction of true positives that are found.",
    formula="R_c = tp_c / (tp_c + fn_c)",
    name="recall",
    example="0.6666666865348816",
    sklearn="recall_score",
)
f1_score.__doc__ = _PRF_DOC.format(
    summary="F1, the harmonic mean of precision and recall: ``2 tp / (2 tp + fp + fn)``.",
    formula="F1_c = 2 P_c R_c / (P_c + R_c) = 2 tp_c / (2 tp_c + fp_c + fn_c)",
    name="f1_score",
    example="0.800000011920929",
    sklearn="f1_score",
)


class ConfusionMatrix(NamedTuple):
    """A streaming confusion matrix: sum batches (or devices), derive exact epoch metrics.

    A pytree (one array), so it is carried through `jax.jit`, `jax.lax.scan` and `jax.pmap`;
    across devices, merge with ``jax.lax.psum(acc, axis_name)``. Metrics computed from the
    summed matrix equal the metrics of the concatenated epoch, unlike averages of batch
    metrics.

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.metrics import ConfusionMatrix
        >>> acc = ConfusionMatrix.empty(3)
        >>> acc = acc.update(jnp.array([0, 1]), jnp.array([0, 2]))
        >>> acc = acc.update(jnp.array([2]), jnp.array([2]))
        >>> float(acc.accuracy())
        0.6666666865348816
        >>> sorted(acc.compute(average="macro"))
        ['accuracy', 'f1_score', 'precision', 'recall']
    """

    counts: chex.Array  # (num_classes, num_classes); rows true, columns predicted

    @classmethod
    def empty(cls, num_classes: int, dtype: jnp.dtype = jnp.int32) -> ConfusionMatrix:
        """A zero matrix; use ``dtype=jnp.float32`` to accumulate with ``sample_weight``."""
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes=}.")
        return cls(jnp.zeros((num_classes, num_classes), dtype))

    @property
    def num_classes(self) -> int:
        return self.counts.shape[-1]

    def update(
        self, y_true: chex.Array, y_pred: chex.Array, *, sample_weight: chex.Array | None = None
    ) -> ConfusionMatrix:
        """Adds one batch's `confusion_matrix` (cast to this accumulator's dtype)."""
        batch = confusion_matrix(y_true, y_pred, self.num_classes, sample_weight=sample_weight)
        return ConfusionMatrix(self.counts + batch.astype(self.counts.dtype))

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """The accumulator of both halves of the data (e.g. two hosts or two shards)."""
        return ConfusionMatrix(self.counts + jnp.asarray(other.counts).astype(self.counts.dtype))

    def accuracy(self) -> chex.Array:
        """``trace(C) / sum(C)`` (0 when nothing has been counted)."""
        cm = self.counts.astype(jnp.float32)
        return _divide(jnp.trace(cm), jnp.sum(cm), 0.0)

    def precision(
        self, *, average: str | None = "binary", pos_label: int = 1, zero_division: float = 0.0
    ) -> chex.Array:
        """`precision` of all samples counted so far."""
        return _scores(self.counts, "precision", average, pos_label, zero_division)

    def recall(
        self, *, average: str | None = "binary", pos_label: int = 1, zero_division: float = 0.0
    ) -> chex.Array:
        """`recall` of all samples counted so far."""
        return _scores(self.counts, "recall", average, pos_label, zero_division)

    def f1_score(
        self, *, average: str | None = "binary", pos_label: int = 1, zero_division: float = 0.0
    ) -> chex.Array:
        """`f1_score` of all samples counted so far."""
        return _scores(self.counts, "f1", average, pos_label, zero_division)

    def compute(
        self, *, average: str | None = "binary", pos_label: int = 1, zero_division: float = 0.0
    ) -> dict[str, chex.Array]:
        """``{"accuracy", "precision", "recall", "f1_score"}`` of everything counted so far."""
        kwargs = dict(average=average, pos_label=pos_label, zero_division=zero_division)
        return {
            "accuracy": self.accuracy(),
            "precision": self.precision(**kwargs),
            "recall": self.recall(**kwargs),
            "f1_score": self.f1_score(**kwargs),
        }
