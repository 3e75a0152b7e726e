"""Optimizer memory: state bytes, compiled peak of the donated step, the largest model that fits.

Adam in three storage variants, dlopt against optax where optax has one:

* ``f32``: float32 moments (``optax.adam``, ``dlopt.adam``);
* ``bf16``: bfloat16 moments (``optax.adam(mu_dtype=bf16)`` keeps ``nu`` in float32;
  ``dlopt.adam(mu_dtype=bf16, nu_dtype=bf16)`` rounds both stochastically);
* ``q8``: ``dlopt.quantized(dlopt.adam)``, 8-bit block-wise codes.

Figures:

* state bytes per parameter, from the state pytree (``jax.eval_shape``: nothing allocated);
* the compiled memory of the donated ``update + apply_updates`` step
  (``.lower(...).compile().memory_analysis()``: argument, temp and output bytes; output
  buffers alias the donated arguments), for a 100M-parameter tree (compiled, never run);
* the largest parameter count whose jitted, donated Adam train step on a linear model runs
  under a memory cap on the peak resident size (`benchmarks.memory_process.largest_fit`);
* ``python -m benchmarks.memory --process``: peak resident memory of init (eager and
  jitted) and train step, a fresh process per variant (`benchmarks.memory_process`), the
  table the README quotes, written to ``benchmarks/results/memory_process.md``;
* update-step and whole train-step times of each variant against float32 (interleaved;
  wall and process-CPU time, the latter steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import dlopt
from benchmarks.memory_process import largest_fit
from benchmarks.update_step import make_tree, step_fn

LR = 1e-3
BF16 = jnp.bfloat16

# name -> builder of the transform (dlopt or optax)
VARIANTS: dict[str, Callable[[], Any]] = {
    "optax f32": lambda: optax.adam(LR),
    "optax bf16 mu": lambda: optax.adam(LR, mu_dtype=BF16),
    "dlopt f32": lambda: dlopt.adam(LR),
    "dlopt bf16": lambda: dlopt.adam(LR, mu_dtype=BF16, nu_dtype=BF16),
    "dlopt 8-bit": lambda: dlopt.quantized(dlopt.adam(LR)),
}
FIT = ("dlopt f32", "dlopt bf16", "dlopt 8-bit")


def abstract_tree(num_params: int, leaves: int = 4) -> dict[str, jax.ShapeDtypeStruct]:
    """``leaves`` float32 matrices of 1024 columns holding ``num_params`` together."""
    rows = max(num_params // leaves // 1024, 1)
    return {f"w{i}": jax.ShapeDtypeStruct((rows, 1024), jnp.float32) for i in range(leaves)}


def num_params(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def state_bytes_per_param(num: int = 4 * 2**20) -> dict[str, float]:
    params = abstract_tree(num)
    out = {}
    for name, make in VARIANTS.items():
        with jax.numpy_dtype_promotion("standard"):
            state = jax.eval_shape(make().init, params)
        out[name] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / num
    return out


def compiled_step_memory(tx: Any, params: Any) -> dict[str, int]:
    """Bytes of the compiled, donated ``(params, state), grads -> (params, state)`` step."""
    state = jax.eval_shape(tx.init, params)

    def step(carry, grads):
        p, s = carry
        u, s = tx.update(grads, s, p)
        return dlopt.apply_updates(p, u), s

    with jax.numpy_dtype_promotion("standard"):
        compiled = jax.jit(step, donate_argnums=(0,)).lower((params, state), params).compile()
    m = compiled.memory_analysis()
    return {
        "argument": m.argument_size_in_bytes,
        "temp": m.temp_size_in_bytes,
        "output": m.output_size_in_bytes,
        "alias": m.alias_size_in_bytes,
        "peak": m.argument_size_in_bytes + m.temp_size_in_bytes,
    }


def peak_memory(num: int) -> dict[str, dict[str, float]]:
    """`compiled_step_memory` per variant for a ``num``-parameter tree, per parameter."""
    params = abstract_tree(num)
    n = num_params(params)
    rows = {}
    for name, make in VARIANTS.items():
        stats = compiled_step_memory(make(), params)
        rows[name] = {k: v / n for k, v in stats.items()}
    for row in rows.values():
        row["peak_ratio"] = row["peak"] / rows["dlopt f32"]["peak"]
        row["peak_ratio_optax"] = row["peak"] / rows["optax f32"]["peak"]
    return rows


# --- the largest model that fits

BATCH, COLUMNS = 8, 1024


def linear_train_step(tx: Any, rows: int, batch: int = BATCH):
    """A jitted, donated Adam train step on ``x @ W`` (``W``: rows x 1024) and its init."""

    def loss(w, x, y):
        return jnp.mean((x @ w - y) ** 2)

    @jax.jit
    def init():
        w = jnp.zeros((rows, COLUMNS), jnp.float32)
        x = jnp.ones((batch, rows), jnp.float32) / rows
        y = jnp.ones((batch, COLUMNS), jnp.float32)
        return w, tx.init(w), x, y

    def _step(w, state, x, y):
        g = jax.grad(loss)(w, x, y)
        u, state = tx.update(g, state, w)
        return dlopt.apply_updates(w, u), state, x, y

    step = jax.jit(_step, donate_argnums=(0, 1))
    return step, init


# --- time


def _interleave(steps: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, float]]:
    for fn in steps.values():  # compile + warm up
        fn()
        fn()
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(reps):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            w, c = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    base = next(iter(steps))
    out = {}
    for name in steps:
        out[name] = {
            "median_s": statistics.median(wall[name]),
            "ratio": statistics.median(a / b for a, b in zip(wall[name], wall[base], strict=True)),
            "cpu_s": statistics.median(cpu[name]),
            "cpu_ratio": statistics.median(
                a / b for a, b in zip(cpu[name], cpu[base], strict=True)
            ),
        }
    return out


def step_times(num: int, reps: int) -> dict[str, dict[str, dict[str, float]]]:
    """Update-only and whole-train-step times of the dlopt variants, against float32."""
    shapes = {k: v.shape for k, v in abstract_tree(num).items()}
    params, grads = make_tree(shapes, 0, 0.1), make_tree(shapes, 1, 0.01)
    update, train = {}, {}
    for name in FIT:
        tx = VARIANTS[name]()
        fn = step_fn(tx, dlopt.apply_updates)
        carry = [(jax.tree.map(jnp.array, params), tx.init(params))]

        def run(fn=fn, carry=carry):
            carry[0] = jax.block_until_ready(fn(carry[0], grads))

        update[name] = run
        step, init = linear_train_step(tx, num // COLUMNS, batch=64)
        state = [init()]

        def run_train(step=step, state=state):
            state[0] = jax.block_until_ready(step(*state[0]))

        train[name] = run_train
    return {"update": _interleave(update, reps), "train": _interleave(train, reps)}


def run(
    *,
    quick: bool,
    reps: int,
    cap_gb: float = 8.0,
    fit: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every figure of the memory table (quick: smaller trees, a 1 GiB cap)."""
    big = 4 * 2**20 if quick else 100 * 2**20
    cap = int((1.0 if quick else cap_gb) * 2**30)
    out: dict[str, Any] = {"peak_params": big, "cap_bytes": cap}
    out["state_bytes"] = state_bytes_per_param()
    log("memory: state bytes per parameter " + ", ".join(
        f"{k} {v:.3f}" for k, v in out["state_bytes"].items()
    ))  # fmt: skip
    out["peak_4m"] = peak_memory(4 * 2**20)
    out["peak"] = peak_memory(big)
    for name, row in out["peak"].items():
        log(f"  peak {big / 2**20:.0f}M {name:14s} argument+temp {row['peak']:.2f} B/param "
            f"(x{row['peak_ratio']:.3f} of dlopt f32)")  # fmt: skip
    out["times"] = step_times(4 * 2**20, reps)
    for kind, rows in out["times"].items():
        log(f"  {kind} time vs f32: " + ", ".join(
            f"{k} x{v['ratio']:.2f} (cpu x{v['cpu_ratio']:.2f})" for k, v in rows.items()
        ))  # fmt: skip
    if fit:
        tol = 0.25 if quick else 0.03
        out["fit"] = {name: largest_fit(name, cap, rel_tol=tol, log=log) for name in FIT}
    return out


def markdown(mem: dict[str, Any]) -> list[str]:
    """The memory section of the report, as markdown lines."""
    lines = [
        "**Optimizer memory** (Adam). State bytes per parameter from the state pytree; "
        "`argument + temp` bytes per parameter of the compiled, donated "
        "`update + apply_updates` step (params + grads + state, plus XLA's temporaries; "
        "outputs alias the donated arguments) for a 4M and a "
        f"{mem['peak_params'] / 2**20:.0f}M-parameter tree; ratios to dlopt float32.",
        "",
        "| variant | state B/param | peak 4M | ratio | peak big | temp big | ratio "
        "| vs optax f32 |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, sb in mem["state_bytes"].items():
        small, big = mem["peak_4m"][name], mem["peak"][name]
        lines.append(
            f"| {name} | {sb:.3f} | {small['peak']:.2f} | {small['peak_ratio']:.3f} "
            f"| {big['peak']:.2f} | {big['temp']:.2f} | {big['peak_ratio']:.3f} "
            f"| {big['peak_ratio_optax']:.3f} |"
        )
    times = mem["times"]
    lines += [
        "",
        "Step time against float32 (4M parameters; wall-clock ratio, process-CPU ratio in "
        "brackets): the update step alone, and a whole train step of a linear model "
        "(batch 64).",
        "",
        "| variant | update | train step |",
        "|---|--:|--:|",
    ]
    for name in times["update"]:
        u, t = times["update"][name], times["train"][name]
        lines.append(
            f"| {name} | {u['ratio']:.2f} ({u['cpu_ratio']:.2f}) "
            f"| {t['ratio']:.2f} ({t['cpu_ratio']:.2f}) |"
        )
    if mem.get("fit"):
        cap = mem["cap_bytes"] / 2**30
        lines += [
            "",
            f"Largest linear model whose jitted init and 3 donated Adam train steps run with a "
            f"peak resident size (`VmHWM`) of at most {cap:.1f} GiB above the size after "
            "imports (bisection, a fresh process per size; `benchmarks/memory_process.py`):",
            "",
            "| variant | params | bytes per param | vs f32 |",
            "|---|--:|--:|--:|",
        ]
        base = mem["fit"]["dlopt f32"]["params"] or 1
        for name, row in mem["fit"].items():
            bpp = f"{row['bytes_per_param']:.2f}" if row["bytes_per_param"] else "-"
            lines.append(
                f"| {name} | {row['params'] / 1e6:.1f}M | {bpp} | {row['params'] / base:.2f} |"
            )
    return lines


def targets(mem: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issue's memory targets: (target, measured, met)."""
    sb, p4 = mem["state_bytes"], mem["peak_4m"]
    update = mem["times"]["update"]["dlopt 8-bit"]
    return [
        (
            "state bytes/param (4M): f32 8.0, bf16 <= 4.05, 8-bit <= 2.2",
            f"{sb['dlopt f32']:.2f}, {sb['dlopt bf16']:.3f}, {sb['dlopt 8-bit']:.3f}",
            abs(sb["dlopt f32"] - 8.0) < 1e-3
            and sb["dlopt bf16"] <= 4.05
            and sb["dlopt 8-bit"] <= 2.2,
        ),
        (
            "peak (argument + temp, 4M) vs f32: bf16 <= 0.85, 8-bit <= 0.80",
            f"{p4['dlopt bf16']['peak_ratio']:.3f}, {p4['dlopt 8-bit']['peak_ratio']:.3f}",
            p4["dlopt bf16"]["peak_ratio"] <= 0.85 and p4["dlopt 8-bit"]["peak_ratio"] <= 0.80,
        ),
        (
            "8-bit update <= 2x the f32 update (4M)",
            f"x{update['ratio']:.2f} wall, x{update['cpu_ratio']:.2f} CPU",
            update["ratio"] <= 2.0,
        ),
    ]


# --- python -m benchmarks.memory --process


def process_report(
    num: int, cap_gb: float, *, fit: bool, variants: tuple[str, ...] | None = None, log=print
) -> dict[str, Any]:
    """`benchmarks.memory_process.table` at ``num`` params, the compiled estimates beside it
    and (``fit``) the largest model under ``cap_gb`` GiB."""
    from benchmarks import memory_process as mp

    rows = mp.table(num, variants or mp.PROCESS_VARIANTS, log=log)
    w = {"w": jax.ShapeDtypeStruct((max(num // COLUMNS, 1), COLUMNS), jnp.float32)}
    estimate = {}
    for name, row in rows.items():
        if "unavailable" not in row:
            estimate[name] = compiled_step_memory(mp.make_tx(name), w)["peak"] / row["params"]
    out: dict[str, Any] = {"params": num, "rows": rows, "estimate": estimate}
    if fit:
        out["cap"] = cap = int(cap_gb * 2**30)
        out["fit"] = {
            name: mp.largest_fit(name, cap, guess_bpp=row["step"], log=log)
            if "unavailable" not in row
            else {}
            for name, row in rows.items()
            if name != "optax f32"
        }
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    p.add_argument("--process", action="store_true", help="the process-peak table (required)")
    p.add_argument("--params", type=float, default=96e6, help="parameters (default 96e6)")
    p.add_argument("--cap-gb", type=float, default=2.0, help="cap of the largest-model search")
    p.add_argument("--no-fit", action="store_true", help="skip the largest-model search")
    p.add_argument("--out", default="benchmarks/results/memory_process", help="path stem")
    p.add_argument("--variants", help="comma-separated subset (default: all; 'dlopt f32' first)")
    args = p.parse_args(argv)
    if not args.process:
        p.error("only --process is run from here; the other figures: python -m benchmarks")
    from benchmarks.memory_process import markdown

    variants = tuple(args.variants.split(",")) if args.variants else None
    result = process_report(int(args.params), args.cap_gb, fit=not args.no_fit, variants=variants)
    cmd = "python -m benchmarks.memory " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [f"Command: `{cmd.strip()}`", "", *markdown(result)]
    result["command"] = cmd.strip()
    print("\n".join(lines))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
