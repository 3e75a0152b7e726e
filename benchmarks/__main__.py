"""``python -m benchmarks [--quick] [--out DIR] ...`` (or ``dlopt bench ...``): run, report.

The arguments, the output folder included, are checked before anything heavy is imported or
timed: a bad one is a one-line error with exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dlopt.lab.cli_checks import OneLineParser, int_at_least, output_folder_error

TREES = ("tiny1000", "resnet50", "transformer12", "large", "tiny500")
# The update-step optimizers (benchmarks.update_step.OPTIMIZERS), listed here so that the
# arguments are checked without importing jax, optax and flax first.
OPTIMIZERS = (
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adamw",
    "nadam",
    "adamax",
    "lion",
)


_positive_int = int_at_least(1)


def parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="dlopt vs optax: update steps, bandwidth, state bytes, train steps. "
        "Every figure is a speed-up over optax (optax time / dlopt time; > 1 is faster).",
    )
    p.add_argument("--quick", action="store_true", help="a < 1 minute smoke run (adam only)")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: benchmarks/results; with --quick, a new temporary folder)",
    )
    p.add_argument("--name", default=None, help="file stem (default: latest or quick)")
    p.add_argument(
        "--reps", type=_positive_int, default=None, help="timed rounds (default 25, quick 5)"
    )
    p.add_argument("--large-size", type=_positive_int, default=None, help="params, large tree")
    p.add_argument("--trees", nargs="+", choices=TREES, default=None)
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=None)
    p.add_argument("--no-train", action="store_true", help="skip the train-step benchmark")
    p.add_argument(
        "--no-shelf", action="store_true", help="skip the rest-of-the-shelf optimizers table"
    )
    p.add_argument("--no-memory", action="store_true", help="skip the optimizer-memory table")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=8.0,
        help="memory cap of the largest-model-that-fits search (default 8; quick: 1)",
    )
    return p


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m benchmarks") -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    quick = args.quick
    if args.name is not None and (not args.name.strip() or os.sep in args.name):
        p.error(f"--name must be a plain file stem, got {args.name!r}")
    if args.out is not None:
        out = Path(args.out)
    else:
        # --quick: a fresh folder each run (a fixed /tmp name is shared by every user)
        out = (
            Path(tempfile.mkdtemp(prefix="dlopt_bench_"))
            if quick
            else Path(__file__).parent / "results"
        )
    problem = output_folder_error(args.out if args.out is not None else out)
    if problem is not None:
        p.error(f"--out {problem}")

    from benchmarks import memory, report, roofline, shelf, train_step, update_step

    reps = args.reps or (5 if quick else 25)
    large_size = args.large_size or (2**20 if quick else 16 * 2**20)
    trees = args.trees or (["tiny500", "large"] if quick else list(TREES[:4]))
    optimizers = args.optimizers or (["adam"] if quick else list(update_step.OPTIMIZERS))
    models = (
        [] if args.no_train else (["mlp_4x100_bn_dropout"] if quick else list(train_step.MODELS))
    )
    start = time.perf_counter()
    data = {
        "args": {
            "quick": quick,
            "reps": reps,
            "large_size": large_size,
            "trees": trees,
            "optimizers": optimizers,
            "models": models,
        },
        "machine": report.machine(),
        "load_start": os.getloadavg()[0],
    }
    shelf_trees = [] if args.no_shelf or quick else list(shelf.TREES)
    log = report.progress_log(
        len(trees) * len(optimizers) + len(models) + len(shelf_trees) * len(shelf.SHELF)
    )
    print(f"devices: {data['machine']['devices']}; reps {reps}", flush=True)
    print("update step (speed-up over optax, > 1 is faster):", flush=True)
    data["update"] = update_step.run(trees, optimizers, reps=reps, large_size=large_size, log=log)
    data["copy_bandwidth"] = roofline.copy_bandwidth(4 * large_size)
    data["roofline"] = roofline.roofline_rows(data["update"], data["copy_bandwidth"]["bytes_per_s"])
    data["state_bytes"] = roofline.state_bytes_per_param()
    if models:
        print("train step (speed-up over optax, > 1 is faster):", flush=True)
    data["train"] = train_step.run(models, reps=reps, log=log) if models else []
    if shelf_trees:
        print("the rest of the shelf (speed-up over optax, > 1 is faster):", flush=True)
        data["shelf"] = shelf.run(shelf_trees, list(shelf.SHELF), reps=reps, log=log)
        data.setdefault("sections", []).extend(shelf.sections(data["shelf"]))
    if not args.no_memory:
        data["memory"] = memory.run(quick=quick, reps=reps, cap_gb=args.memory_cap_gb)
    data["load_end"] = os.getloadavg()[0]
    data["wall_s"] = time.perf_counter() - start
    paths = report.write(data, out, args.name or ("quick" if quick else "latest"))
    print()
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {data['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
