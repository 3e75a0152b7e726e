"""The three-model MNIST comparison, with early stopping, curves of all three on one plot.

1. 10,000 training images, 4 hidden layers of 100 (BatchNorm, dropout 0.2), L2 0.1,
   SGD lr 1e-2, batch 256.
2. The same network with Adam lr 1e-3, batch 100, dropout 0.5, L2 0.15.
3. 20,000 training images, hidden [256, 100, 100] with BatchNorm, Adam lr 1e-2, batch 100.

Uses TFDS MNIST when it has been downloaded (``tfds.load("mnist")`` once, with network);
otherwise scikit-learn's bundled 8x8 digits (1,257 training images, so the 10,000 / 20,000
limits do not bind) and says so. L2 is ``dlopt.l2_penalty`` (``rate/2 * sum w^2`` over the
kernels) added to the loss; early stopping watches ``val_loss`` with patience 5 and restores
the best weights. `dlopt.lab.diagnose` reads each history (a best train accuracy under 90%
counts as underfitting). On digits, model 1's L2 of 0.1 swamps the data term (the loss is
mostly the penalty): it underfits; model 2 trains slowly but well; model 3 learns fastest and
its loss jumps later in the run (Adam at 1e-2), which early stopping cuts short.

Run: ``python examples/mnist_three_models.py [--dataset digits|mnist] [--epochs N]``
(about a minute on digits, CPU); writes ``examples/figures/mnist_three_models.png``.
"""

import argparse
import logging
import os

import dlopt
from dlopt.data import DatasetUnavailableError
from dlopt.lab.diagnose import diagnose
from dlopt.lab.experiments import load_dataset, mlp, train_classifier
from dlopt.lab.plots import plot_curves
from dlopt.lab.progress import Progress

OUT = os.path.join(os.path.dirname(__file__), "figures")

MODELS = {
    # name -> (training images, hidden, dropout, batch norm, L2, optimizer, batch size)
    "1: SGD 1e-2, L2 0.1, drop 0.2": (10_000, (100,) * 4, 0.2, True, 0.1, dlopt.sgd(1e-2), 256),
    "2: Adam 1e-3, L2 0.15, drop 0.5": (10_000, (100,) * 4, 0.5, True, 0.15, dlopt.adam(1e-3), 100),
    "3: Adam 1e-2, [256,100,100], BN": (
        20_000,
        (256, 100, 100),
        0.0,
        True,
        0.0,
        dlopt.adam(1e-2),
        100,
    ),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args(argv)
    dataset = args.dataset
    if dataset == "mnist":
        logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS warns about partial folders
        try:
            load_dataset("mnist", limit=1)
        except DatasetUnavailableError:
            print("MNIST is not downloaded (tfds.load('mnist') once, with network); using "
                  "scikit-learn's digits instead.")  # fmt: skip
            dataset = "digits"
        except ImportError:
            print("tensorflow-datasets is not installed (pip install 'dlopt[data]'); using "
                  "scikit-learn's digits instead.")  # fmt: skip
            dataset = "digits"

    histories, rows = {}, []
    bar = Progress(total=len(MODELS) * args.epochs, unit="epoch")  # a bar, or lines in a log

    def tick(epoch, state, history, logs):
        bar.update()
        return state

    for name, (limit, hidden, dropout, bn, l2, tx, batch) in MODELS.items():
        data = load_dataset(dataset, limit=limit)
        model = mlp(hidden, dropout=dropout, batch_norm=bn)
        bar.describe(name)
        r = train_classifier(
            tx,
            data,
            model=model,
            epochs=args.epochs,
            batch_size=batch,
            l2=l2,
            patience=5,
            on_epoch=tick,
        )
        bar.update(args.epochs - r["epochs"])
        bar.note(f"model {name}: {r['epochs']} epochs in {r['seconds']:.1f} s")
        histories[name] = r["history"]
        h = r["history"].history
        rows.append(
            (
                name,
                len(data["train"][0]),
                r["epochs"],
                r["best_epoch"],
                min(h["val_loss"]),
                r["test_accuracy"],
                r["test_f1"],
            )
        )
    bar.close()
    print(f"data: {data['source']}")
    print(
        f"{'model':>34}  {'train n':>7}  {'epochs':>6}  {'best':>4}  {'best val':>8}  "
        f"{'test acc':>8}  {'test F1':>7}"
    )
    for name, n, epochs, best, val, acc, f1 in rows:
        print(f"{name:>34}  {n:7d}  {epochs:6d}  {best:4d}  {val:8.4f}  {acc:8.3f}  {f1:7.3f}")
    print("\ndiagnosis:")
    for name, history in histories.items():
        findings = diagnose(history, min_accuracy=0.9)  # digits and MNIST: 90% is easy
        print(
            f"{name:>34}: "
            + ("; ".join(f"{f.kind} from epoch {f.epoch}" for f in findings) or "no problems found")
        )
    path = os.path.join(OUT, "mnist_three_models.png")
    plot_curves(
        histories,
        legend_loc="outside",
        keys=("loss", "val_loss"),
        logy=True,
        mark_best="val_loss",
        title=f"three models on {data['source']} (loss includes the L2 term)",
        path=path,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
