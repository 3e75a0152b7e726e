"""`CallbackList`: a run's callbacks behind one object, one method per hook (Keras's).

`fit` talks to its callbacks only through this: each method calls that hook on every
callback in order, threading the state through their return values. Every hook is optional
on a callback (duck typing: a hook a callback lacks is passed over), so any object with some
of `dlopt.training.Callback`'s methods works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class CallbackList:
    """The run's callbacks, dispatched hook by hook (`fit` builds one).

    Building it hands every callback the whole list (``set_callbacks``). ``on_epoch_end``
    runs in increasing ``epoch_end_order`` (stable), so `ModelCheckpoint` and
    `BackupAndRestore` save after every other callback's update of the epoch;
    ``on_train_batch_end`` reaches only callbacks whose ``uses_batch_hook`` is true (it costs
    a host sync per batch).

    Example:
        >>> from dlopt.training import CallbackList
        >>> from dlopt.training import Callback
        >>> callbacks = CallbackList([Callback()])
        >>> callbacks.on_train_begin("state", None), callbacks.stop_training
        ('state', False)
    """

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks = tuple(callbacks)
        for cb in self.callbacks:
            if callable(getattr(cb, "set_callbacks", None)):
                cb.set_callbacks(self.callbacks)
        self._batch = tuple(cb for cb in self.callbacks if getattr(cb, "uses_batch_hook", False))
        self._epoch_end = tuple(
            sorted(self.callbacks, key=lambda cb: getattr(cb, "epoch_end_order", 0))
        )

    def _each(
        self,
        name: str,
        state: Any,
        call: Callable[[Callable[..., Any], Any], Any],
        callbacks: tuple[Any, ...] | None = None,
    ) -> Any:
        for cb in self.callbacks if callbacks is None else callbacks:
            hook = getattr(cb, name, None)
            if callable(hook):
                state = call(hook, state)
        return state

    @property
    def uses_batch_hook(self) -> bool:
        """Whether any callback needs `on_train_batch_end`."""
        return bool(self._batch)

    @property
    def stop_training(self) -> bool:
        """Whether a callback has asked `fit` to stop."""
        return any(getattr(cb, "stop_training", False) for cb in self.callbacks)

    def prepare_state(self, state: Any) -> Any:
        """Each callback's ``prepare_state`` (before a backup is restored)."""
        return self._each("prepare_state", state, lambda hook, s: hook(s))

    def resume(self, state: Any, history: Any) -> Any:
        """Each callback's ``resume(state, history)``; the last `dlopt.training.Resume` one
        returned (None if none did). A resume refills ``history`` in place, and the next
        callback sees the restored state."""
        last = None
        for cb in self.callbacks:
            hook = getattr(cb, "resume", None)
            resumed = hook(state, history) if callable(hook) else None
            if resumed is not None:
                last, state = resumed, resumed.state
                history.epochs[:] = resumed.history.epochs
        return last

    def on_train_begin(self, state: Any, history: Any) -> Any:
        return self._each("on_train_begin", state, lambda hook, s: hook(s, history))

    def on_epoch_begin(self, epoch: int, state: Any, history: Any) -> Any:
        return self._each("on_epoch_begin", state, lambda hook, s: hook(epoch, s, history))

    def on_train_batch_end(self, batch: int, state: Any, logs: dict[str, float]) -> Any:
        call = lambda hook, s: hook(batch, s, logs)  # noqa: E731
        return self._each("on_train_batch_end", state, call, self._batch)

    def on_epoch_train_end(self, epoch: int, state: Any, history: Any) -> Any:
        return self._each("on_epoch_train_end", state, lambda hook, s: hook(epoch, s, history))

    def eval_state(self, epoch: int, state: Any) -> Any:
        return self._each("eval_state", state, lambda hook, s: hook(epoch, s))

    def on_epoch_end(self, epoch: int, state: Any, history: Any, logs: dict[str, float]) -> Any:
        call = lambda hook, s: hook(epoch, s, history, logs)  # noqa: E731
        return self._each("on_epoch_end", state, call, self._epoch_end)

    def on_train_end(self, state: Any, history: Any) -> Any:
        return self._each("on_train_end", state, lambda hook, s: hook(s, history))
