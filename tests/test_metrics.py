"""dlopt.metrics against sklearn.metrics on random labels, classes absent from batches included."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given
from hypothesis import strategies as st

from dlopt import metrics

PRF = {
    "precision": (metrics.precision, skm.precision_score),
    "recall": (metrics.recall, skm.recall_score),
    "f1_score": (metrics.f1_score, skm.f1_score),
}
AVERAGES = ["binary", "macro", "micro", "weighted", None]
N = 12  # one batch size for all random cases: few compiles


def random_labels(seed: int, num_classes: int, n: int = N):
    """y_true, y_pred drawn from random subsets of the classes, so some classes are absent
    from y_true, from y_pred, or from both."""
    rng = np.random.default_rng(seed)
    true_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    pred_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    y_true = rng.choice(true_classes, size=n)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice(pred_classes, size=n))
    return y_true.astype(np.int32), y_pred.astype(np.int32)


def sklearn_prf(sk_fn, y_true, y_pred, num_classes, average, zero_division=0.0, **kw):
    labels = list(range(num_classes)) if average is None else None
    if average == "binary":
        labels = None
    return sk_fn(y_true, y_pred, average=average, labels=labels, zero_division=zero_division, **kw)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- confusion matrix


@given(seed=st.integers(0, 10_000), num_classes=st.sampled_from([2, 4]), weighted=st.booleans())
def test_confusion_matrix_matches_sklearn(seed, num_classes, weighted):
    y_true, y_pred = random_labels(seed, num_classes)
    w = np.random.default_rng(seed).uniform(0.1, 2.0, N).astype(np.float32) if weighted else None
    actual = metrics.confusion_matrix(y_true, y_pred, num_classes, sample_weight=w)
    expected = skm.confusion_matrix(
        y_true, y_pred, labels=list(range(num_classes)), sample_weight=w
    )
    assert actual.dtype == (jnp.float32 if weighted else jnp.int32)
    assert_close(actual, expected)


def test_confusion_matrix_ignores_out_of_range_labels():
    cm = metrics.confusion_matrix(jnp.array([0, 1, -1, 2]), jnp.array([0, 0, 1, 1]), 2)
    chex.assert_trees_all_equal(cm, jnp.array([[1, 0], [1, 0]], jnp.int32))


# ----------------------------------------------------------------- precision / recall / f1


@pytest.mark.parametrize("average", AVERAGES)
@pytest.mark.parametrize("name", PRF)
@given(seed=st.integers(0, 10_000))
def test_prf_matches_sklearn(name, average, seed):
    ours, theirs = PRF[name]
    num_classes = 2 if average == "binary" else 4
    y_true, y_pred = random_labels(seed, num_classes)
    actual = ours(y_true, y_pred, num_classes=num_classes, average=average)
    assert_close(actual, sklearn_prf(theirs, y_true, y_pred, num_classes, average))


@pytest.mark.parametrize("zero_division", [1.0, math.nan])
@pytest.mark.parametrize("average", ["binary", "macro", "weighted", None])
@pytest.mark.parametrize("name", PRF)
def test_zero_division_matches_sklearn(name, average, zero_division):
    ours, theirs = PRF[name]
    # class 2 is never predicted, class 3 never true; binary: no positive predicted.
    cases = (
        [(np.array([0, 1, 1, 0]), np.array([0, 0, 0, 0]), 2)]
        if average == "binary"
        else [
            (np.array([0, 1, 2, 2, 1]), np.array([0, 3, 1, 0, 1]), 4),
            (np.array([2, 2, 2]), np.array([0, 0, 1]), 3),
        ]
    )
    for y_true, y_pred, c in cases:
        actual = ours(y_true, y_pred, num_classes=c, average=average, zero_division=zero_division)
        expected = sklearn_prf(theirs, y_true, y_pred, c, average, zero_division=zero_division)
        assert_close(actual, expected)


@pytest.mark.parametrize("name", PRF)
def test_weighted_samples_match_sklearn(name):
    ours, theirs = PRF[name]
    y_true, y_pred = random_labels(7, 4)
    w = np.random.default_rng(7).uniform(0.1, 3.0, N).astype(np.float32)
    for average in ["macro", "micro", "weighted"]:
        actual = ours(y_true, y_pred, num_classes=4, average=average, sample_weight=w)
        expected = sklearn_prf(theirs, y_true, y_pred, 4, average, sample_weight=w)
        assert_close(actual, expected)


def test_zero_weight_masks_padding():
    y_true, y_pred = random_labels(3, 4)
    pad_true = np.concatenate([y_true, np.zeros(4, np.int32)])
    pad_pred = np.concatenate([y_pred, np.full(4, 3, np.int32)])
    mask = np.concatenate([np.ones(N), np.zeros(4)]).astype(np.float32)
    for ours, theirs in PRF.values():
        masked = ours(pad_true, pad_pred, num_classes=4, average="macro", sample_weight=mask)
        assert_close(masked, sklearn_prf(theirs, y_true, y_pred, 4, "macro"))
    assert_close(
        metrics.accuracy(pad_true, pad_pred, sample_weight=mask), skm.accuracy_score(y_true, y_pred)
    )


# ------------------------------------------------------------------------ accuracy, top-k


@given(seed=st.integers(0, 10_000), normalize=st.booleans(), weighted=st.booleans())
def test_accuracy_matches_sklearn(seed, normalize, weighted):
    y_true, y_pred = random_labels(seed, 5)
    w = np.random.default_rng(seed).uniform(0.1, 2.0, N).astype(np.float32) if weighted else None
    actual = metrics.accuracy(y_true, y_pred, normalize=normalize, sample_weight=w)
    assert_close(actual, skm.accuracy_score(y_true, y_pred, normalize=normalize, sample_weight=w))


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal")
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@given(seed=st.integers(0, 10_000))
def test_top_k_accuracy_matches_sklearn_with_ties(k, seed):
    rng = np.random.default_rng(seed)
    num_classes = 5
    y_true, _ = random_labels(seed, num_classes)
    scores = rng.integers(0, 3, (N, num_classes)).astype(np.float32)  # many ties
    w = rng.uniform(0.1, 2.0, N).astype(np.float32)
    actual = metrics.top_k_accuracy(y_true, scores, k=k, sample_weight=w)
    expected = skm.top_k_accuracy_score(
        y_true, scores, k=k, labels=list(range(num_classes)), sample_weight=w
    )
    assert_close(actual, expected)


# -------------------------------------------------------------------- labels from scores


def test_labels_from_logits_and_probabilities():
    logits = jnp.array([[0.3, -1.0, 2.0], [4.0, 1.0, 1.0], [0.0, 0.5, 0.5]])
    chex.assert_trees_all_equal(metrics.labels_from_logits(logits), jnp.array([2, 0, 1]))
    probs = jax.nn.softmax(logits)
    chex.assert_trees_all_equal(metrics.labels_from_probabilities(probs), jnp.array([2, 0, 1]))
    binary = jnp.array([[-2.0], [0.0], [0.1], [3.0]])
    expected = jnp.array([0, 0, 1, 1], jnp.int32)
    chex.assert_trees_all_equal(metrics.labels_from_logits(binary), expected)
    chex.assert_trees_all_equal(metrics.labels_from_logits(binary[:, 0]), expected)
    chex.assert_trees_all_equal(metrics.labels_from_probabilities(jax.nn.sigmoid(binary)), expected)
    chex.assert_trees_all_equal(
        metrics.labels_from_probabilities(jnp.array([0.2, 0.6, 0.8]), threshold=0.7),
        jnp.array([0, 0, 1], jnp.int32),
    )


# ------------------------------------------------------------------- streaming accumulator


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
@given(seed=st.integers(0, 10_000))
def test_streaming_equals_whole_epoch(average, seed):
    num_classes = 4
    batches = [random_labels(seed * 10 + i, num_classes) for i in range(4)]
    acc = metrics.ConfusionMatrix.empty(num_classes)
    for y_true, y_pred in batches:  # each batch lacks some classes
        acc = acc.update(y_true, y_pred)
    y_true = np.concatenate([b[0] for b in batches])
    y_pred = np.concatenate([b[1] for b in batches])
    got = acc.compute(average=average)
    assert_close(got["accuracy"], skm.accuracy_score(y_true, y_pred))
    for name, (_, theirs) in PRF.items():
        assert_close(got[name], sklearn_prf(theirs, y_true, y_pred, num_classes, average))
    # epoch metrics differ from the mean of batch metrics in general: the accumulator is exact
    assert_close(acc.counts, skm.confusion_matrix(y_true, y_pred, labels=range(num_classes)))


def test_streaming_merge_scan_and_jit_agree():
    num_classes = 3
    ys = [random_labels(40 + i, num_classes) for i in range(6)]
    y_true = jnp.stack([jnp.asarray(t) for t, _ in ys])
    y_pred = jnp.stack([jnp.asarray(p) for _, p in ys])

    @jax.jit
    def scan_epoch(y_true, y_pred):
        def body(acc, batch):
            return acc.update(*batch), None

        acc, _ = jax.lax.scan(body, metrics.ConfusionMatrix.empty(num_classes), (y_true, y_pred))
        return acc, acc.compute(average="macro")

    acc, scores = scan_epoch(y_true, y_pred)
    first = metrics.ConfusionMatrix.empty(num_classes)
    second = metrics.ConfusionMatrix.empty(num_classes)
    for i in range(3):
        first = first.update(y_true[i], y_pred[i])
        second = second.update(y_true[i + 3], y_pred[i + 3])
    chex.assert_trees_all_equal(first.merge(second), acc)
    flat_t, flat_p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    assert_close(scores["f1_score"], skm.f1_score(flat_t, flat_p, average="macro"))
    # a float accumulator takes sample weights
    wacc = metrics.ConfusionMatrix.empty(num_classes, jnp.float32)
    wacc = wacc.update(y_true[0], y_pred[0], sample_weight=jnp.full(N, 0.5, jnp.float32))
    assert_close(wacc.counts, 0.5 * np.asarray(acc_of(y_true[0], y_pred[0], num_classes)))


def acc_of(y_true, y_pred, num_classes):
    return metrics.ConfusionMatrix.empty(num_classes).update(y_true, y_pred).counts


def test_jit_matches_eager_and_traces_once():
    y_true, y_pred = random_labels(11, 4)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f1(t, p):
        return metrics.f1_score(t, p, num_classes=4, average="weighted")

    for seed in (11, 12, 13):
        t, p = random_labels(seed, 4)
        assert_close(f1(t, p), metrics.f1_score(t, p, num_classes=4, average="weighted"))
    eager = functools.partial(metrics.precision, num_classes=4, average=None)
    assert_close(jax.jit(eager)(y_true, y_pred), eager(y_true, y_pred))


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: metrics.precision([0, 1, 2], [0, 1, 1], num_classes=3), "average='binary'"),
        (lambda: metrics.recall([0, 1], [0, 1], num_classes=2, average="mean"), "average="),
        (
            lambda: metrics.f1_score([0, 1], [1, 1], num_classes=2, zero_division=0.5),
            "zero_division",
        ),
        (lambda: metrics.f1_score([0, 1], [1, 1], num_classes=2, pos_label=2), "pos_label"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1, 1], 2), "differ in shape"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], 0), "num_classes"),
        (lambda: metrics.top_k_accuracy([0, 1], jnp.ones((2, 3)), k=0), "k must be"),
        (lambda: metrics.top_k_accuracy([0, 1], jnp.ones(2), k=1), "y_score"),
        (lambda: metrics.accuracy(jnp.ones((2, 2), jnp.int32), jnp.ones((2, 2), jnp.int32)), "1-D"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_float_labels_raise_type_error():
    with pytest.raises(TypeError, match="labels_from_logits"):
        metrics.accuracy(jnp.array([0.0, 1.0]), jnp.array([0, 1]))
