"""The breast-cancer MLP trained data-parallel on 8 fake CPU devices, checked against 1 device.

Same model, data and loss as ``breast_cancer_mlp.py``. The batch is sharded over a
``jax.make_mesh`` mesh of 8 CPU devices (params replicated, optionally the Adam state sharded
ZeRO-1 style with ``--zero1``) and the train step is the one-device step compiled for the
global arrays. The uneven last batch is padded to the full 32 rows (``dlopt.data.batches``,
a multiple of 8) and masked. The test-set
metrics are summed over sharded batches in a streaming `dlopt.metrics.ConfusionMatrix`
(padding masked by ``sample_weight``). The same run on one device must give the same params
up to float rounding; the script prints the largest difference.

Run: ``python examples/data_parallel_mlp.py [--epochs 30] [--zero1]`` (about 20 s on 2 CPU
cores); writes ``examples/figures/data_parallel_mlp.png``: both runs' curves, and each
parameter's largest difference between them next to float32 rounding.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_num_cpu_devices", 8)  # before JAX starts its CPU backend

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from breast_cancer_mlp import MLP, batches, load_splits, loss_fn, make_state  # noqa: E402

from dlopt import metrics  # noqa: E402
from dlopt.lab.plots import save  # noqa: E402
from dlopt.training import (  # noqa: E402
    fit,
    make_eval_step,
    make_mesh,
    make_mesh_eval_step,
    make_mesh_train_step,
    make_train_step,
    shard_batch,
    shard_state,
)

NUM_DEVICES = 8
OUT = os.path.join(os.path.dirname(__file__), "figures")


def train(state, data, epochs, *, train_step, eval_step, place=lambda b: b):
    (x_train, y_train), (x_val, y_val) = data
    val = [place(b) for b in batches(x_val, y_val)]
    start = time.perf_counter()
    state, history = fit(
        state,
        lambda epoch: [place(b) for b in batches(x_train, y_train, epoch=epoch)],
        epochs=epochs,
        val_data=val,
        train_step=train_step,
        eval_step=eval_step,
        progress=False,
    )
    return state, history, time.perf_counter() - start


@jax.jit
def add_batch(acc: metrics.ConfusionMatrix, params, batch) -> metrics.ConfusionMatrix:
    """Adds one (sharded) batch's predictions to the streaming confusion matrix."""
    y_pred = metrics.labels_from_logits(MLP().apply({"params": params}, batch["x"]))
    y_true = batch["y"].astype(jnp.int32)
    return acc.update(y_true, y_pred, sample_weight=batch["mask"].astype(jnp.float32))


def plot_comparison(histories: dict, params: dict, path: str) -> None:
    """Loss curves of both runs, and per parameter the largest relative difference."""
    from jax.tree_util import keystr, tree_flatten_with_path
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.4))
    curves, diffs = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    for (name, history), style in zip(histories.items(), ("-", "--"), strict=True):
        h = history.history
        epochs = range(1, len(h["loss"]) + 1)  # counted from 1, as fit's log counts
        curves.plot(epochs, h["loss"], style, color="C0", label=f"train, {name}")
        curves.plot(epochs, h["val_loss"], style, color="C1", label=f"validation, {name}")
    curves.set_yscale("log")
    ticks = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    curves.set_yticks(ticks, [f"{t:g}" for t in ticks])
    curves.minorticks_off()
    curves.set_xlabel("epoch")
    curves.set_ylabel("binary cross-entropy")
    curves.set_title("the two runs' curves (they coincide)", fontsize=9)
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    many, one = params.values()
    leaves = tree_flatten_with_path(many)[0]
    names = [keystr(p).replace("['", "").replace("']", "/").rstrip("/") for p, _ in leaves]
    relative = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))
        for a, b in zip(jax.tree.leaves(many), jax.tree.leaves(one), strict=True)
    ]
    rows = np.arange(len(names))
    diffs.barh(rows, np.maximum(relative, 1e-12), color="C2")
    eps = float(np.finfo(np.float32).eps)
    diffs.axvline(eps, color="k", lw=0.8, ls="--")
    diffs.text(eps, len(names) - 0.45, " float32 eps", fontsize=7, va="bottom")
    diffs.axvline(1e-4, color="C3", lw=0.8, ls=":")
    diffs.text(1e-4, len(names) - 0.45, " the check's rtol", fontsize=7, va="bottom", color="C3")
    diffs.set_xscale("log")
    diffs.set_xlim(1e-10, 1e-3)
    diffs.set_ylim(-0.6, len(names) + 0.2)
    diffs.set_yticks(rows, names, fontsize=8)
    diffs.set_xlabel("max |8 devices - 1 device| / max |param|, after the last epoch", fontsize=8)
    diffs.set_title("parameter differences: accumulated float rounding", fontsize=9)
    fig.suptitle(
        f"breast-cancer MLP data-parallel on {NUM_DEVICES} CPU devices vs one device", fontsize=10
    )
    fig.tight_layout()
    save(fig, path)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--zero1", action="store_true", help="shard the Adam state (ZeRO-1)")
    args = parser.parse_args(argv)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_splits()
    data = ((x_train, y_train), (x_val, y_val))
    mesh = make_mesh(NUM_DEVICES)
    print(f"{jax.device_count()} devices: {[str(d) for d in jax.devices()]}")
    print(f"mesh {dict(mesh.shape)}, global batch 32 split 4 per device, ZeRO-1: {args.zero1}")

    state = shard_state(make_state(x_train.shape[1]), mesh, shard_opt_state=args.zero1)
    state, history, seconds = train(
        state,
        data,
        args.epochs,
        train_step=make_mesh_train_step(loss_fn, mesh=mesh, shard_opt_state=args.zero1),
        eval_step=make_mesh_eval_step(loss_fn, mesh=mesh),
        place=lambda b: shard_batch(b, mesh),
    )
    last = history.epochs[-1]
    print(
        f"8 devices: {args.epochs} epochs in {seconds:.1f} s; loss {last['loss']:.4f}, "
        f"val_loss {last['val_loss']:.4f}, val_accuracy {last['val_accuracy']:.4f}"
    )
    opt_leaves = jax.tree.leaves(state.opt_state)
    sharded = sum(leaf.sharding.spec != jax.sharding.PartitionSpec() for leaf in opt_leaves)
    print(
        f"params sharding {jax.tree.leaves(state.params)[0].sharding.spec}; "
        f"{sharded} of {len(opt_leaves)} Adam state leaves sharded over the data axis"
    )

    acc = metrics.ConfusionMatrix.empty(2, jnp.float32)
    for batch in batches(x_test, y_test):
        acc = add_batch(acc, state.params, shard_batch(batch, mesh))
    scores = acc.compute(average="binary")
    print(
        f"test accuracy {float(scores['accuracy']):.4f}  precision "
        f"{float(scores['precision']):.4f}  recall {float(scores['recall']):.4f}  "
        f"F1 {float(scores['f1_score']):.4f}"
    )
    print("confusion matrix (rows: true malignant=0 / benign=1, columns: predicted):")
    print(np.asarray(acc.counts).astype(int))

    single, single_history, single_seconds = train(
        make_state(x_train.shape[1]),
        data,
        args.epochs,
        train_step=make_train_step(loss_fn),
        eval_step=make_eval_step(loss_fn),
    )
    diff = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(single.params), strict=True)
    )
    same_loss = abs(single_history.epochs[-1]["loss"] - last["loss"])
    print(
        f"1 device: {single_seconds:.1f} s; max |params(8 devices) - params(1 device)| = "
        f"{diff:.2e}; |loss difference| = {same_loss:.2e}"
    )
    path = os.path.join(OUT, "data_parallel_mlp.png")
    plot_comparison(
        {f"{NUM_DEVICES} devices": history, "1 device": single_history},
        {"many": state.params, "one": single.params},
        path,
    )
    print(f"wrote {path}")
    np.testing.assert_allclose(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)]),
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(single.params)]),
        rtol=1e-4,
        atol=1e-5,
    )
    return {"max_param_difference": diff, **{k: float(v) for k, v in scores.items()}}


if __name__ == "__main__":
    main()
