"""Reads a training history and names what went wrong, when it started, and the usual remedy.

`diagnose` looks at the per-epoch train loss ``t`` and validation loss ``v`` and reports a
problem only when it has evidence well beyond the noise of the curves, with the epoch it starts
at (counted from 1, as `dlopt.training.fit`'s log and Keras's count them), a confidence and the
numbers it used; a healthy run, whose curves wiggle but trend the right way and have leveled
off, gets none ("no problem found"). Two verdicts say that a run cannot be called healthy yet
(`VERDICTS`):

* ``too_few_epochs``: fewer than ``MIN_EPOCHS`` (5) epochs, and no non-finite loss: not enough
  epochs to judge (an empty or one-epoch history, a 2-epoch smoke test).
* ``not_converged``: no problem found, but the validation loss (else the train loss) still
  falls steeply at the end: by more than ``STILL_FALLING`` (0.05 on the log scale, about 5%)
  per epoch over its last ``max(3, min(window, n // 3))`` epochs (least-squares slope), and by
  more than ``3 s`` over them.

Each curve is read on a log scale (losses are positive; otherwise divided by its range), so a
change of 0.1 is about 10%. Its noise ``s`` is the robust spread of its second differences,
``1.4826 median|y[i+1] - 2 y[i] + y[i-1]| / sqrt(6)``: the epoch-to-epoch jitter, blind to a
steady (linear or exponential) trend. Levels are medians of a few epochs, and a change counts
when it exceeds ``3 s`` and a minimum size. In order, the first kind with evidence is reported:

* ``lr_too_high``: a non-finite loss; a blow-up inside the first epoch; the train loss spiking to
  ``diverge_factor`` x its best so far; the validation loss oscillating (swings of 10% and
  more, each epoch moving a large part of the progress); or the model getting worse: ``v``
  climbs beyond its noise while ``t`` ends no lower than the best ``v``.
* ``overfitting``: ``v`` climbs beyond its noise more than ``window`` epochs after its best
  while ``t`` keeps falling, or ``t`` ends ``gap_factor`` x below ``v`` (a memorized set).
* ``lr_too_low``: ``v`` (else ``t``) still falls at the end, steadily (10x its noise over the
  last third), without leveling off (a sixth of its steepest slope or more) and slowly.
* ``underfitting``: ``t`` barely moves, or levels off above ``underfit_level`` of its first
  value; or (given ``min_accuracy``) the best train accuracy stays below it.
* ``plateau``: over the last third of the run, neither ``v`` (else ``t``) nor ``t`` improves
  beyond the noise (nor by a tenth of the progress made, nor ``t`` by 12%).

The thresholds were measured on a labelled set of real runs, trained with dlopt
(``examples/diagnose_histories.py``, which prints the confusion table); pure Python on the
logged floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

from dlopt.core import validation

KINDS = ("lr_too_high", "overfitting", "underfitting", "plateau", "lr_too_low")
VERDICTS = ("too_few_epochs", "not_converged")  # no problem found, but not healthy either

REMEDIES = {
    "lr_too_high": "lower the learning rate (3-10x), add warmup or gradient clipping "
    "(clip_by_global_norm)",
    "overfitting": "stop early at the best validation epoch (EarlyStopping(restore_best=True)), "
    "add L2/weight decay, dropout or data augmentation, or get more data",
    "underfitting": "use a bigger model, less regularization, a higher learning rate or "
    "more epochs; check the inputs are scaled and the labels are right",
    "plateau": "reduce the learning rate on plateau (ReduceLROnPlateau / reduce_on_plateau) "
    "or use a decaying schedule",
    "lr_too_low": "train longer or raise the learning rate (run dlopt lr-find)",
    "too_few_epochs": "train for more epochs before judging the run",
    "not_converged": "train for more epochs (EarlyStopping stops once it levels off)",
}

# Thresholds measured on the labelled runs of examples/diagnose_histories.py (log units).
Z = 3.0  # a change counts when it is this many noise units
BLOWUP = 10.0  # lr_too_high: first-epoch mean train loss over the loss right after it
OSC_LEVEL = 0.1  # lr_too_high: noise of an oscillating curve (it swings by ~10% or more)
STEADY = 10.0  # lr_too_low: the last-third decrease, in noise units
LEVELING = 1 / 6  # lr_too_low: last-third slope over the steepest earlier one, at least
SLOW_RATE = 0.15  # lr_too_low: mean decrease per epoch (log) below this
PLATEAU_STEP = 0.1  # plateau: an improvement is at least this part of the progress
TRAIN_STALL = math.log(1.12)  # plateau: the train loss fell by less than this meanwhile
# The verdicts that are no problem but no "healthy" either (VERDICTS).
MIN_EPOCHS = 5  # too_few_epochs: fewer epochs than this (a non-finite loss is still reported)
STILL_FALLING = 0.05  # not_converged: the fall (log) per epoch at the end, at least (~5%)
_NO_EVIDENCE: Mapping[str, float] = MappingProxyType({})


class Finding(NamedTuple):
    """One diagnosis: its ``kind`` (one of `KINDS` or `VERDICTS`), the ``epoch`` it starts at
    (counted from 1: the first epoch is epoch 1), what
    was seen (``message``), the usual ``remedy``, a ``confidence`` in (0.5, 1] (0.5 at the
    threshold, 1 for a non-finite loss) and the ``evidence``: the numbers the rule compared."""

    kind: str
    epoch: int
    message: str
    remedy: str
    confidence: float = 1.0
    evidence: Mapping[str, float] = _NO_EVIDENCE

    def __str__(self) -> str:
        return (
            f"[{self.kind}] from epoch {self.epoch} (confidence {self.confidence:.2f}): "
            f"{self.message}. Remedy: {self.remedy}."
        )


def _series(history: Any) -> dict[str, list[float]]:
    """``name -> per-epoch list`` from a `History`, such a dict, or a list of epoch dicts."""
    if hasattr(history, "history"):
        history = history.history
    if isinstance(history, Mapping):
        return {str(k): [float(x) for x in v] for k, v in history.items()}
    if isinstance(history, Sequence):
        names: dict[str, None] = {}
        for e in history:
            names.update(dict.fromkeys(e))
        return {n: [float(e.get(n, math.nan)) for e in history] for n in names}
    raise TypeError(
        "history must be a dlopt.training.History, a dict name -> list of per-epoch values, "
        f"or a list of per-epoch dicts, got {type(history).__name__}."
    )


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else 0.5 * (s[k - 1] + s[k])


def _slope(ys: Sequence[float]) -> float:
    """Least-squares slope per epoch."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


class _Curve:
    """One loss curve on the scale the rules read it: ``y`` (log, or divided by the range),
    its ``noise``, a 3-epoch running median ``smooth`` and the level ``end``, the median of
    the last 3-5 epochs."""

    def __init__(self, values: Sequence[float]):
        self.raw = list(values)
        self.log = all(x > 0 for x in values)
        self.span = 1.0 if self.log else (max(values) - min(values)) or 1.0
        self.y = [math.log(x) if self.log else x / self.span for x in values]
        n = len(self.y)
        d2 = [self.y[i + 1] - 2 * self.y[i] + self.y[i - 1] for i in range(1, n - 1)]
        self.noise = 1.4826 * _median([abs(d) for d in d2]) / math.sqrt(6) if len(d2) >= 2 else 0.0
        self.smooth = [_median(self.y[max(i - 1, 0) : i + 2]) for i in range(n)]
        self.end = _median(self.y[-max(3, min(5, n // 5)) :])

    def best(self) -> int:
        """The epoch of the smoothed minimum."""
        return min(range(len(self.smooth)), key=self.smooth.__getitem__)

    def raw_at(self, y: float) -> float:
        """A value on the curve's own scale."""
        return math.exp(y) if self.log else y * self.span


def _find(kind: str, index: int, message: str, margin: float, **evidence: float) -> Finding:
    """A `Finding` at the epoch of the 0-based ``index`` (its epoch is ``index + 1``) with its
    evidence (the named numbers, rounded, and the ``margin``: how many times its threshold the
    deciding number is, >= 1) and confidence ``1 - 0.5 / margin``: 0.5 at the threshold, 0.75
    at twice it, towards 1."""
    margin = max(margin, 1.0)
    ev = {k: float(f"{x:.4g}") for k, x in {**evidence, "margin": margin}.items()}
    confidence = round(1.0 - 0.5 / margin, 3)
    return Finding(kind, int(index) + 1, message, REMEDIES[kind], confidence, ev)


def _lr_too_high(t: _Curve, v: _Curve | None, names, diverge_factor, osc_tol, overfit_tol):
    """The first sign that the learning rate is too high, or None."""
    loss, val_loss = names
    n = len(t.raw)
    # A blow-up inside the first epoch: its mean train loss dwarfs the loss right after it.
    after = max(t.raw[1], v.raw[0] if v else -math.inf)
    if after > 0 and t.raw[0] > BLOWUP * after:
        ratio = t.raw[0] / after
        message = (
            f"the first epoch's mean {loss} ({t.raw[0]:.4g}) is {ratio:.3g}x the loss right "
            f"after it: it blew up inside the first epoch"
        )
        return _find("lr_too_high", 0, message, ratio / BLOWUP, ratio=ratio)
    # A spike: the train loss more than doubles over its best so far, undoing much progress.
    for i in range(1, n):
        m = min(t.raw[:i])
        progress, jump = t.raw[0] - m, t.raw[i] - m
        if m > 0 and progress > 0 and t.raw[i] > diverge_factor * m and jump > osc_tol * progress:
            message = (
                f"{loss} jumps to {t.raw[i]:.4g}, {t.raw[i] / m:.3g}x its best so far "
                f"({m:.4g}), undoing {jump / progress:.0%} of the progress"
            )
            undone = jump / progress
            return _find(
                "lr_too_high", i, message, undone / osc_tol, ratio=t.raw[i] / m, undone=undone
            )
    c, name = (v, val_loss) if v is not None else (t, loss)
    # Oscillation: after the first third, the curve swings up and down (its noise is a large
    # part of its level) and moves, epoch to epoch, by a large part of the progress made.
    progress = max(t.raw[0], c.raw[0]) - min(c.raw)
    i0 = n // 3
    if n >= 6 and c.log and progress > 0:
        steps = [abs(b - a) for a, b in zip(c.raw[i0:], c.raw[i0 + 1 :], strict=False)]
        swing = sum(steps) / len(steps) / progress
        if c.noise > OSC_LEVEL and swing > osc_tol / 2:
            start = next(
                (i for i in range(1, n) if c.raw[i] - c.raw[i - 1] > osc_tol / 2 * progress), i0
            )
            message = (
                f"{name} oscillates: it swings by about {math.expm1(c.noise):.0%} epoch to "
                f"epoch (noise {c.noise:.3g}), moving {swing:.0%} of its progress per epoch"
            )
            margin = min(swing / (osc_tol / 2), c.noise / OSC_LEVEL)
            return _find("lr_too_high", start, message, margin, swing=swing, noise=c.noise)
    if v is None:
        return None
    # The model got worse: v climbs well above its best and t ends no lower than that best
    # (it does not fit the training data better either: not overfitting).
    b = v.best()
    rise, need = v.end - v.smooth[b], max(Z * v.noise, math.log1p(overfit_tol))
    t_then, t_end, v_best = t.raw_at(t.smooth[b]), t.raw_at(t.end), v.raw_at(v.smooth[b])
    if b < n - 1 and rise > need and t_end >= v_best:
        message = (
            f"the model got worse after epoch {b + 1}: {val_loss} climbs from {v.raw[b]:.4g} to "
            f"{v.raw_at(v.end):.4g} (more than its noise {v.noise:.3g}) while {loss} ends no "
            f"lower ({t_then:.4g} -> {t_end:.4g})"
        )
        return _find("lr_too_high", b + 1, message, rise / need, rise=rise, noise=v.noise)
    return None


def _overfitting(t: _Curve, v: _Curve, names, window, overfit_tol, gap_factor, tol):
    """Validation loss climbing while the train loss falls, or a train loss far below it."""
    loss, val_loss = names
    n = len(t.raw)
    found = []
    b = v.best()
    rise, need = v.end - v.smooth[b], max(Z * v.noise, math.log1p(overfit_tol))
    fall = t.smooth[b] - t.end
    v_best, t_end = v.raw_at(v.smooth[b]), t.raw_at(t.end)
    past = n - 1 - v.raw.index(min(v.raw))  # epochs after the best (early stopping's wait)
    falls = fall > max(Z * t.noise, math.log1p(tol)) and t_end < v_best
    if past > window and rise > need and falls:
        message = (
            f"{val_loss} is lowest around epoch {b + 1} ({v.raw[b]:.4g}) and climbs to "
            f"{v.raw_at(v.end):.4g} (more than its noise {v.noise:.3g}) while {loss} keeps "
            f"falling ({t.raw_at(t.smooth[b]):.4g} -> {t_end:.4g})"
        )
        found.append(_find("overfitting", b + 1, message, rise / need, rise=rise, noise=v.noise))
    if t.log and v.log:
        gap, need_gap = v.end - t.end, math.log(gap_factor)
        if gap > need_gap:
            start = next(i for i in range(n) if v.smooth[i] - t.smooth[i] > need_gap)
            message = (
                f"{loss} ends at {t_end:.3g}, {math.exp(gap):.3g}x below {val_loss} "
                f"({v.raw_at(v.end):.3g}): the training set is memorized"
            )
            found.append(_find("overfitting", start, message, gap / need_gap, gap=math.exp(gap)))
    return min(found, key=lambda f: f.epoch) if found else None


def _lr_too_low(t: _Curve, c: _Curve, name, window, tol):
    """A slow, steady decrease that does not level off, or None."""
    n = len(c.raw)
    k = max(window, n // 3)
    if n < 2 * k:
        return None
    last = _slope(c.y[-k:])
    fastest = min(_slope(c.y[i : i + window]) for i in range(n - k - window + 2))
    drop = -last * k  # over the last k epochs
    steady = drop / max(c.noise, 1e-12)
    leveling = last / fastest if fastest < 0 else 0.0
    rate = (c.y[0] - c.end) / (n - 1)
    if not (
        steady > STEADY
        and drop > math.log1p(tol)
        and leveling > LEVELING
        and rate < SLOW_RATE
        and _slope(t.y[-k:]) < 0
    ):
        return None
    start = n - 1
    while start > 0 and c.smooth[start - 1] > c.smooth[start]:
        start -= 1
    message = (
        f"{name} is still falling steadily at the end ({math.expm1(drop / k):.1%} per epoch over "
        f"the last {k} epochs, {steady:.0f}x its noise, {leveling:.0%} of its fastest rate: no "
        f"leveling off), slowly ({math.expm1(rate):.1%} per epoch on average)"
    )
    margin = min(steady / STEADY, leveling / LEVELING, SLOW_RATE / max(rate, 1e-12))
    return _find(
        "lr_too_low", start, message, margin, per_epoch=drop / k, steady=steady, leveling=leveling
    )


def _plateau(t: _Curve, c: _Curve, name, loss, window, tol):
    """The monitored loss and the train loss both flat over the last third, or None."""
    n = len(c.raw)
    need = max(2 * window, math.ceil(n / 3))
    if n < need + 3:
        return None
    progress = c.y[0] - min(c.smooth)
    threshold = max(Z * c.noise, PLATEAU_STEP * progress, math.log1p(tol))
    j = n - need
    improved = _median(c.y[j - 1 : j + 2]) - c.end
    train_drop = _median(t.y[j - 1 : j + 2]) - t.end
    if abs(improved) >= threshold or train_drop >= TRAIN_STALL:  # improving, or rising
        return None
    start = j
    while start > 1 and c.smooth[start - 1] - c.end < threshold:
        start -= 1
    message = (
        f"{name} has moved by {math.expm1(abs(improved)):.1%} over the last {need} epochs, "
        f"less than {math.expm1(threshold):.0%} (its noise or a tenth of its progress), "
        f"and {loss} by {math.expm1(max(train_drop, 0)):.1%}"
    )
    margin = min(
        threshold / max(abs(improved), threshold / 10), TRAIN_STALL / max(train_drop, 1e-3)
    )
    return _find(
        "plateau",
        start,
        message,
        margin,
        improved=improved,
        train_drop=train_drop,
        epochs=n - start,
    )


def _underfitting(t: _Curve, loss, underfit_drop, underfit_level):
    """A train loss that barely moves or levels off high, or None."""
    t0, best = t.raw[0], min(t.raw)
    drop = (t0 - best) / abs(t0) if t0 else 0.0
    if drop < underfit_drop:
        message = f"{loss} barely moves ({t0:.4g} -> best {best:.4g}, {drop:.0%} lower)"
        return _find("underfitting", 0, message, underfit_drop / max(drop, 1e-3), drop=drop)
    if t.log:
        level = math.exp(t.end - t.y[0])
        if level > underfit_level:
            message = (
                f"{loss} levels off at {t.raw_at(t.end):.4g}, {level:.0%} of its first value "
                f"({t0:.4g}): the model cannot fit the training data"
            )
            return _find("underfitting", 0, message, level / underfit_level, level=level)
    return None


def _not_converged(c: _Curve, name: str, window: int) -> Finding | None:
    """The monitored loss still falling steeply over its last epochs, or None."""
    n = len(c.raw)
    m = max(3, min(window, n // 3))
    rate = -_slope(c.y[-m:])  # per epoch over the last m epochs, least squares
    drop = rate * (m - 1)
    if rate <= STILL_FALLING or drop <= Z * c.noise:
        return None
    message = (
        f"{name} still falls steeply at the end: {-math.expm1(-rate):.1%} per epoch over the "
        f"last {m} epochs (more than {-math.expm1(-STILL_FALLING):.1%}, and {drop:.3g} in all, "
        f"beyond 3x its noise {c.noise:.3g}): not converged"
    )
    margin = min(rate / STILL_FALLING, drop / max(Z * c.noise, 1e-12))
    return _find("not_converged", n - m, message, margin, per_epoch=rate, noise=c.noise)


def diagnose(
    history: Any,
    *,
    loss: str = "loss",
    val_loss: str = "val_loss",
    accuracy: str = "accuracy",
    window: int = 5,
    tol: float = 0.01,
    overfit_tol: float = 0.05,
    underfit_drop: float = 0.1,
    diverge_factor: float = 2.0,
    osc_tol: float = 0.1,
    min_accuracy: float | None = None,
    gap_factor: float = 10.0,
    underfit_level: float = 0.2,
) -> list[Finding]:
    """Names overfitting, underfitting, a learning rate too high or too low, and plateaus.

    Epochs are counted from 1. A non-finite loss is a learning rate too high at the first epoch
    it appears; otherwise fewer than ``MIN_EPOCHS`` (5) epochs are ``too_few_epochs`` ("not
    enough epochs to judge") and nothing else is read.

    With ``s`` the noise of a curve (module docstring), ``b`` the epoch of the smoothed minimum
    of ``v``, ``end`` the median of the last 3-5 epochs and ``k = max(window, n // 3)``; all
    differences on the log scale. At most one of the five kinds (or ``not_converged``) is
    reported, the first that applies in this order (a learning rate too high explains what
    follows from it):

    * lr too high: a non-finite loss; ``t[0] > 10 max(t[1], v[0])``; ``t[i] > diverge_factor
      * m`` with ``t[i] - m > osc_tol * (t[0] - m)`` (``m`` the best before ``i``); after the
      first third, ``s_v > 0.1`` and a mean ``|v[i+1] - v[i]| > osc_tol / 2`` of the progress
      ``max(t[0], v[0]) - min v``; or ``v.end - v[b] > max(3 s_v, log(1 + overfit_tol))``
      with ``t.end >= v[b]``.
    * overfitting: that rise, more than ``window`` epochs after the best ``v``, with ``t``
      falling since ``b`` by ``max(3 s_t, tol)`` to below ``v[b]``; or ``v.end - t.end >
      log(gap_factor)``.
    * lr too low: over the last ``k`` epochs ``v`` (else ``t``) falls by more than ``10 s``
      and ``tol``, at a slope at least 1/6 of its steepest over ``window`` epochs before, by
      less than 0.15 per epoch over the run, and ``t`` falls too (``n >= 2 k``).
    * underfitting: ``(t[0] - min t) < underfit_drop * |t[0]|``, or ``t.end > underfit_level
      * t[0]``; also, after any finding but these two, a best train ``accuracy`` below
      ``min_accuracy``.
    * plateau: over the last ``max(2 window, n / 3)`` epochs, ``v`` (else ``t``) moves by
      less than ``max(3 s, (v[0] - min v) / 10, tol)`` and ``t`` falls by less than 12%.
    * not converged (none of the above): over the last ``m = max(3, min(window, n // 3))``
      epochs, ``v`` (else ``t``) falls by more than ``STILL_FALLING`` (0.05, about 5%) per
      epoch (least-squares slope), and by more than ``3 s`` over them.

    Args:
        history: a `dlopt.training.History`, a dict ``name -> per-epoch list``, or a list of
            per-epoch dicts.
        loss, val_loss, accuracy: the names of the train loss, validation loss and train
            accuracy in the history (the validation loss and accuracy are optional).
        window: the epochs of patience: a rise of ``v`` must last longer than this to be
            overfitting (early stopping with this patience stops there), a plateau twice as
            long; also the shortest "last third"; an int >= 2.
        tol: the smallest relative change that counts (a floor under the noise).
        overfit_tol: how far (relative) the validation loss must climb above its minimum.
        underfit_drop: the least relative drop of the train loss for a model that learns.
        diverge_factor: the jump over its best so far that makes a train loss spike, > 1.
        osc_tol: the part of the progress that a spike undoes, or (half of it) that an
            oscillating curve moves per epoch.
        min_accuracy: when given, a best train accuracy below it is underfitting.
        gap_factor: how far below the validation loss the train loss must end for a
            memorized training set, > 1.
        underfit_level: the fraction of its first value above which a leveled-off train loss
            is underfitting, in (0, 1).

    Returns:
        A list of `Finding`, sorted by epoch (empty when the run looks healthy); each has the
        kind (one of `KINDS` or `VERDICTS`), the epoch (from 1), message and remedy, a
        confidence and its evidence numbers.

    Example:
        >>> from dlopt.lab.diagnose import diagnose
        >>> history = {"loss": [1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.18, 0.16, 0.14, 0.12, 0.1],
        ...            "val_loss": [1.0, 0.7, 0.6, 0.62, 0.66, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]}
        >>> [(f.kind, f.epoch) for f in diagnose(history)]
        [('overfitting', 4)]
        >>> [f.kind for f in diagnose({"loss": [2.3, 1.1]})]
        ['too_few_epochs']

    References:
        Goodfellow, Bengio & Courville, 2016, "Deep Learning", ch. 11 (practical methodology);
        Smith, 2018, "A disciplined approach to neural network hyper-parameters".
    """
    validation.check_int("window", window, 2)
    inf = math.inf
    for name, value, low, high, low_closed in (
        ("tol", tol, 0.0, inf, True),
        ("overfit_tol", overfit_tol, 0.0, inf, True),
        ("osc_tol", osc_tol, 0.0, inf, True),
        ("underfit_drop", underfit_drop, 0.0, inf, True),
        ("diverge_factor", diverge_factor, 1.0, inf, False),
        ("gap_factor", gap_factor, 1.0, inf, False),
        ("underfit_level", underfit_level, 0.0, 1.0, False),
    ):
        validation.check_in_range(name, value, low, high, low_closed=low_closed)
    if min_accuracy is not None:
        validation.check_finite("min_accuracy", min_accuracy)
    series = _series(history)
    if loss not in series:
        raise ValueError(f"history has no {loss!r} (the train loss); it has {sorted(series)}.")
    t_all = series[loss]
    v_all = series.get(val_loss)
    if v_all is not None and len(v_all) != len(t_all):
        raise ValueError(
            f"{val_loss!r} has {len(v_all)} epochs and {loss!r} has {len(t_all)}; they must match."
        )

    # Non-finite values: report the blow-up, analyse the finite prefix.
    bad = {
        name: i
        for name, s in ((loss, t_all), (val_loss, v_all or []))
        if (i := next((j for j, x in enumerate(s) if not math.isfinite(x)), None)) is not None
    }
    if bad:
        name = min(bad, key=bad.__getitem__)
        n = bad[name]
        value = series[name][n]
        message = f"{name} became {value} at epoch {n + 1} (the run diverged)"
        return [
            Finding("lr_too_high", n + 1, message, REMEDIES["lr_too_high"], 1.0, {"epoch": n + 1})
        ]
    n = len(t_all)
    if n < MIN_EPOCHS:
        message = (
            f"{n} epoch{'s' * (n != 1)}, fewer than the {MIN_EPOCHS} needed to read the curves: "
            "not enough epochs to judge"
        )
        return [_find("too_few_epochs", 0, message, MIN_EPOCHS / max(n, 1), epochs=n)]
    t, v = _Curve(t_all), (_Curve(v_all) if v_all is not None else None)
    names = (loss, val_loss)
    found = _lr_too_high(t, v, names, diverge_factor, osc_tol, overfit_tol)
    if found is None and v is not None:
        found = _overfitting(t, v, names, window, overfit_tol, gap_factor, tol)
    c, name = (v, val_loss) if v is not None else (t, loss)
    if found is None:
        found = _lr_too_low(t, c, name, window, tol)
    if found is None:
        found = _underfitting(t, loss, underfit_drop, underfit_level)
    if found is None:
        found = _plateau(t, c, name, loss, window, tol)
    if found is None:
        found = _not_converged(c, name, window)
    findings = [found] if found is not None else []
    if (
        min_accuracy is not None
        and accuracy in series
        and not (
            found is not None and found.kind in ("lr_too_high", "underfitting", "not_converged")
        )
    ):
        acc = [a for a in series[accuracy] if math.isfinite(a)]
        if acc and max(acc) < min_accuracy:
            message = f"the best {accuracy} is {max(acc):.3g} < {min_accuracy}"
            margin = min_accuracy / max(max(acc), 1e-3)
            findings.append(_find("underfitting", 0, message, margin, accuracy=max(acc)))
    return sorted(findings, key=lambda f: f.epoch)


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, or a line saying that no problem was found (the curves look
    healthy: enough epochs, leveled off)."""
    if not findings:
        return "no problem found: the curves look healthy."
    return "\n".join(str(f) for f in findings)
