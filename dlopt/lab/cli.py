"""The ``dlopt`` command: ``dlopt demo``, ``dlopt schedule``, ``dlopt lr-find`` (and ``bench``).

Every subcommand has ``--help`` and an ``--out`` folder. Bad arguments (an unknown name, an
output path that cannot be written, a missing optional dependency) exit with status 2 and one
line on stderr, found before any training starts (seeds, learning rates, step counts, sizes
that cannot fit in memory, names given twice). Optimizer, dataset and schedule names are read
in any case. Without matplotlib the commands still run and print their results, without figures.
The demo's data, model and training loop live in `dlopt.lab.experiments`, which the examples share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from dlopt.lab.cli_checks import (
    OneLineParser,
    UsageError,
    check_fits,
    check_output_folder,
    figures_available,
    finite_float_in,
    image_formats,
    int_at_least,
    int_in_range,
    output_file_error,
    parse_kwargs,
    require,
    unique_names,
)

DEMO_OPTIMIZERS: dict[str, tuple[str, float, dict[str, Any]]] = {
    # name -> (dlopt factory, learning rate, other arguments)
    "SGD": ("sgd", 0.1, {}),
    "Momentum": ("sgd", 0.05, {"momentum": 0.9}),
    "Nesterov": ("sgd", 0.05, {"momentum": 0.9, "nesterov": True}),
    "AdaGrad": ("adagrad", 0.05, {}),
    "RMSProp": ("rmsprop", 1e-3, {}),
    "Adadelta": ("adadelta", 1.0, {}),
    "Adam": ("adam", 1e-3, {}),
    "Nadam": ("nadam", 1e-3, {}),
    "AdamW": ("adamw", 1e-3, {"weight_decay": 1e-2}),
    "Adam 8-bit": ("adam", 1e-3, {"quantized": True}),  # dlopt.quantized(adam): 8-bit state
}


def resolve_optimizer(name: str) -> str:
    """The `DEMO_OPTIMIZERS` key that ``name`` names, in any case (``adam``, ``ADAM`` ->
    ``Adam``); `UsageError` listing the choices otherwise."""
    by_lower = {k.lower(): k for k in DEMO_OPTIMIZERS}
    found = by_lower.get(name.lower())
    if found is None:
        choices = ", ".join(DEMO_OPTIMIZERS)
        raise UsageError(f"unknown optimizer {name!r}; choose from {choices} (any case).")
    return found


def build_optimizer(name: str, learning_rate: Any = None) -> Any:
    """The demo's optimizer ``name`` (a `DEMO_OPTIMIZERS` key) at ``learning_rate`` (default
    the demo's), AdamW decaying weights only."""
    import dlopt

    factory, lr, kwargs = DEMO_OPTIMIZERS[name]
    kwargs = dict(kwargs)
    eight_bit = kwargs.pop("quantized", False)
    if factory == "adamw":
        kwargs["mask"] = dlopt.weights_only
    tx = getattr(dlopt, factory)(lr if learning_rate is None else learning_rate, **kwargs)
    return dlopt.quantized(tx) if eight_bit else tx


def _load(name: str, *, limit: int | None, seed: int) -> dict:
    """`dlopt.lab.experiments.load_dataset`, a missing TFDS download reported as a usage error."""
    from dlopt.data import DatasetUnavailableError
    from dlopt.lab.experiments import load_dataset

    try:
        return load_dataset(name, limit=limit, seed=seed)
    except (DatasetUnavailableError, ImportError) as e:
        raise UsageError(
            f"TFDS {name} is not available here ({type(e).__name__}); download it first "
            f"(dlopt.data.load({name!r}, download=True)) or use --dataset digits."
        ) from e


# ----------------------------------------------------------------------------- subcommands


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [
        [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def _data_modules(dataset: str) -> tuple[str, str]:
    return ("sklearn", "data") if dataset == "digits" else ("tensorflow_datasets", "data")


_FEATURES = {"digits": 64, "mnist": 784}  # inputs of the demo MLP; 10 classes for both


def _check_mlp_fits(dataset: str, hidden: Sequence[int]) -> None:
    """Refuses ``--hidden`` sizes whose MLP cannot fit in memory, before any allocation: the
    parameters in float32 about 8 times over (params, gradients, two moments, the best
    weights, the compiled step's temporaries)."""
    widths = [_FEATURES[dataset], *hidden, 10]
    n_params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=False))
    check_fits(f"an MLP {list(hidden)} ({n_params:.3g} parameters)", 8 * 4 * n_params, "--hidden")


def cmd_demo(args: argparse.Namespace) -> int:
    """Trains one MLP with each optimizer, prints the table and diagnoses, writes the PNGs."""
    names = [resolve_optimizer(n) for n in args.optimizers or DEMO_OPTIMIZERS]
    if args.optimizers:
        unique_names("--optimizers", args.optimizers, names)
    _check_mlp_fits(args.dataset, args.hidden)
    check_output_folder(args.out)
    require("dlopt demo", ("flax", "flax"), _data_modules(args.dataset))
    figures = figures_available("demo")

    from dlopt.lab.diagnose import diagnose, format_findings
    from dlopt.lab.experiments import mlp, train_classifier
    from dlopt.lab.progress import Progress

    # --quick sets what --epochs and --limit leave unset; an explicit value wins
    epochs = args.epochs or (2 if args.quick else 40)
    limit = args.limit or (300 if args.quick else None)
    data = _load(args.dataset, limit=limit, seed=args.seed)
    print(
        f"data: {data['source']}, {len(data['train'][0])} train / {len(data['val'][0])} val / "
        f"{len(data['test'][0])} test examples; MLP {args.hidden}, dropout 0.2",
        flush=True,
    )
    model = mlp(args.hidden, dropout=0.2)
    rows, histories = [], {}
    with Progress(total=len(names) * epochs, unit="epoch") as bar:
        for name in names:
            bar.describe(name)
            result = train_classifier(
                build_optimizer(name),
                data,
                model=model,
                # AdamW's weights_only mask is written for the params tree: keep it there
                flat=False if DEMO_OPTIMIZERS[name][0] == "adamw" else None,
                epochs=epochs,
                batch_size=args.batch_size,
                patience=args.patience,
                seed=args.seed,
                on_epoch=lambda epoch, state, history, logs: (bar.update(), state)[1],
            )
            bar.update(epochs - result["epochs"])  # epochs skipped by early stopping
            h = result["history"].history
            histories[name] = result["history"]
            best = result["best_epoch"] - 1  # the epoch whose weights are tested
            rows.append(
                {
                    "optimizer": name,
                    "lr": DEMO_OPTIMIZERS[name][1],
                    "train loss": h["loss"][best],
                    "val loss": h["val_loss"][best],
                    "best epoch": result["best_epoch"],
                    "epochs": result["epochs"],
                    "test acc": result["test_accuracy"],
                    "test F1": result["test_f1"],
                    "time s": result["seconds"],
                }
            )
            bar.note(
                f"{name}: {result['epochs']} epochs in {result['seconds']:.1f} s, best val loss "
                f"{min(h['val_loss']):.4g} at epoch {result['best_epoch']}"
            )
    print(_table(rows, list(rows[0])))
    print(
        "train loss, val loss, test acc and F1: of the best epoch (lowest val loss, its weights "
        "restored); epochs counted from 1"
    )
    print("\ndiagnosis (dlopt.diagnose):")
    for name, history in histories.items():
        print(f"{name}:\n  " + format_findings(diagnose(history)).replace("\n", "\n  "))
    os.makedirs(args.out, exist_ok=True)
    written = []
    if figures:
        written = _demo_figures(histories, rows, data, args.out)
    with open(os.path.join(args.out, "demo_results.json"), "w") as f:
        json.dump({"rows": rows, "histories": {k: v.to_dict() for k, v in histories.items()}}, f)
    print(f"\nwrote {', '.join([*written, 'demo_results.json'])} to {args.out}")
    return 0


def _demo_figures(histories: dict, rows: list[dict], data: dict, out: str) -> list[str]:
    """The demo's three figures in ``out``; returns their file names."""
    from dlopt.lab import plots

    n_test = len(data["test"][0])
    plots.plot_curve_panels(
        histories,
        keys=("loss", "val_loss"),
        logy=True,
        mark_best="val_loss",
        title=f"{data['source']}: cross-entropy per epoch, one panel per optimizer",
        path=os.path.join(out, "loss_curves.png"),
    )
    plots.plot_curve_panels(
        histories,
        keys=("accuracy", "val_accuracy"),
        ylabel="accuracy",
        zoom=True,
        mark_best="val_accuracy",
        title=f"{data['source']}: accuracy per epoch (train with dropout on)",
        path=os.path.join(out, "accuracy_curves.png"),
    )
    plots.plot_error_counts(
        {r["optimizer"]: r["test acc"] for r in rows},
        total=n_test,
        title="test errors of the weights with the best validation loss",
        path=os.path.join(out, "test_accuracy.png"),
    )
    return ["loss_curves.png", "accuracy_curves.png", "test_accuracy.png"]


SCHEDULE_ALIASES = {
    "constant": "constant_schedule",
    "step": "step_decay_schedule",
    "exponential": "exponential_decay",
    "piecewise": "piecewise_constant_schedule",
    "polynomial": "polynomial_schedule",
    "linear": "linear_schedule",
    "cosine": "cosine_decay_schedule",
    "warmup_cosine": "warmup_cosine_decay_schedule",
    "warmup_exponential": "warmup_exponential_decay_schedule",
    "onecycle": "cosine_onecycle_schedule",
}
_LENGTH_ARGS = ("decay_steps", "transition_steps")
_OTHER_STEP_ARGS = ("warmup_steps", "transition_begin", "step_size")
_MAX_STEPS = 10**7  # values drawn one per step: 80 MB of float64


def cmd_schedule(args: argparse.Namespace) -> int:
    """Evaluates a schedule over ``--steps`` steps, prints a few values, draws it."""
    import inspect

    from dlopt.schedules import decay as schedules

    name = SCHEDULE_ALIASES.get(args.name.lower(), args.name.lower())
    factory = getattr(schedules, name, None)
    if name not in SCHEDULE_ALIASES.values() or factory is None:
        choices = ", ".join(sorted(SCHEDULE_ALIASES))
        raise UsageError(f"unknown schedule {args.name!r}; choose from {choices}.")
    kwargs = parse_kwargs(args.args, step_args=(*_LENGTH_ARGS, *_OTHER_STEP_ARGS))
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as e:
        names = ", ".join(inspect.signature(factory).parameters)
        raise UsageError(f"{e} ({name} takes {names}).") from None
    from dlopt.core import validation

    try:
        schedule = factory(**kwargs)
        validation.check_learning_rate(schedule)  # this command draws learning rates
    except (ValueError, TypeError) as e:  # the schedule's own argument checks
        raise UsageError(str(e).splitlines()[0]) from None
    steps = args.steps or int(next((kwargs[k] for k in _LENGTH_ARGS if k in kwargs), 1000) * 1.1)
    if steps > _MAX_STEPS:
        raise UsageError(
            f"drawing {steps:.3g} steps (one value each) is too many; pass --steps N with "
            f"N <= {_MAX_STEPS:.0e} to draw the first N steps."
        )
    figures = _check_figure_outputs("schedule", args.plot, args.out)
    values = np.asarray(schedule(np.arange(steps)), float)
    for t in np.unique(np.linspace(0, steps - 1, 11).astype(int)):
        print(f"step {t:>7d}  {values[t]:.6g}")
    if figures:
        from dlopt.lab import plots

        path = args.plot or os.path.join(args.out, f"schedule_{args.name.lower()}.png")
        plots.plot_schedules({name: values}, title=f"{name}({', '.join(args.args)})", path=path)
        print(f"wrote {path}")
    return 0


def _check_figure_outputs(command: str, plot: str | None, out: str) -> bool:
    """Checks ``--plot`` (a file, needs matplotlib) or else ``--out``; returns whether
    figures will be drawn (False without matplotlib, unless ``--plot`` asks for one)."""
    if plot is not None:
        require(f"dlopt {command} --plot", ("matplotlib", "plots"))
        problem = output_file_error(plot, image_formats())
        if problem is not None:
            raise UsageError(f"--plot {problem}.")
        return True
    check_output_folder(out)
    return figures_available(command)


def cmd_lr_find(args: argparse.Namespace) -> int:
    """The LR range test on the demo MLP (no dropout): prints the suggestion, draws the curve."""
    name = resolve_optimizer(args.optimizer)
    if not args.max_lr > args.min_lr:
        raise UsageError(
            f"--max-lr must be greater than --min-lr, got --min-lr {args.min_lr:g} and "
            f"--max-lr {args.max_lr:g}."
        )
    _check_mlp_fits(args.dataset, args.hidden)
    figures = _check_figure_outputs("lr-find", args.plot, args.out)
    require("dlopt lr-find", ("flax", "flax"), _data_modules(args.dataset))

    import jax
    import jax.numpy as jnp

    from dlopt.lab import tuning
    from dlopt.lab.experiments import classifier_loss, epoch_batches, mlp

    data = _load(args.dataset, limit=args.limit, seed=args.seed)
    model = mlp(args.hidden)
    x, y = data["train"]
    params = model.init(jax.random.key(args.seed), jnp.asarray(x[:2]))["params"]
    loss = classifier_loss(model)
    key = jax.random.key(args.seed)
    loss_fn = lambda p, b: loss(p, b, model_state={}, rng=key, train=False)[0]  # noqa: E731
    batches_of, pass_ = epoch_batches(x, y, args.batch_size, seed=args.seed), []
    while len(pass_) < args.steps:
        pass_ += batches_of(len(pass_))
    found = tuning.lr_find(
        loss_fn,
        params,
        pass_[: args.steps],
        lambda lr: build_optimizer(name, lr),
        min_lr=args.min_lr,
        max_lr=args.max_lr,
    )
    where = (
        f"the loss diverges at lr {found.learning_rates[found.stop]:.3g}"
        if found.stop < args.steps
        else "no divergence: raise --max-lr to see the whole curve"
    )
    print(f"{name} on {data['source']}, lr {args.min_lr:g} -> {args.max_lr:g}: {where}")
    print(f"suggested learning rate: {found.suggested_lr:.3g}")
    if figures:
        from dlopt.lab import plots

        path = args.plot or os.path.join(args.out, "lr_find.png")
        plots.plot_lr_find(
            found.learning_rates,
            found.smoothed,
            raw_losses=found.losses,
            suggested_lr=found.suggested_lr,
            path=path,
        )
        print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs the repository's ``benchmarks`` package in this process (its own arguments)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise UsageError(
            f"the benchmarks/ folder is not next to {root / 'dlopt'} (a wheel install has "
            "none); run it from a source checkout: pip install -e . && dlopt bench."
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as bench_main

    return bench_main(args.bench_args, prog="dlopt bench")


_positive_int = int_at_least(1)
_seed = int_in_range(0, 2**32 - 1)  # what jax.random.key and numpy's generators take
_learning_rate = finite_float_in(0.0, 1e6)  # beyond, float32 training overflows at once


def build_parser() -> argparse.ArgumentParser:
    """The ``dlopt`` argument parser with its subcommands."""
    parser = OneLineParser(
        prog="dlopt", description="dlopt: deep-learning training techniques in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train one MLP with 10 optimizers (Adam 8-bit included), compare, diagnose"
    )
    demo.add_argument("--dataset", default="digits", type=str.lower, choices=list(_FEATURES))
    demo.add_argument("--epochs", type=_positive_int, default=None, help="default 40 (quick: 2)")
    demo.add_argument("--batch-size", type=_positive_int, default=64)
    demo.add_argument("--hidden", type=_positive_int, nargs="+", default=[128, 64])
    demo.add_argument(
        "--patience",
        type=_positive_int,
        default=8,
        help="early stopping on val_loss (best weights restored)",
    )
    demo.add_argument("--limit", type=_positive_int, default=None, help="max training examples")
    demo.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        metavar="NAME",
        help=f"a subset of {', '.join(DEMO_OPTIMIZERS)} (any case)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="2 epochs on 300 examples (a smoke test); an explicit --epochs or --limit wins",
    )
    demo.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1")
    demo.add_argument(
        "--out", default="dlopt_demo", help="folder for the PNGs (default %(default)s)"
    )
    demo.set_defaults(func=cmd_demo)

    sched = sub.add_parser("schedule", help="draw a learning-rate schedule")
    sched.add_argument("name", help=f"one of {', '.join(SCHEDULE_ALIASES)} (or the full name)")
    sched.add_argument(
        "--args",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="the schedule's arguments, e.g. init_value=0.1 decay_steps=1000",
    )
    sched.add_argument(
        "--steps", type=_positive_int, default=None, help="default 1.1 x the schedule's length"
    )
    sched.add_argument("--plot", default=None, help="PNG path (default OUT/schedule_NAME.png)")
    sched.add_argument("--out", default=".", help="folder for the PNG (default %(default)s)")
    sched.set_defaults(func=cmd_schedule)

    find = sub.add_parser("lr-find", help="learning-rate range test on the demo MLP")
    find.add_argument(
        "--optimizer",
        default="sgd",
        help=f"one of the demo's: {', '.join(DEMO_OPTIMIZERS)} (any case; default %(default)s)",
    )
    find.add_argument("--dataset", default="digits", type=str.lower, choices=list(_FEATURES))
    find.add_argument("--min-lr", type=_learning_rate, default=1e-5)
    find.add_argument("--max-lr", type=_learning_rate, default=10.0, help="at most 1e6")
    find.add_argument("--steps", type=int_at_least(2), default=100, help="batches in the pass")
    find.add_argument("--batch-size", type=_positive_int, default=64)
    find.add_argument("--hidden", type=_positive_int, nargs="+", default=[128, 64])
    find.add_argument("--limit", type=_positive_int, default=None)
    find.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1")
    find.add_argument("--plot", default=None, help="PNG path (default OUT/lr_find.png)")
    find.add_argument("--out", default=".", help="folder for lr_find.png (default %(default)s)")
    find.set_defaults(func=cmd_lr_find)

    bench = sub.add_parser(
        "bench",
        help="dlopt vs optax benchmarks (source checkout only)",
        description="Runs the benchmarks (python -m benchmarks); see dlopt bench --help.",
        prefix_chars="+",  # so that --quick, -h, ... reach the benchmarks' own parser
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="see dlopt bench --help")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``dlopt`` command; returns the exit status (0 ok, 2 bad arguments).

    Example:
        >>> import tempfile
        >>> from dlopt.lab.cli import main
        >>> with tempfile.TemporaryDirectory() as out:
        ...     main(["schedule", "step", "--steps", "4", "--args", "init_value=0.1",
        ...           "step_size=2", "decay_rate=0.5", "--out", out])
        step       0  0.1
        step       1  0.1
        step       2  0.05
        step       3  0.05
        wrote .../schedule_step.png
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"dlopt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
