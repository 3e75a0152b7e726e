"""The epoch loop: `fit` runs train/eval steps over data, drives callbacks, keeps `History`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import validation
from dlopt.lab.progress import EpochProgress
from dlopt.training.callback_list import CallbackList
from dlopt.training.callbacks import Callback
from dlopt.training.steps import (
    NUM_EXAMPLES,
    StepOptions,
    make_eval_step,
    make_train_step,
    with_loss_scale,
)


class History:
    """Per-epoch logs: one dict of floats per epoch (``"loss"``, ``"val_loss"``, metrics).

    ``history.history`` is Keras's view, a dict ``name -> list`` over epochs (``nan`` where an
    epoch lacks the name); ``to_dict``/``from_dict`` round-trip through JSON.

    Example:
        >>> from dlopt.training import History
        >>> h = History()
        >>> h.append({"loss": 0.5, "val_loss": 0.6})
        >>> h.history
        {'loss': [0.5], 'val_loss': [0.6]}
        >>> History.from_dict(h.to_dict()) == h
        True
    """

    def __init__(self, epochs: list[Mapping[str, float]] | None = None):
        self.epochs: list[dict[str, float]] = [
            {str(k): float(v) for k, v in e.items()} for e in (epochs or [])
        ]

    def append(self, logs: Mapping[str, Any]) -> None:
        """Records one epoch's logs (values converted to Python floats)."""
        self.epochs.append({str(k): float(v) for k, v in logs.items()})

    @property
    def history(self) -> dict[str, list[float]]:
        names: dict[str, None] = {}
        for e in self.epochs:
            names.update(dict.fromkeys(e))
        return {n: [e.get(n, math.nan) for e in self.epochs] for n in names}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict ``{"epochs": [{name: float}, ...]}``."""
        return {"epochs": [dict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """The inverse of `to_dict`."""
        return cls(list(d["epochs"]))

    def __len__(self) -> int:
        return len(self.epochs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        if len(self.epochs) != len(other.epochs):
            return False
        return all(
            a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
            for a, b in zip(self.epochs, other.epochs, strict=True)
        )

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"History(epochs={self.epochs!r})"


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


Data = Iterable[Any] | Callable[[int], Iterable[Any]]


class Resume(NamedTuple):
    """What a callback's ``resume(state, history)`` hook (`BackupAndRestore`) hands `fit`."""

    state: Any  # the restored training state
    history: History  # the History up to the saved epoch
    initial_epoch: int  # the first epoch to run
    stopped: bool  # a callback had stopped training: run no more epochs


def _epoch_batches(data: Data, epoch: int, name: str) -> Iterable[Any]:
    if callable(data) and not isinstance(data, Iterable):
        return data(epoch)
    if iter(data) is data and epoch > 0:
        raise ValueError(
            f"{name} is a one-shot iterator and was used up by epoch 0. Pass a list, a "
            f"re-iterable object, or a callable epoch -> iterable of batches."
        )
    return data


class _Mean:
    """Example-weighted running means of step metrics, summed on device (no host sync)."""

    def __init__(self) -> None:
        self.sums: dict[str, jax.Array] = {}
        self.count = jnp.zeros((), jnp.float32)

    def add(self, metrics: Mapping[str, jax.Array]) -> None:
        w = jnp.asarray(metrics[NUM_EXAMPLES], jnp.float32)
        self.count = self.count + w
        for k, v in metrics.items():
            if k != NUM_EXAMPLES:
                term = jnp.where(w > 0, jnp.asarray(v, jnp.float32) * w, jnp.float32(0.0))
                self.sums[k] = self.sums.get(k, jnp.zeros((), jnp.float32)) + term

    def result(self, prefix: str = "") -> dict[str, float]:
        count = float(self.count)
        names = sorted(self.sums, key=lambda k: (k != "loss", k))  # "loss" first
        return {prefix + k: float(self.sums[k]) / count if count else math.nan for k in names}


def evaluate(state: Any, data: Iterable[Any], eval_step: Callable[..., Any]) -> dict[str, float]:
    """Example-weighted means of ``eval_step``'s metrics over the batches of ``data``."""
    mean = _Mean()
    for batch in data:
        mean.add(eval_step(state, batch))
    return mean.result()


def fit(
    state: Any,
    train_data: Data,
    *,
    epochs: int,
    val_data: Data | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    loss_fn: Callable[..., Any] | None = None,
    train_step: Callable[..., Any] | None = None,
    eval_step: Callable[..., Any] | None = None,
    initial_epoch: int = 0,
    history: History | None = None,
    options: StepOptions | None = None,
) -> tuple[Any, History]:
    """Trains for epochs ``initial_epoch .. epochs - 1``; returns ``(state, history)``.

    Each epoch runs ``train_step`` over ``train_data`` and, with ``val_data``, ``eval_step``
    over it. The epoch's logs are example-weighted means (by ``"num_examples"``, the valid
    rows) of the steps' metrics: ``"loss"`` and the loss function's metrics, and their
    ``"val_"`` twins; exact for per-example means such as loss and accuracy. With a state
    that counts skipped steps (`TrainState`), ``"skipped_steps"`` is the number of the
    epoch's steps skipped (non-finite, or a spike skipped by `dlopt.skip_step_on_spikes`).
    Callbacks are driven through one `CallbackList`: ``prepare_state`` (before a backup is
    restored), ``resume``, ``on_train_begin``, ``on_epoch_begin``, ``on_train_batch_end``
    (only those whose ``uses_batch_hook`` is true, as it costs a host sync per batch),
    ``on_epoch_train_end`` (before validation), ``eval_state`` (the state validation runs
    on), ``on_epoch_end`` and ``on_train_end``, each returning the state; training stops
    after the batch or epoch in which a callback sets ``stop_training``.

    Args:
        state: the `TrainState` (replicated for a pmap step, sharded for a mesh step).
        train_data: a re-iterable of batches (a list, a loader), or a callable
            ``epoch -> iterable`` (for shuffling per epoch); batches go to the step as is.
        epochs: the index one past the last epoch to run (as in Keras).
        val_data: batches for the validation metrics, same forms as ``train_data``.
        callbacks: `Callback` objects, called in order.
        progress: on a terminal a tqdm bar with the running loss and examples/s, elsewhere
            one plain line per epoch (`dlopt.lab.progress.EpochProgress`); False: nothing.
        loss_fn: builds ``train_step``/``eval_step`` with `make_train_step`/`make_eval_step`
            when those are not given.
        train_step: ``(state, batch) -> (state, metrics)``, e.g. from `make_pmap_train_step`.
        eval_step: ``(state, batch) -> metrics``.
        initial_epoch: the first epoch to run (to resume a run by hand).
        history: the `History` to append to (to resume); default a new one. A resume by a
            callback refills it in place with the saved epochs.
        options: the `StepOptions` of the train step built from ``loss_fn`` (not with
            ``train_step=``, whose builder takes them). With a ``loss_scale`` policy, the
            state gets its loss-scale state before any callback (a backup restores into it):
            the policy is given once, here.

    Returns:
        ``(state, history)``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.training import EarlyStopping, TrainState, fit
        >>> def loss_fn(params, batch, *, model_state, rng, train):
        ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2)
        >>> state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(())},
        ...                           tx=dlopt.sgd(0.1), rng=0)
        >>> batches = [{"x": jnp.ones(4), "y": jnp.full(4, 2.0)}] * 3
        >>> state, history = fit(state, batches, epochs=5, val_data=batches[:1],
        ...                      loss_fn=loss_fn, callbacks=[EarlyStopping(patience=2)],
        ...                      progress=False)
        >>> len(history.history["loss"]), round(float(state.params["w"]), 2)
        (5, 1.93)
    """
    validation.check_int("epochs", epochs, 0)
    train_step, eval_step = _steps(loss_fn, train_step, eval_step, options)
    if val_data is not None and eval_step is None:
        raise ValueError("val_data needs eval_step= or loss_fn= to evaluate it.")
    if options is not None:
        state = with_loss_scale(state, options.loss_scale)
    history = History() if history is None else history
    shown = EpochProgress(epochs, enabled=progress)
    run = CallbackList(callbacks)

    state = run.prepare_state(state)
    resumed = run.resume(state, history)
    if resumed is not None:
        state, initial_epoch = resumed.state, resumed.initial_epoch
    state = run.on_train_begin(state, history)
    last = initial_epoch if resumed is not None and resumed.stopped else epochs
    for epoch in range(initial_epoch, last):
        state = run.on_epoch_begin(epoch, state, history)
        state, logs = _train_epoch(state, train_data, epoch, train_step, run, shown)
        state = run.on_epoch_train_end(epoch, state, history)
        if val_data is not None:
            val = _epoch_batches(val_data, epoch, "val_data")
            val_state = run.eval_state(epoch, state)
            logs.update({f"val_{k}": v for k, v in evaluate(val_state, val, eval_step).items()})
        history.append(logs)
        shown.epoch_end(epoch, logs)
        state = run.on_epoch_end(epoch, state, history, logs)
        if run.stop_training:
            break
    return run.on_train_end(state, history), history


def _steps(loss_fn, train_step, eval_step, options):
    """``fit``'s train and eval steps: the given ones, or built from ``loss_fn``."""
    if train_step is None:
        if loss_fn is None:
            raise ValueError("fit needs loss_fn= or train_step=, got neither.")
        train_step = make_train_step(loss_fn, options=options)
    elif options is not None:
        raise ValueError(
            "options= sets up the train step fit builds from loss_fn=; with train_step= pass "
            "them to its builder (make_train_step(loss_fn, options=...)) instead."
        )
    if eval_step is None and loss_fn is not None:
        eval_step = make_eval_step(loss_fn)
    return train_step, eval_step


def skipped_count(state: Any) -> int | None:
    """``state.skipped_steps`` as an int (a pmap state: the first replica's), or None for a
    state without the count."""
    count = getattr(state, "skipped_steps", None)
    if count is None:
        return None
    if isinstance(count, jax.Array) and not count.is_fully_addressable:
        count = count.addressable_data(0)  # a multi-host mesh state: replicated
    return int(np.asarray(count).reshape(-1)[0])


def _train_epoch(state, train_data, epoch, train_step, run, shown):
    """One epoch of train steps: ``(state, logs)``, the logs their example-weighted means
    and ``"skipped_steps"``, the steps of the epoch the state counts as skipped."""
    batches = _epoch_batches(train_data, epoch, "train_data")
    skipped_before = skipped_count(state)  # read now: the step donates the state's buffers
    shown.epoch_begin(epoch, _len(batches))
    mean, i = _Mean(), -1
    for i, batch in enumerate(batches):
        state, metrics = train_step(state, batch)
        mean.add(metrics)
        if shown.per_batch:
            shown.batch_end(metrics["loss"], metrics[NUM_EXAMPLES])
        if run.uses_batch_hook:
            logs = {k: float(v) for k, v in metrics.items() if k != NUM_EXAMPLES}
            state = run.on_train_batch_end(i, state, logs)
            if run.stop_training:
                break
    if i < 0:
        raise ValueError(
            f"train_data gave no batches in epoch {epoch + 1}; pass a non-empty list or "
            "loader of batches (or a callable epoch -> iterable that yields some)."
        )
    logs = mean.result()
    if skipped_before is not None:
        logs["skipped_steps"] = float(skipped_count(state) - skipped_before)
    return state, logs


def _len(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None
