"""A labelled set of real training histories, and how well `dlopt.lab.diagnose` names them.

Every history comes from actually training with `dlopt.training.fit` (the batches, loss and
MLP of `dlopt.lab.experiments`) on scikit-learn's offline sets through `dlopt.data`: the 8x8
digits (a dropout MLP 128-64 and a small CNN) and the Wisconsin breast-cancer table (a dropout
MLP 64-32), each with three seeds (the split, the initialization, dropout and the batch order
change with the seed). The label is the recipe, never what `diagnose` says:

* ``healthy``: a tuned learning rate (Adam 1e-3 / 3e-3 for the CNN, SGD 0.1 / 0.05), all the
  training data, early stopping on val_loss (patience 5, min_delta 1e-3, best weights back);
* ``lr_too_high``: the same run, fixed epochs, the learning rate 10x, 30x or 100x larger (one
  factor per seed);
* ``lr_too_low``: the same with it 10x, 30x or 100x smaller;
* ``underfitting`` (digits only: breast cancer is nearly linearly separable, no model is too
  small for it): an MLP of 2 or 3 hidden units, or a one-channel CNN pooled to 4 numbers, at a
  learning rate high enough for them to level off;
* ``overfitting``: a 512-512 MLP (or a 64-64 channel CNN) without dropout on 200 training
  examples, trained long;
* ``plateau``: the healthy model with an L2 penalty (so the loss has a floor), a constant
  learning rate, trained two to three times longer than it needs.

A wrong learning rate is kept only if it did harm (`check_labels`: its late validation loss
is 1.5x its healthy twin's best, or its own best for one too high); the generator prints the
runs it drops. The runs of ``dlopt demo`` (one per optimizer of
`dlopt.lab.cli.DEMO_OPTIMIZERS`, ten) are stored too, unlabelled ("demo").

``python examples/diagnose_histories.py`` trains them all (36 minutes on 2 busy shared CPU
cores) and writes ``out/diagnose_histories.json`` (``--out`` elsewhere); the committed set that
``tests/lab/test_diagnose.py`` reads, ``tests/fixtures/diagnose_histories.json``, is what
``python examples/diagnose_histories.py --out tests/fixtures/diagnose_histories.json`` writes.
``python examples/diagnose_histories.py --table`` only reads the committed set (or
``--table FILE``) and prints the confusion table: for each verdict (a finding, "not enough
epochs to judge", "not converged", or "none"), how many runs of each true label get it, with
its precision and recall.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence

from dlopt.lab.diagnose import KINDS, VERDICTS, diagnose

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
PATH = os.path.join(ROOT, "tests", "fixtures", "diagnose_histories.json")  # the committed set
OUT = os.path.join(ROOT, "out", "diagnose_histories.json")  # where a new set goes by default
LABELS = ("healthy", *KINDS)
SEEDS = (0, 1, 2)
SERIES = ("loss", "val_loss", "accuracy", "val_accuracy")

# family -> (dataset, model spec, batch size); a model spec is ("mlp", hidden, dropout) or
# ("cnn", channels, dense units, dropout, pool).
FAMILIES = {
    "digits-mlp": ("digits", ("mlp", (128, 64), 0.2), 64),
    "digits-cnn": ("digits", ("cnn", (16, 32), 64, 0.2, 2), 64),
    "cancer-mlp": ("breast_cancer", ("mlp", (64, 32), 0.2), 32),
}
# (family, optimizer, tuned learning rate, epochs of the runs with a wrong learning rate)
TUNED = [
    ("digits-mlp", "adam", 1e-3, 30),
    ("digits-mlp", "sgd", 0.1, 30),
    ("digits-cnn", "adam", 3e-3, 20),
    ("cancer-mlp", "adam", 1e-3, 25),
    ("cancer-mlp", "sgd", 0.05, 25),
]
LR_FACTORS = (10.0, 30.0, 100.0)  # one per seed
HEALTHY_EPOCHS, HEALTHY_PATIENCE = 40, 5
WORSE = 1.5  # a wrong learning rate must end this much above its healthy twin's best val_loss


def recipes() -> list[dict]:
    """Every run of the set: its label and how to train it."""
    runs = []

    def add(label, family, optimizer, lr, epochs, seed, **overrides):
        dataset, model, batch_size = FAMILIES[family]
        run = {
            "label": label,
            "family": family,
            "dataset": dataset,
            "model": model,
            "optimizer": optimizer,
            "lr": lr,
            "epochs": epochs,
            "patience": None,
            "batch_size": batch_size,
            "limit": None,
            "l2": 0.0,
            "seed": seed,
        }
        run.update(overrides)
        run["id"] = f"{label}/{family}/{optimizer}/lr={run['lr']:.3g}/seed={seed}"
        runs.append(run)

    for family, optimizer, lr, epochs in TUNED:
        for seed, factor in zip(SEEDS, LR_FACTORS, strict=True):
            add("healthy", family, optimizer, lr, HEALTHY_EPOCHS, seed, patience=HEALTHY_PATIENCE)
            add("lr_too_high", family, optimizer, lr * factor, epochs, seed, lr_factor=factor)
            add("lr_too_low", family, optimizer, lr / factor, epochs, seed, lr_factor=1 / factor)
    big = {"limit": 200, "batch_size": 32}
    for seed in SEEDS:
        add("underfitting", "digits-mlp", "adam", 1e-2, 30, seed, model=("mlp", (2,), 0.0))
        add("underfitting", "digits-mlp", "adam", 3e-2, 30, seed, model=("mlp", (3,), 0.0))
        add("underfitting", "digits-cnn", "adam", 1e-2, 25, seed, model=("cnn", (1,), 0, 0.0, 4))
        add("overfitting", "digits-mlp", "adam", 1e-3, 40, seed, model=("mlp", (512, 512), 0.0),
            **big)  # fmt: skip
        add("overfitting", "digits-cnn", "adam", 1e-3, 30, seed,
            model=("cnn", (64, 64), 256, 0.0, 2), **big)  # fmt: skip
        add("overfitting", "cancer-mlp", "adam", 1e-3, 60, seed, model=("mlp", (512, 512), 0.0),
            **big)  # fmt: skip
        add("plateau", "digits-mlp", "adam", 3e-3, 50, seed, l2=1e-2)
        add("plateau", "digits-cnn", "adam", 3e-3, 60, seed, l2=3e-3)
        add("plateau", "cancer-mlp", "adam", 1e-2, 60, seed, l2=3e-2)
    return runs


def demo_recipes() -> list[dict]:
    """The runs of ``dlopt demo``, one per optimizer of `DEMO_OPTIMIZERS` (digits, MLP 128-64,
    dropout 0.2, early stopping with patience 8, the optimizer from
    `dlopt.lab.cli.build_optimizer`): unlabelled, kept to check that none of them is told its
    learning rate is wrong."""
    from dlopt.lab.cli import DEMO_OPTIMIZERS

    runs = []
    for name, (factory, lr, kwargs) in DEMO_OPTIMIZERS.items():
        runs.append(
            {
                "label": None,
                "id": f"demo/{name}",
                "family": "digits-mlp",
                "dataset": "digits",
                "model": ("mlp", (128, 64), 0.2),
                "optimizer": factory,
                "optimizer_kwargs": kwargs,
                "demo_name": name,
                "min_delta": 0.0,  # the demo's EarlyStopping
                "lr": lr,
                "epochs": 40,
                "patience": 8,
                "batch_size": 64,
                "limit": None,
                "l2": 0.0,
                "seed": 0,
            }
        )
    return runs


def check_labels(runs: Sequence[dict]) -> list[dict]:
    """The runs whose recipe did what its label says; prints the others. A learning rate
    10-100x off counts only if the mean val_loss of the run's second half is at least `WORSE` x
    the best of its healthy twin (same family, optimizer and seed), or non-finite; one too high
    also counts if that mean is `WORSE` x the run's own best (it got worse: unstable)."""
    best = {
        (r["family"], r["optimizer"], r["seed"]): min(r["history"]["val_loss"])
        for r in runs
        if r["label"] == "healthy"
    }
    kept = []
    for r in runs:
        if r["label"] in ("lr_too_high", "lr_too_low"):
            # a non-finite value is stored as None: infinitely bad
            v = [
                math.inf if x is None or not math.isfinite(x) else x
                for x in r["history"]["val_loss"]
            ]
            late = v[len(v) // 2 :]
            end = sum(late) / len(late)
            twin = best.get((r["family"], r["optimizer"], r["seed"]), -math.inf)
            own = min(v) if r["label"] == "lr_too_high" else math.inf
            if end < WORSE * min(twin, own):
                print(f"dropped {r['id']}: late val_loss {end:.3g}, its twin's best {twin:.3g}")
                continue
        kept.append(r)
    return kept


# ----------------------------------------------------------------------------- training


def _cnn(channels: Sequence[int], dense: int, dropout: float, pool: int, num_classes: int):
    """Conv 3x3 relu per channel count (average-pooled ``pool`` x ``pool`` after the first),
    then an optional Dense relu, optional dropout, and the output Dense; on 8x8 digits."""
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x.reshape(x.shape[0], 8, 8, 1)
            for i, c in enumerate(channels):
                x = nn.relu(nn.Conv(c, (3, 3))(x))
                if i == 0:
                    x = nn.avg_pool(x, (pool, pool), (pool, pool))
            x = x.reshape(x.shape[0], -1)
            if dense:
                x = nn.relu(nn.Dense(dense)(x))
            if dropout:
                x = nn.Dropout(dropout, deterministic=not train)(x)
            return nn.Dense(num_classes)(x)

    return CNN()


def _load(dataset: str, *, limit: int | None, seed: int) -> dict:
    """`dlopt.lab.experiments.load_dataset` for digits; the same 70/15/15 stratified split and
    train-fitted `dlopt.data.Standardizer` for breast cancer's 30 features."""
    import numpy as np

    from dlopt import data as data_lib
    from dlopt.lab.experiments import load_dataset

    if dataset == "digits":
        return load_dataset("digits", limit=limit, seed=seed)
    arrays = data_lib.load(dataset)
    train, val, test = data_lib.train_val_test_split(
        arrays["features"], arrays["label"], val=0.15, test=0.15, seed=seed
    )
    if limit is not None:
        train = (train[0][:limit], train[1][:limit])
    scaler = data_lib.Standardizer().fit(train[0])
    scale = lambda xy: (np.asarray(scaler.transform(xy[0]), np.float32), xy[1])  # noqa: E731
    return {"train": scale(train), "val": scale(val), "test": scale(test), "source": dataset}


def train(run: dict) -> dict:
    """Trains one recipe with `dlopt.training.fit` (the loss, batches and model from
    `dlopt.lab.experiments`); returns it with its ``history`` (4 significant digits) and
    ``test_accuracy``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import dlopt
    from dlopt.lab.experiments import classifier_loss, epoch_batches, mlp
    from dlopt.training import EarlyStopping, TrainState, fit

    data = _load(run["dataset"], limit=run["limit"], seed=run["seed"])
    num_classes = 10 if run["dataset"] == "digits" else 2
    kind, *spec = run["model"]
    if kind == "mlp":
        hidden, dropout = spec
        model = mlp(tuple(hidden), num_classes, dropout=dropout)
    else:
        model = _cnn(*spec, num_classes=num_classes)
    (x, y), (x_val, y_val), (x_test, y_test) = data["train"], data["val"], data["test"]
    variables = model.init(jax.random.key(run["seed"]), jnp.asarray(x[:2]))
    params, model_state = variables.pop("params"), dict(variables)
    if "demo_name" in run:
        from dlopt.lab.cli import build_optimizer

        tx = build_optimizer(run["demo_name"], run["lr"])
    else:
        kwargs = dict(run.get("optimizer_kwargs", {}))
        if run["optimizer"] == "adamw":
            kwargs["mask"] = dlopt.weights_only  # as the demo does
        tx = getattr(dlopt, run["optimizer"])(run["lr"], **kwargs)
    state = TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, rng=run["seed"], model_state=model_state
    )
    state, history = fit(
        state,
        epoch_batches(x, y, run["batch_size"], seed=run["seed"]),
        epochs=run["epochs"],
        val_data=[{"x": x_val, "y": y_val}],
        loss_fn=classifier_loss(model, l2=run["l2"]),
        callbacks=[
            EarlyStopping(
                "val_loss",
                patience=run["patience"],
                min_delta=run.get("min_delta", 1e-3),
                restore_best=True,
            )
        ]
        if run["patience"] is not None
        else [],
        progress=False,
    )
    logits = model.apply({"params": state.params, **state.model_state}, x_test, train=False)
    test_accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == y_test))
    h = history.history
    # 4 significant digits; a non-finite value is stored as null (strict JSON)
    history = {k: [float(f"{v:.4g}") if math.isfinite(v) else None for v in h[k]] for k in SERIES}
    return {**run, "test_accuracy": round(test_accuracy, 4), "history": history}


def _g(x: float | None) -> str:
    """A stored value for the log: 3 significant digits, or "nan" for a non-finite one."""
    return "nan" if x is None else f"{x:.3g}"


def generate(path: str = OUT, only: str | None = None) -> list[dict]:
    """Trains every recipe (those whose id contains ``only``) and writes them to ``path``."""
    runs = []
    todo = [r for r in recipes() + demo_recipes() if only is None or only in r["id"]]
    start = time.perf_counter()
    for i, run in enumerate(todo):
        runs.append(train(run))
        h = runs[-1]["history"]
        print(
            f"[{i + 1}/{len(todo)} {time.perf_counter() - start:5.0f}s] {run['id']}: val_loss "
            f"{_g(h['val_loss'][0])} -> {_g(h['val_loss'][-1])}, test acc "
            f"{runs[-1]['test_accuracy']:.3f}",
            flush=True,
        )
    demo = [r for r in runs if r["label"] is None]
    runs = check_labels([r for r in runs if r["label"] is not None])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        doc = __doc__.splitlines()[0]
        json.dump(
            {"doc": doc, "runs": runs, "demo": demo}, f, separators=(",", ":"), allow_nan=False
        )
    print(f"wrote {len(runs)} labelled and {len(demo)} demo histories to {path}")
    return runs


# ----------------------------------------------------------------------------- evaluation


def load(path: str = PATH, section: str = "runs") -> list[dict]:
    """The labelled runs of the committed set (``section="demo"``: the demo's runs), with the
    nulls of their histories (non-finite losses) back as NaN."""
    with open(path) as f:
        runs = json.load(f)[section]
    for run in runs:
        run["history"] = {
            k: [math.nan if x is None else x for x in v] for k, v in run["history"].items()
        }
    return runs


def confusion(runs: Sequence[dict], **kwargs) -> dict[str, dict[str, int]]:
    """``finding -> true label -> count`` of runs; the findings are the problems (`KINDS`), the
    verdicts "too_few_epochs" and "not_converged" (`VERDICTS`) and ``"none"``: the runs that get
    no finding. ``kwargs`` go to `diagnose`."""
    table = {k: dict.fromkeys(LABELS, 0) for k in (*KINDS, *VERDICTS, "none")}
    for run in runs:
        kinds = {f.kind for f in diagnose(run["history"], **kwargs)} or {"none"}
        for kind in kinds:
            table[kind][run["label"]] += 1
    return table


def scores(runs: Sequence[dict], **kwargs) -> dict[str, tuple[float, float]]:
    """``finding -> (precision, recall)`` on ``runs`` (``"none"`` is scored against the
    healthy label; a verdict, which no label names, gets NaN)."""
    table = confusion(runs, **kwargs)
    count = {label: sum(r["label"] == label for r in runs) for label in LABELS}
    out = {}
    for kind, row in table.items():
        if kind in VERDICTS:
            out[kind] = (math.nan, math.nan)
            continue
        truth = "healthy" if kind == "none" else kind
        given = sum(row.values())
        out[kind] = (
            row[truth] / given if given else math.nan,
            row[truth] / count[truth] if count[truth] else math.nan,
        )
    return out


def _score(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def format_table(runs: Sequence[dict], **kwargs) -> str:
    """The confusion table as text: a row per finding, a column per true label."""
    table, score = confusion(runs, **kwargs), scores(runs, **kwargs)
    count = {label: sum(r["label"] == label for r in runs) for label in LABELS}
    head = ["finding \\ label", *(f"{label} ({count[label]})" for label in LABELS)]
    rows = [
        [kind, *(str(table[kind][label]) for label in LABELS), _score(p), _score(r)]
        for kind, (p, r) in score.items()
    ]
    head += ["precision", "recall"]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]

    def line(cells):
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--table",
        nargs="?",
        const=PATH,
        default=None,
        metavar="JSON",
        help=f"only print the confusion table of a stored set (default {PATH})",
    )
    parser.add_argument("--out", default=OUT, help="the JSON file to write (default %(default)s)")
    parser.add_argument("--only", default=None, help="train only the runs whose id has this")
    args = parser.parse_args(argv)
    if not args.table:
        generate(args.out, args.only)
    runs = load(args.table or args.out)  # the nulls (non-finite losses) back as NaN
    print(format_table(runs))


if __name__ == "__main__":
    main()
