"""Helpers of the classic experiments, shared by the ``dlopt demo`` command and ``examples/``.

A flat, standardized classification set (through `dlopt.data`), its per-epoch batches, a small
Flax MLP, the cross-entropy loss in the `dlopt.training` contract, and one call that fits a
model and scores it on the test split. Needs Flax (the ``flax`` extra) and scikit-learn or
TFDS for the data (the ``data`` extra).

Example:
    >>> import dlopt
    >>> from dlopt.lab.experiments import load_dataset, mlp, train_classifier
    >>> data = load_dataset("digits", limit=300)
    >>> data["train"][0].shape, data["test"][0].shape
    ((300, 64), (270, 64))
    >>> # ~10 s of CPU (mostly compiling), too slow to run with the docstrings:
    >>> result = train_classifier(  # doctest: +SKIP
    ...     dlopt.adam(1e-2), data, model=mlp((64,)), epochs=5)
    >>> round(result["test_accuracy"], 2)  # doctest: +SKIP
    0.89
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import dlopt
from dlopt import data as data_lib

DATASETS: dict[str, tuple[str | None, str]] = {
    # name -> (the split `dlopt.data.load` reads, description)
    "digits": (None, "scikit-learn digits (8x8, offline)"),
    "mnist": ("train+test", "TFDS MNIST (28x28)"),
}
"""Names ``load_dataset`` takes: the offline digits and TFDS MNIST (downloaded beforehand)."""


def load_dataset(name: str = "digits", *, limit: int | None = None, seed: int = 0) -> dict:
    """Train/val/test splits of a classification set as flat, standardized float32 features.

    The whole set (``dlopt.data.load``; MNIST's train and test splits pooled) is split 70/15/15,
    stratified, with ``dlopt.data.train_val_test_split``; ``limit`` then caps the training
    examples, and a ``dlopt.data.Standardizer`` fitted on that training part scales all three.

    Args:
      name: ``"digits"`` (scikit-learn's 8x8 digits, offline) or ``"mnist"`` (TFDS MNIST; it
        must be downloaded already).
      limit: the most training examples to keep (None keeps all).
      seed: seed of the split.

    Returns:
      ``{"train": (x, y), "val": (x, y), "test": (x, y), "source": description}`` with ``x``
      float32 of shape ``(n, features)`` and ``y`` int32 class ids.

    Raises:
      ValueError: an unknown ``name``.
      dlopt.data.DatasetUnavailableError: MNIST is not downloaded (the loader never fetches).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset name={name!r}; choose from {list(DATASETS)}.")
    split, source = DATASETS[name]
    arrays = data_lib.load(name, split)
    x = np.asarray(arrays["image"], np.float32).reshape(len(arrays["image"]), -1)
    train, val, test = data_lib.train_val_test_split(
        x, arrays["label"], val=0.15, test=0.15, seed=seed
    )
    if limit is not None:
        train = (train[0][:limit], train[1][:limit])
    scaler = data_lib.Standardizer().fit(train[0])
    scale = lambda xy: (np.asarray(scaler.transform(xy[0]), np.float32), xy[1])  # noqa: E731
    return {"train": scale(train), "val": scale(val), "test": scale(test), "source": source}


def epoch_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> Callable[[int], Iterable[dict[str, np.ndarray]]]:
    """``epoch -> {"x", "y"} batches`` from ``dlopt.data.batches``, for `dlopt.training.fit`.

    Each epoch is reshuffled (seed ``[seed, epoch]``) and its last partial batch dropped (all
    batches one shape, one compile), unless there are fewer than ``batch_size`` examples: then
    the one short batch. ``augment(x_batch, numpy_rng) -> x_batch`` is applied to each batch
    when given, with a numpy generator seeded ``[seed, epoch, 1]``.
    """
    arrays = {"x": x, "y": y}

    def batches_of(epoch: int) -> Iterable[dict[str, np.ndarray]]:
        out = data_lib.batches(
            arrays, batch_size, seed=seed, epoch=epoch, drop_remainder=len(x) >= batch_size
        )
        if augment is None:
            return out
        rng = np.random.default_rng([seed, epoch, 1])
        return ({**b, "x": augment(b["x"], rng)} for b in out)

    return batches_of


def mlp(
    hidden: Sequence[int] = (128, 64),
    num_classes: int = 10,
    *,
    dropout: float = 0.0,
    batch_norm: bool = False,
    kernel_init: Any = None,
    activation: Any = None,
) -> Any:
    """A Flax linen MLP: ``[Dense, (BatchNorm), activation, (Dropout)] * len(hidden), Dense``."""
    import flax.linen as nn

    act = activation or jax.nn.relu
    dense = (lambda n: nn.Dense(n, kernel_init=kernel_init)) if kernel_init else nn.Dense

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            for n in hidden:
                x = dense(n)(x)
                if batch_norm:
                    x = nn.BatchNorm(use_running_average=not train)(x)
                x = act(x)
                if dropout:
                    x = nn.Dropout(dropout, deterministic=not train)(x)
            return dense(num_classes)(x)

    return MLP()


def classifier_loss(model: Any, *, l2: float = 0.0) -> Callable:
    """The `dlopt.training` loss: mean cross-entropy (+ ``l2_penalty`` on the weights); metrics
    ``accuracy`` and, with ``l2``, ``cross_entropy`` (the loss without the penalty)."""

    def loss_fn(params, batch, *, model_state, rng, train):
        variables = {"params": params, **model_state}
        mutable = ["batch_stats"] if (train and model_state) else False
        out = model.apply(
            variables, batch["x"], train=train, rngs={"dropout": rng}, mutable=mutable
        )
        logits, new_state = out if mutable else (out, {"model_state": model_state})
        new_state = {"model_state": {**model_state, **new_state}} if mutable else new_state
        logp = jax.nn.log_softmax(logits)
        xent = -jnp.mean(jnp.take_along_axis(logp, batch["y"][:, None], axis=-1))
        loss = xent + dlopt.l2_penalty(params, l2, mask=dlopt.weights_only) if l2 else xent
        acc = jnp.mean((jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32))
        metrics = {"accuracy": acc, "cross_entropy": xent} if l2 else {"accuracy": acc}
        return loss, {**new_state, "metrics": metrics}

    return loss_fn


def train_classifier(
    tx: Any,
    data: dict,
    *,
    model: Any,
    epochs: int,
    batch_size: int = 64,
    l2: float = 0.0,
    patience: int | None = None,
    seed: int = 0,
    augment: Callable | None = None,
    on_epoch: Callable | None = None,
    flat: bool | None = None,
) -> dict[str, Any]:
    """Fits ``model`` with ``tx`` on ``data`` (from `load_dataset`); returns the history, test
    accuracy and macro F1 (with ``patience``: of the best-val-loss weights, restored also when
    the run was not stopped early), the ``best_epoch`` (lowest val loss, counted from 1 as
    `fit`'s log counts), epochs, seconds.

    ``flat``: the layout, as `TrainState.create`'s ``flat`` (None: flat where it is faster;
    both layouts give the same parameters)."""
    from dlopt import metrics
    from dlopt.training import EarlyStopping, LambdaCallback, TrainState, fit

    x_train, y_train = data["train"]
    variables = model.init(jax.random.key(seed), jnp.asarray(x_train[:2]))
    params, model_state = variables.pop("params"), dict(variables)
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=tx,
        rng=seed,
        model_state=model_state,
        flat=flat,
    )
    callbacks = [LambdaCallback(on_epoch_end=on_epoch)] if on_epoch else []
    stop = None
    if patience is not None:
        stop = EarlyStopping("val_loss", patience=patience, restore_best=True)
        callbacks.append(stop)
    val = [{"x": data["val"][0], "y": data["val"][1]}]
    start = time.perf_counter()
    state, history = fit(
        state,
        epoch_batches(x_train, y_train, batch_size, seed=seed, augment=augment),
        epochs=epochs,
        val_data=val,
        loss_fn=classifier_loss(model, l2=l2),
        callbacks=callbacks,
        progress=False,
    )
    seconds = time.perf_counter() - start
    if stop is not None and not stop.stop_training and stop.best_weights is not None:
        params, model_state = stop.best_weights  # not stopped: the best epoch's weights too
        state = state.replace(params=params, model_state=model_state)
    x_test, y_test = data["test"]
    logits = model.apply({"params": state.params, **state.model_state}, x_test, train=False)
    y_pred, y_true = jnp.argmax(logits, -1), jnp.asarray(y_test)
    val_loss = np.asarray(history.history["val_loss"], np.float64)
    num_classes = int(logits.shape[-1])
    return {
        "history": history,
        "test_accuracy": float(metrics.accuracy(y_true, y_pred)),
        "test_f1": float(
            metrics.f1_score(y_true, y_pred, num_classes=num_classes, average="macro")
        ),
        # counted from 1; the first epoch when every val loss is NaN (a diverged run)
        "best_epoch": int(np.nanargmin(val_loss)) + 1 if np.isfinite(val_loss).any() else 1,
        "epochs": len(history),
        "seconds": seconds,
    }
