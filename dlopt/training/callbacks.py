"""Keras-like epoch callbacks for `fit`: early stopping, LR reduction on plateau, NaN guard.

A callback sees the `TrainState`, the `History` so far and the epoch's ``logs`` (``"loss"``,
``"val_loss"``, metric names and their ``"val_"`` twins), and returns the (possibly new) state.
Setting ``stop_training = True`` ends `fit` after the current epoch.
"""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class: every hook is optional and returns the (possibly replaced) state.

    Attributes:
        stop_training: set to True to make `fit` stop after the current epoch.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_epoch_end(self, epoch, state, history, logs):
        ...         print(epoch, logs["loss"])
        ...         return state
    """

    stop_training: bool = False

    def on_train_begin(self, state: Any, history: Any) -> Any:
        """Called once before the first epoch."""
        del history
        return state

    def on_epoch_begin(self, epoch: int, state: Any, history: Any) -> Any:
        """Called at the start of every epoch (0-based ``epoch``)."""
        del epoch, history
        return state

    def on_epoch_end(self, epoch: int, state: Any, history: Any, logs: dict[str, float]) -> Any:
        """Called after every epoch, once ``logs`` holds its train and validation numbers."""
        del epoch, history, logs
        return state

    def on_train_end(self, state: Any, history: Any) -> Any:
        """Called once after the last epoch (also after an early stop)."""
        del history
        return state
