"""Breast-cancer MLP: Dense 100 relu -> 24 relu -> 1 sigmoid, binary cross-entropy, Adam.

scikit-learn's bundled Wisconsin breast-cancer data, offline through `dlopt.data`: its fixed
stratified 80/20 train/test split, then 20% of the training part held out (stratified) for
validation; features standardized with the training statistics (``dlopt.data.Standardizer``).
Batches of 32 come from ``dlopt.data.batches``, reshuffled each epoch; the last one is padded to
full size with a ``"mask"`` that the loss and metrics use as example weights. `fit` trains
with EarlyStopping (on val_loss, best weights restored) and a best-only ModelCheckpoint; the
best checkpoint is then restored and scored on the test set with `dlopt.metrics`: accuracy,
precision, recall, F1 and the confusion matrix.

The last layer's sigmoid is folded into the loss (``log_sigmoid`` of the logit, the stable
form of binary cross-entropy); predictions are ``sigmoid(logit) > 0.5``.

Run: ``python examples/breast_cancer_mlp.py [--epochs 200] [--checkpoint-dir DIR]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import dlopt
from dlopt import data, metrics
from dlopt.training import EarlyStopping, TrainState, fit
from dlopt.training.checkpoint import ModelCheckpoint, restore

BATCH_SIZE = 32


class MLP(nn.Module):
    """Dense 100 relu -> Dense 24 relu -> Dense 1 (the logit of a sigmoid output)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(100)(x))
        x = nn.relu(nn.Dense(24)(x))
        return nn.Dense(1)(x)[:, 0]


def binary_cross_entropy(logits, labels, mask):
    """Masked mean of ``-[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))]``."""
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    per_example = -(labels * log_p + (1 - labels) * log_not_p)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def loss_fn(params, batch, *, model_state, rng, train):
    """dlopt's loss contract: masked binary cross-entropy, plus a masked accuracy metric."""
    del rng, train
    logits = MLP().apply({"params": params}, batch["x"])
    mask = batch["mask"].astype(jnp.float32)  # dlopt.data.batches gives a boolean mask
    hits = (metrics.labels_from_logits(logits) == batch["y"].astype(jnp.int32)).astype(jnp.float32)
    accuracy = jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    loss = binary_cross_entropy(logits, batch["y"], mask)
    return loss, {"model_state": model_state, "metrics": {"accuracy": accuracy}}


def load_splits(seed: int = 0):
    """Standardized float32 (x, y) for train, validation and test (stratified splits)."""
    train, test = (data.load("breast_cancer", split) for split in ("train", "test"))
    (x_train, y_train), _, (x_val, y_val) = data.train_val_test_split(
        train["features"], train["label"], val=0.0, test=0.2, seed=seed
    )
    scaler = data.Standardizer().fit(x_train)
    return [
        (np.asarray(scaler.transform(a), np.float32), b.astype(np.float32))
        for a, b in ((x_train, y_train), (x_val, y_val), (test["features"], test["label"]))
    ]


def batches(x, y, batch_size=BATCH_SIZE, *, epoch=None):
    """A list of ``{"x", "y", "mask"}`` batches from ``dlopt.data.batches``: reshuffled per
    ``epoch`` (in order when None), the short last batch padded to full size and masked."""
    xy = {"x": x, "y": y}
    return list(data.batches(xy, batch_size, epoch=epoch or 0, shuffle=epoch is not None, pad=True))


def make_state(num_features: int, seed: int = 0) -> TrainState:
    params = MLP().init(jax.random.key(seed), jnp.ones((1, num_features)))["params"]
    return TrainState.create(apply_fn=MLP().apply, params=params, tx=dlopt.adam(1e-3), rng=seed)


def test_report(params, x, y) -> dict:
    """Test-set accuracy, precision, recall, F1 (binary, positive class 1) and confusion."""
    y_pred = metrics.labels_from_logits(MLP().apply({"params": params}, jnp.asarray(x)))
    y_true = jnp.asarray(y).astype(jnp.int32)
    return {
        "accuracy": float(metrics.accuracy(y_true, y_pred)),
        "precision": float(metrics.precision(y_true, y_pred, num_classes=2)),
        "recall": float(metrics.recall(y_true, y_pred, num_classes=2)),
        "f1": float(metrics.f1_score(y_true, y_pred, num_classes=2)),
        "confusion": np.asarray(metrics.confusion_matrix(y_true, y_pred, 2)),
    }


def print_report(report: dict) -> None:
    print(
        f"test accuracy {report['accuracy']:.4f}  precision {report['precision']:.4f}  "
        f"recall {report['recall']:.4f}  F1 {report['f1']:.4f}"
    )
    print("confusion matrix (rows: true malignant=0 / benign=1, columns: predicted):")
    print(report["confusion"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--checkpoint-dir", default=None)
    args = parser.parse_args(argv)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_splits()
    print(f"train {len(x_train)}, validation {len(x_val)}, test {len(x_test)} examples")
    state = make_state(x_train.shape[1])
    directory = args.checkpoint_dir or tempfile.mkdtemp(prefix="breast_cancer_ckpt_")
    callbacks = [
        EarlyStopping(monitor="val_loss", patience=args.patience, restore_best=True),
        ModelCheckpoint(directory, monitor="val_loss", mode="min", save_best_only=True),
    ]
    start = time.perf_counter()
    state, history = fit(
        state,
        lambda epoch: batches(x_train, y_train, epoch=epoch),
        epochs=args.epochs,
        val_data=batches(x_val, y_val),
        loss_fn=loss_fn,
        callbacks=callbacks,
    )
    last = history.epochs[-1]
    print(
        f"{len(history)} epochs in {time.perf_counter() - start:.1f} s; last: loss "
        f"{last['loss']:.4f}, val_loss {last['val_loss']:.4f}, val_accuracy "
        f"{last['val_accuracy']:.4f}"
    )
    best, best_history = restore(directory, target=state)
    best_epoch = int(np.nanargmin(best_history.history["val_loss"])) + 1
    print(f"restored the best checkpoint from {directory}: epoch {best_epoch}")
    report = test_report(best.params, x_test, y_test)
    print_report(report)
    return report


if __name__ == "__main__":
    main()
