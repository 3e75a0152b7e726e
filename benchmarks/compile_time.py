"""Compile time and step time of the matrix optimizers against AdamW.

``python -m benchmarks.compile_time [--trees resnet50 transformer12] [--rounds 1]
[--label after] [--out benchmarks/results]``

For each tree of `benchmarks.update_step` (``resnet50``: 161 leaves, ``transformer12``: 198
leaves) and each optimizer (AdamW, SOAP, Muon, NorMuon, and ``distributed_shampoo`` /
``kron`` when this dlopt has them), the jitted, donated step ``update + apply_updates`` is
traced, lowered and compiled (``jax.jit(step).lower(...).compile()``, a fresh function each
time, the persistent compilation cache off); then the compiled steps are timed. Contenders
take turns in both phases (A B C A B C ...). A step time is the median over rounds of the
mean over ``period`` consecutive steps (10: SOAP's default ``precondition_frequency``), so
a periodic preconditioner refresh is amortized as in training. Figures are the contender's
time over AdamW's in the same round (compile) or the ratio of medians (step).

Results are merged by ``--label`` into ``compile_time.json`` and the whole table is
rewritten to ``compile_time.md`` in ``--out``: run once with ``--label before`` against an
older dlopt (``PYTHONPATH``) and once with ``--label after`` to get both columns.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

import dlopt
from benchmarks.update_step import make_tree, tree_shapes

PERIOD = 10  # steps per timed block: one SOAP refresh period


def _optimizers() -> dict[str, Callable[[], Any]]:
    """AdamW and every matrix optimizer this dlopt has (probed by name)."""
    found = {
        "adamw": lambda: dlopt.adamw(1e-3),
        "soap": lambda: dlopt.soap(3e-3),
        "muon": lambda: dlopt.muon(0.02),
    }
    if hasattr(dlopt, "normuon"):
        found["normuon"] = lambda: dlopt.normuon(0.02)
    for name in ("distributed_shampoo", "kron"):
        if hasattr(dlopt, name):
            found[name] = lambda name=name: getattr(dlopt, name)(1e-3)
    return found


def _step(tx: Any) -> Callable:
    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return dlopt.apply_updates(params, updates), state

    return step


def _compile(make: Callable[[], Any], params: Any, grads: Any) -> tuple[float, Any, Any]:
    """(seconds to trace, lower and compile a fresh step, the executable, its carry)."""
    tx = make()
    carry = (params, jax.jit(tx.init)(params))
    start = time.perf_counter()
    compiled = jax.jit(_step(tx), donate_argnums=(0,)).lower(carry, grads).compile()
    return time.perf_counter() - start, compiled, carry


def _copy(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.copy(), tree)


def run_tree(tree: str, names: list[str], *, rounds: int, reps: int, log=print) -> dict:
    """Compile and step figures of ``names`` on ``tree`` (the first name is the baseline)."""
    shapes = tree_shapes(tree, 0)
    params, grads = make_tree(shapes, 0, 0.1), make_tree(shapes, 1, 0.01)
    makers = _optimizers()
    compile_s: dict[str, list[float]] = {n: [] for n in names}
    executables: dict[str, tuple] = {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, compiled, carry = _compile(makers[name], _copy(params), grads)
            compile_s[name].append(seconds)
            executables[name] = (compiled, carry)
            log(f"{tree:13s} {name:20s} compile {seconds:7.2f} s")
    step_s: dict[str, list[float]] = {n: [] for n in names}
    for name in names if reps else ():  # one untimed block each: first-run allocations
        compiled, carry = executables[name]
        for _ in range(PERIOD):
            carry = compiled(carry, grads)
        executables[name] = (compiled, jax.block_until_ready(carry))
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            compiled, carry = executables[name]
            start = time.perf_counter()
            for _ in range(PERIOD):
                carry = compiled(carry, grads)
            jax.block_until_ready(carry)
            step_s[name].append((time.perf_counter() - start) / PERIOD)
            executables[name] = (compiled, carry)
    base = names[0]
    out = {}
    for name in names:
        out[name] = {
            "compile_s": statistics.median(compile_s[name]),
            "compile_ratio": statistics.median(
                [c / b for c, b in zip(compile_s[name], compile_s[base], strict=True)]
            ),
            "step_s": statistics.median(step_s[name]) if reps else math.nan,
            "step_ratio": (
                statistics.median(step_s[name]) / statistics.median(step_s[base])
                if reps
                else math.nan
            ),
        }
        log(
            f"{tree:13s} {name:20s} compile {out[name]['compile_s']:7.2f} s "
            f"({out[name]['compile_ratio']:.1f}x adamw)  step {1e3 * out[name]['step_s']:8.1f} ms "
            f"({out[name]['step_ratio']:.1f}x adamw)"
        )
    return out


def markdown(data: dict) -> str:
    """The table: one row per (tree, optimizer), a compile and a step column per label."""
    labels = sorted(data["runs"], key=lambda s: (s != "before", s))
    head = ["tree", "optimizer"]
    for label in labels:
        head += [f"compile s ({label})", f"x AdamW ({label})", f"step ms ({label})",
                 f"x AdamW ({label})"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = []
    for label in labels:
        for tree, rows in data["runs"][label]["trees"].items():
            keys += [(tree, name) for name in rows if (tree, name) not in keys]
    for tree, name in keys:
        cells = [tree, name]
        for label in labels:
            row = data["runs"][label]["trees"].get(tree, {}).get(name)
            if row is None:
                cells += ["-"] * 4
                continue
            cells += [f"{row['compile_s']:.1f}", f"{row['compile_ratio']:.1f}x",
                      f"{1e3 * row['step_s']:.1f}", f"{row['step_ratio']:.1f}x"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"- {label}: dlopt {run['commit']}, {run['machine']}, {run['rounds']} compile "
        f"round(s), {run['reps']} step rounds of {PERIOD} steps"
        for label, run in ((lbl, data["runs"][lbl]) for lbl in labels)
    ]
    return "\n".join(["# Compile and step time against AdamW", "", *lines, "", *notes, ""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_time")
    p.add_argument("--trees", nargs="+", default=["resnet50", "transformer12"])
    p.add_argument("--optimizers", nargs="+", default=None, help="default: all found")
    p.add_argument("--rounds", type=int, default=1, help="compile rounds (each compiles all)")
    p.add_argument("--reps", type=int, default=3, help="step rounds of 10 steps (0: none)")
    p.add_argument("--label", default="after")
    p.add_argument("--commit", default="working tree")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_compilation_cache", False)
    names = args.optimizers or list(_optimizers())
    if names[0] != "adamw":
        names = ["adamw", *[n for n in names if n != "adamw"]]
    trees = {t: run_tree(t, names, rounds=args.rounds, reps=args.reps) for t in args.trees}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "compile_time.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    machine = f"{jax.devices()[0].device_kind} ({platform.machine()}), jax {jax.__version__}"
    data["runs"][args.label] = {
        "trees": trees, "commit": args.commit, "machine": machine, "rounds": args.rounds,
        "reps": args.reps,
    }  # fmt: skip
    path.write_text(json.dumps(data, indent=1))
    (out / "compile_time.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
