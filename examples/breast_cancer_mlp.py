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

The checkpoints go to a temporary folder that is removed at the end, unless
``--checkpoint-dir`` names one to keep.

Run: ``python examples/breast_cancer_mlp.py [--epochs 200] [--checkpoint-dir DIR]`` (about
20 s on 2 CPU cores); writes ``examples/figures/breast_cancer_mlp.png`` (loss and accuracy
curves with the restored epoch, the test confusion matrix).
"""

from __future__ import annotations

import argparse
import contextlib
import os
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

OUT = os.path.join(os.path.dirname(__file__), "figures")
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


def plot_run(history, best_epoch: int, confusion, path: str) -> None:
    """Loss and accuracy per epoch (the restored epoch marked) and the confusion matrix."""
    from matplotlib.figure import Figure

    from dlopt.lab.plots import save

    h = history.history
    fig = Figure(figsize=(11, 3.2))
    loss_ax, acc_ax, cm_ax = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1.3, 0.8]})
    epochs = range(1, len(history) + 1)
    for ax, key, label in (
        (loss_ax, "loss", "binary cross-entropy"),
        (acc_ax, "accuracy", "accuracy"),
    ):
        ax.plot(epochs, h[key], "-", color="C0", label="train")
        ax.plot(epochs, h[f"val_{key}"], "--", color="C1", label="validation")
        ax.axvline(best_epoch, color="0.5", lw=0.8, ls=":", label=f"restored (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    loss_ax.set_yscale("log")
    loss_ax.legend(fontsize=8)
    acc_ax.set_ylim(0.9, 1.005)  # the first epochs (from 0.6) are below; the run is above 0.9
    acc_ax.set_title("accuracy (y from 0.9)", fontsize=9)
    loss_ax.set_title("loss", fontsize=9)
    cm = np.asarray(confusion)
    cm_ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        cm_ax.text(j, i, str(int(n)), ha="center", va="center",
                   color="white" if n > cm.max() / 2 else "black")  # fmt: skip
    names = ["malignant", "benign"]
    cm_ax.set_xticks([0, 1], names)
    cm_ax.set_yticks([0, 1], names)
    cm_ax.set_xlabel("predicted")
    cm_ax.set_ylabel("true")
    cm_ax.set_title(f"test set ({int(cm.sum())} examples)", fontsize=9)
    fig.suptitle("breast-cancer MLP: Adam 1e-3, early stopping on val_loss", fontsize=10)
    fig.tight_layout()
    save(fig, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--checkpoint-dir", default=None, help="keep the checkpoints here")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_splits()
    print(f"train {len(x_train)}, validation {len(x_val)}, test {len(x_test)} examples")
    with contextlib.ExitStack() as stack:
        directory = args.checkpoint_dir or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="breast_cancer_ckpt_")
        )
        state, history, best, best_history = train_and_restore(
            make_state(x_train.shape[1]), (x_train, y_train), (x_val, y_val), directory, args
        )
    best_epoch = int(np.nanargmin(best_history.history["val_loss"])) + 1
    where = f" from {directory}" if args.checkpoint_dir else ""
    print(f"restored the best checkpoint{where}: epoch {best_epoch}")
    report = test_report(best.params, x_test, y_test)
    print_report(report)
    path = os.path.join(OUT, "breast_cancer_mlp.png")
    plot_run(history, best_epoch, report["confusion"], path)
    print(f"wrote {path}")
    return report


def train_and_restore(state, train, val, directory, args):
    """`fit` with early stopping and a best-only checkpoint, then the best checkpoint restored."""
    callbacks = [
        EarlyStopping(monitor="val_loss", patience=args.patience, restore_best=True),
        ModelCheckpoint(directory, monitor="val_loss", mode="min", save_best_only=True),
    ]
    start = time.perf_counter()
    state, history = fit(
        state,
        lambda epoch: batches(*train, epoch=epoch),
        epochs=args.epochs,
        val_data=batches(*val),
        loss_fn=loss_fn,
        callbacks=callbacks,
    )
    last = history.epochs[-1]
    print(
        f"{len(history)} epochs in {time.perf_counter() - start:.1f} s; last: loss "
        f"{last['loss']:.4f}, val_loss {last['val_loss']:.4f}, val_accuracy "
        f"{last['val_accuracy']:.4f}"
    )
    best, best_history = restore(directory, target=state)  # quietly
    return state, history, best, best_history


if __name__ == "__main__":
    main()
