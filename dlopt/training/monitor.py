"""Monitored values: which way a logs entry improves, reading it, and comparing two values.

Shared by the callbacks that watch ``logs[monitor]`` (`EarlyStopping`, `ReduceLROnPlateau`,
`ModelCheckpoint`), and usable by your own.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

from dlopt.core import validation


def resolve_mode(mode: str, monitor: str) -> str:
    """``"min"`` or ``"max"``: ``mode``, or for ``"auto"`` (Keras's rule) ``"max"`` when
    ``monitor`` names an accuracy (contains ``"acc"``) or ends in ``"auc"``, else ``"min"``.

    Example:
        >>> from dlopt.training.monitor import resolve_mode
        >>> resolve_mode("auto", "val_accuracy"), resolve_mode("auto", "val_loss")
        ('max', 'min')
    """
    validation.check_choice("mode", mode, ("min", "max", "auto"))
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


def monitored_value(logs: Mapping[str, float], monitor: str, who: str) -> float | None:
    """``logs[monitor]`` as a float, or None with a warning naming ``who`` when it is missing
    (the epoch is then skipped, as in Keras)."""
    if monitor not in logs:
        warnings.warn(
            f"{who}: monitor={monitor!r} is not in the logs (available: {sorted(logs)}); "
            "skipping this epoch. Pass val_data to fit for 'val_*' monitors.",
            stacklevel=3,
        )
        return None
    return float(logs[monitor])


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in ``mode`` (``"min"``:
    ``value < best - min_delta``). Any number beats ``best=None``; NaN never improves.

    Example:
        >>> from dlopt.training.monitor import improves
        >>> improves(0.5, 0.6, "min"), improves(0.5, 0.6, "max"), improves(0.5, None, "max")
        (True, False, True)
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta
