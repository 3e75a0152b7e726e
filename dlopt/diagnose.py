"""Reads a training history and names what went wrong, when it started, and the usual remedy.

`diagnose` looks at the per-epoch train loss ``t`` and validation loss ``v`` (and the train
accuracy when asked to) and reports, each with the 0-based epoch it starts at:

* ``lr_too_high``: the loss becomes NaN/Inf, climbs far above its best (divergence), or
  swings up and down by a large part of its range (oscillation).
* ``overfitting``: ``v`` turns up after its minimum while ``t`` keeps falling.
* ``underfitting``: ``t`` barely moves from its first value (or the train accuracy stays
  below ``min_accuracy``).
* ``plateau``: the monitored loss (``v``, else ``t``) has not improved by a relative
  ``tol`` for ``window`` epochs.
* ``lr_too_low``: ``t`` (and ``v``) still falls steadily, every epoch, at the end of the run.

The rules are heuristics with tunable thresholds, pure Python on the logged floats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

KINDS = ("lr_too_high", "overfitting", "underfitting", "plateau", "lr_too_low")

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
}


class Finding(NamedTuple):
    """One diagnosis: its ``kind`` (one of `KINDS`), the 0-based ``epoch`` it starts at, what
    was seen (``message``) and the usual ``remedy``."""

    kind: str
    epoch: int
    message: str
    remedy: str

    def __str__(self) -> str:
        return f"[{self.kind}] from epoch {self.epoch}: {self.message}. Remedy: {self.remedy}."


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


def _first_nonfinite(values: Sequence[float]) -> int | None:
    return next((i for i, x in enumerate(values) if not math.isfinite(x)), None)


def _oscillation_start(s: Sequence[float], osc_tol: float, tol: float) -> int | None:
    """The first epoch of an up-down swing larger than ``osc_tol`` of the curve's range (and
    than ``tol`` of its level), when such swings recur (at least 2, and a quarter of the
    possible turning points)."""
    if len(s) < 4:
        return None
    span = max(s) - min(s)
    if span <= 0:
        return None
    d = [b - a for a, b in zip(s, s[1:], strict=False)]
    big = [
        i
        for i in range(len(d) - 1)
        if d[i] * d[i + 1] < 0
        and min(abs(d[i]), abs(d[i + 1])) > max(osc_tol * span, tol * abs(s[i + 1]))
    ]
    if len(big) >= max(2, (len(d) - 1) // 4):
        return big[0]
    return None


def _last_improvement(s: Sequence[float], tol: float) -> int:
    """The last epoch that beat the best so far by more than ``tol * |best|``."""
    best, last = s[0], 0
    for i, x in enumerate(s[1:], start=1):
        if x < best - tol * abs(best):
            best, last = x, i
    return last


def _trailing_decrease_start(s: Sequence[float]) -> int:
    """The first epoch of the strictly decreasing run that ends the series."""
    start = len(s) - 1
    while start > 0 and s[start] < s[start - 1]:
        start -= 1
    return start


def _find(kind: str, epoch: int, message: str) -> Finding:
    return Finding(kind, int(epoch), message, REMEDIES[kind])


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
    osc_tol: float = 0.2,
    min_accuracy: float | None = None,
) -> list[Finding]:
    """Names overfitting, underfitting, a learning rate too high or too low, and plateaus.

    With ``t`` the train loss and ``v`` the validation loss per epoch (``b = argmin v``):

    * lr too high: a non-finite loss; a jump ``t[i] > diverge_factor * m`` (``m`` the best
      before ``i``) that is also more than ``osc_tol`` of the progress ``t[0] - m``; recurring
      swings ``|t[i+1] - t[i]| > osc_tol * (max - min)`` that change sign; or ``v`` climbing
      after ``b`` while ``t`` never gets below ``v[b]`` (the model got worse).
    * overfitting: ``v[-1] > v[b] + overfit_tol * |v[b]|`` with ``t[-1] < t[b]``, from ``b + 1``.
    * underfitting: ``(t[0] - min t) < underfit_drop * |t[0]|``, or the best train
      ``accuracy`` below ``min_accuracy``.
    * plateau: no improvement by ``tol * |best|`` in the last ``window`` epochs (``v``, else ``t``).
    * lr too low: ``t`` (and ``v``) fell in each of the last ``window`` epochs, by ``tol`` per
      epoch on average, relative.

    Args:
        history: a `dlopt.training.History`, a dict ``name -> per-epoch list``, or a list of
            per-epoch dicts.
        loss, val_loss, accuracy: the names of the train loss, validation loss and train
            accuracy in the history (the validation loss and accuracy are optional).
        window: epochs that make a plateau or a steady end, >= 2.
        tol: the relative change that counts as an improvement.
        overfit_tol: how far (relative) the validation loss must climb above its minimum.
        underfit_drop: the least relative drop of the train loss for a model that learns.
        diverge_factor: the jump over its best so far that makes a train loss diverge.
        osc_tol: the swing, as a fraction of the curve's range, that counts as oscillation.
        min_accuracy: when given, a best train accuracy below it is underfitting.

    Returns:
        A list of `Finding`, sorted by epoch (empty when the run looks healthy).

    Example:
        >>> history = {"loss": [1.0, 0.6, 0.4, 0.3, 0.25, 0.2, 0.18, 0.16],
        ...            "val_loss": [1.0, 0.7, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0]}
        >>> [(f.kind, f.epoch) for f in diagnose(history)]
        [('overfitting', 3)]

    References:
        Goodfellow, Bengio & Courville, 2016, "Deep Learning", ch. 11 (practical methodology);
        Smith, 2018, "A disciplined approach to neural network hyper-parameters".
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window=}.")
    for name, value in (("tol", tol), ("overfit_tol", overfit_tol), ("osc_tol", osc_tol)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {name}={value!r}.")
    series = _series(history)
    if loss not in series:
        raise ValueError(f"history has no {loss!r} (the train loss); it has {sorted(series)}.")
    t_all = series[loss]
    v_all = series.get(val_loss)
    findings: list[Finding] = []

    # Non-finite values: analyse the finite prefix, report the blow-up.
    bad = {
        name: i
        for name, s in ((loss, t_all), (val_loss, v_all or []))
        if (i := _first_nonfinite(s)) is not None
    }
    n = min(bad.values()) if bad else len(t_all)
    if bad:
        name = min(bad, key=bad.get)
        value = series[name][n]
        findings.append(_find("lr_too_high", n, f"{name} became {value} (the run diverged)"))
    t = t_all[:n]
    v = v_all[:n] if v_all is not None else None
    if len(t) < 3:
        return sorted(findings, key=lambda f: f.epoch)

    t_min = min(t)
    unstable = []  # (epoch, message) of each sign of a learning rate that is too high
    jump = next(
        (
            i
            for i in range(1, len(t))
            if t[i] > diverge_factor * min(t[:i]) > 0
            and t[i] - min(t[:i]) > osc_tol * (t[0] - min(t[:i]))
        ),
        None,
    )
    if jump is not None:
        unstable.append(
            (
                jump,
                f"{loss} jumps to {t[jump]:.4g}, over {diverge_factor:g}x its best so far "
                f"({min(t[:jump]):.4g})",
            )
        )
    for name, s in ((loss, t), (val_loss, v)):
        start = _oscillation_start(s, osc_tol, tol) if s is not None else None
        if start is not None:
            unstable.append((start, f"{name} oscillates epoch to epoch"))
    diverged = bool(unstable)
    if unstable:
        findings.append(_find("lr_too_high", *min(unstable)))

    overfit = False
    if v is not None:
        b = v.index(min(v))
        if b < len(v) - 1 and v[-1] > v[b] + overfit_tol * abs(v[b]):
            overfit = t[-1] < min(t[: b + 1]) and t[-1] < v[b]
            if overfit:
                message = (
                    f"{val_loss} is lowest at epoch {b} ({v[b]:.4g}) and climbs to {v[-1]:.4g} "
                    f"while {loss} keeps falling ({t[b]:.4g} -> {t[-1]:.4g})"
                )
                findings.append(_find("overfitting", b + 1, message))
            elif not diverged:  # worse on validation, no better on training: it degraded
                diverged = True
                message = (
                    f"the model got worse after epoch {b}: {val_loss} climbs from {v[b]:.4g} to "
                    f"{v[-1]:.4g} and {loss} ends at {t[-1]:.4g}, not below "
                    f"{min(min(t[: b + 1]), v[b]):.4g}"
                )
                findings.append(_find("lr_too_high", b + 1, message))

    underfit = False
    if t[0] - t_min < underfit_drop * abs(t[0]):
        underfit = True
        findings.append(
            _find(
                "underfitting",
                0,
                f"{loss} barely moves ({t[0]:.4g} -> best {t_min:.4g}, "
                f"less than {underfit_drop:.0%} lower)",
            )
        )
    elif min_accuracy is not None and accuracy in series:
        acc = [a for a in series[accuracy][:n] if math.isfinite(a)]
        if acc and max(acc) < min_accuracy:
            underfit = True
            findings.append(
                _find(
                    "underfitting",
                    0,
                    f"the best {accuracy} is {max(acc):.3g} < {min_accuracy}",
                )
            )

    trouble = diverged or overfit
    monitored, name = (v, val_loss) if v is not None else (t, loss)
    last = _last_improvement(monitored, tol)
    if not (trouble or underfit) and len(monitored) - 1 - last >= window:
        findings.append(
            _find(
                "plateau",
                last + 1,
                f"{name} has not improved by {tol:.0%} since epoch {last} "
                f"({len(monitored) - 1 - last} epochs)",
            )
        )
    elif not trouble and len(t) > window:
        # Falling in each of the last `window` epochs (train and val), fast enough to matter,
        # or at any speed when the model underfits (then the rate is the problem).
        start = max(_trailing_decrease_start(s) for s in (t, v) if s is not None)
        tail = t[-window - 1 :]
        rate = (tail[0] - tail[-1]) / (window * abs(tail[0])) if tail[0] else 0.0
        if start <= len(t) - 1 - window and (rate > tol or underfit):
            findings.append(
                _find(
                    "lr_too_low",
                    start,
                    f"{loss} is still falling steadily at the end ({rate:.1%} per epoch over "
                    f"the last {window} epochs)",
                )
            )
    return sorted(findings, key=lambda f: f.epoch)


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding, or a line saying none was found."""
    if not findings:
        return "no problems found: the curves look healthy."
    return "\n".join(str(f) for f in findings)
