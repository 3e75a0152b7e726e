"""``python -m benchmarks [--quick] [--out DIR] ...``: run the benchmarks, write the report."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import memory, report, roofline, train_step, update_step

TREES = ("tiny1000", "resnet50", "transformer12", "large", "tiny500")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="dlopt vs optax: update steps, bandwidth, state bytes, train steps.",
    )
    p.add_argument("--quick", action="store_true", help="a < 1 minute smoke run (adam only)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: benchmarks/results; with --quick, a temporary folder)",
    )
    p.add_argument("--name", default=None, help="file stem (default: latest or quick)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 25, quick 5)")
    p.add_argument("--large-size", type=int, default=None, help="params of the large tree")
    p.add_argument("--trees", nargs="+", choices=TREES, default=None)
    p.add_argument("--optimizers", nargs="+", choices=list(update_step.OPTIMIZERS), default=None)
    p.add_argument("--no-train", action="store_true", help="skip the train-step benchmark")
    p.add_argument("--no-memory", action="store_true", help="skip the optimizer-memory table")
    p.add_argument(
        "--memory-cap-gb",
        type=float,
        default=8.0,
        help="memory cap of the largest-model-that-fits search (default 8; quick: 1)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quick = args.quick
    reps = args.reps or (5 if quick else 25)
    large_size = args.large_size or (2**20 if quick else 16 * 2**20)
    trees = args.trees or (["tiny500", "large"] if quick else list(TREES[:4]))
    out = args.out or (
        Path(tempfile.gettempdir()) / "dlopt_bench" if quick else Path(__file__).parent / "results"
    )
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
    print(f"devices: {data['machine']['devices']}; reps {reps}", flush=True)
    print("update step (time ratio to optax, lower is faster):", flush=True)
    data["update"] = update_step.run(trees, optimizers, reps=reps, large_size=large_size)
    data["copy_bandwidth"] = roofline.copy_bandwidth(4 * large_size)
    data["roofline"] = roofline.roofline_rows(data["update"], data["copy_bandwidth"]["bytes_per_s"])
    data["state_bytes"] = roofline.state_bytes_per_param()
    if models:
        print("train step (time ratio to optax):", flush=True)
    data["train"] = train_step.run(models, reps=reps) if models else []
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
