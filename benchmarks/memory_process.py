"""Optimizer memory as a process sees it: peak resident bytes per parameter, fresh subprocesses.

XLA's ``memory_analysis()`` (`benchmarks.memory`) describes one compiled function; a user's
process also holds what eager calls, compilation and the allocator leave behind. Here each
variant runs in a fresh subprocess (issue 20; on a GPU, one per phase):

1. import jax, dlopt and optax, run one tiny jitted function; ``base`` = resident size now;
2. make the float32 parameters on the device: one ``rows x 1024`` matrix ``W`` of a linear
   model (a jitted fill, nothing on the host), compile ``jax.jit(tx.init)`` and the step;
3. each phase, after freeing the previous one's state (``gc``, ``malloc_trim``) and
   resetting the high-water mark (``/proc/self/clear_refs`` "5": it drops to the current
   size), in the order

   * ``init_jit``: ``state = jax.jit(tx.init)(params)`` (compiled ahead);
   * ``step``: ``state = jax.jit(tx.init)(params)``, then 3 jitted train steps of
     ``mean((x @ W - y)^2)``, ``W`` and the state donated, batch 8 (``x``: 1/32 byte per
     parameter);
   * ``init``: ``state = tx.init(params)``, eager, run once before to fill the op caches;

4. ``peak`` = ``VmHWM`` (``/proc/self/status``) minus ``base``, per parameter: params, state,
   gradients and every temporary, plus what the process gained besides (compiled code,
   caches: ``overhead``, its resident size when the phase began less ``base`` and the live
   buffers, 0 when some of those were not yet resident); ``net`` = ``peak - overhead``, the
   per-parameter part that the targets are stated for. On a GPU backend the figure is
   ``device.memory_stats()['peak_bytes_in_use']`` instead (device memory; there is no reset,
   so each phase has its own process; compilation allocates no device buffers).

`largest_fit` finds the largest parameter count whose init + 3 train steps run with a peak of
at most ``cap`` bytes above ``base``: ``RLIMIT_AS`` cannot be used (JAX reserves far more
virtual memory than it touches), so each trial's child polls its own ``VmRSS`` in a thread and
exits when above the cap, and at the end compares the exact ``VmHWM`` with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

PHASES = ("init", "init_jit", "step")
COLUMNS, BATCH, STEPS = 1024, 8, 3
BASE = "dlopt f32"  # ratios are to this variant, measured in the same run
PROCESS_VARIANTS = ("optax f32", "dlopt f32", "dlopt bf16", "dlopt 8-bit", "dlopt 4-bit")


def status_bytes(field: str) -> int:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes (Linux only)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _settle(*, reset: bool = True) -> None:
    """Free what Python and the C allocator still hold, then reset the high-water mark."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _watchdog(limit: int) -> None:
    """Exit the process (code 3) as soon as its resident size passes ``limit`` bytes."""
    import threading
    import time

    def poll() -> None:
        while True:
            if status_bytes("VmRSS") > limit:
                os._exit(3)
            time.sleep(0.002)

    threading.Thread(target=poll, daemon=True).start()


def make_tx(variant: str) -> Any:
    """The transform of ``variant``; ``ValueError``/``TypeError`` if it does not exist here."""
    import dlopt
    from benchmarks.memory import LR, VARIANTS

    if variant == "dlopt 4-bit":
        return dlopt.quantized(dlopt.adam(LR), bits=4)
    return VARIANTS[variant]()


def child(
    variant: str, num: int, phases: tuple[str, ...] = PHASES, cap: int | None = None
) -> list[dict[str, Any]]:
    """The measurements of one fresh process (see the module docstring), one row per phase."""
    import jax
    import jax.numpy as jnp

    import dlopt

    jax.jit(lambda x: x + 1)(jnp.zeros(4)).block_until_ready()
    dev = jax.devices()[0]
    gpu = dev.platform == "gpu"
    _settle()
    base = dev.memory_stats()["bytes_in_use"] if gpu else status_bytes("VmRSS")
    if cap is not None and not gpu:
        _watchdog(base + cap)
    tx = make_tx(variant)
    rows = max(num // COLUMNS, 1)
    n = rows * COLUMNS
    params = jax.jit(
        lambda: jnp.arange(n, dtype=jnp.float32).reshape(rows, COLUMNS) * (1.0 / n)
    )().block_until_ready()
    x = jnp.full((BATCH, rows), 1.0 / rows, jnp.float32)
    y = jnp.ones((BATCH, COLUMNS), jnp.float32)

    def train(w, state, x, y):
        g = jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(w)
        u, state = tx.update(g, state, w)
        return dlopt.apply_updates(w, u), state

    # compile everything first, so the residue of compilation is the same for every phase
    init_jit = jax.jit(tx.init).lower(params).compile()
    step = jax.jit(train, donate_argnums=(0, 1))
    step = step.lower(params, jax.eval_shape(tx.init, params), x, y).compile()
    out = []
    # eager init last: its warm-up (and whatever a spiky init leaves behind) stays out of the
    # other phases; the step's updated W serves as its params
    for phase in sorted(phases, key=("init_jit", "step", "init").index):
        state = None
        if phase == "step":
            state = init_jit(params)
        elif phase == "init" and not gpu:  # eager: warm the op caches at this size
            jax.block_until_ready(tx.init(params))
        _settle(reset=cap is None)
        live = sum(a.nbytes for a in jax.tree.leaves((params, state, x, y)))
        start = dev.memory_stats()["bytes_in_use"] if gpu else status_bytes("VmRSS")
        if phase == "init":
            state = jax.block_until_ready(tx.init(params))
        elif phase == "init_jit":
            state = jax.block_until_ready(init_jit(params))
        else:
            for _ in range(STEPS):
                params, state = step(params, state, x, y)
            jax.block_until_ready(state)
        peak = dev.memory_stats()["peak_bytes_in_use"] if gpu else status_bytes("VmHWM")
        out.append({
            "variant": variant,
            "phase": phase,
            "params": n,
            "backend": dev.platform,
            "peak_bytes": peak - base,
            "state_bytes": sum(a.nbytes for a in jax.tree.leaves(state)),
            # < 0 when part of the live buffers was not yet resident (pages never written)
            "overhead_bytes": max(start - base - live, 0),
        })  # fmt: skip
    return sorted(out, key=lambda row: PHASES.index(row["phase"]))


# --- the parent: one subprocess per measurement


def _spawn(args: list[str], timeout_s: float) -> tuple[int, dict[str, Any] | None, str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "benchmarks.memory_process", "--child", *args]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root
        )
    except subprocess.TimeoutExpired:
        return -1, None, "timeout"
    lines = [line for line in out.stdout.splitlines() if line.startswith(("{", "["))]
    return out.returncode, (json.loads(lines[-1]) if lines else None), out.stderr[-2000:]


def measure(
    variant: str, num: int, phases: tuple[str, ...] = PHASES, timeout_s: float = 900
) -> list[dict[str, Any]] | dict[str, str]:
    """`child` in a fresh process (one per phase on a GPU, whose peak cannot be reset), or
    ``{"unavailable": reason}`` for a variant this dlopt cannot build."""
    import jax

    groups = [(p,) for p in phases] if jax.default_backend() == "gpu" else [phases]
    rows: list[dict[str, Any]] = []
    for group in groups:
        rc, got, err = _spawn([variant, str(num), ",".join(group)], timeout_s)
        if isinstance(got, dict) and "unavailable" in got:
            return got
        if got is None or rc != 0:
            raise RuntimeError(f"{variant} {group} at {num} params failed (rc {rc}): {err}")
        rows += got
    return rows


def table(
    num: int,
    variants: tuple[str, ...] = PROCESS_VARIANTS,
    phases: tuple[str, ...] = PHASES,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Per variant: ``state`` (returned state), ``<phase>`` (peak above the after-imports
    size), ``<phase>_overhead`` (what the process held beyond live buffers when the phase
    began: compiled code, caches) and ``<phase>_net`` (the difference), all in bytes per
    parameter, and ``<phase>_ratio``: net peak over float32 dlopt's (`BASE`) in this run."""
    rows: dict[str, dict[str, Any]] = {}
    for variant in variants:
        got = measure(variant, num, phases)
        if isinstance(got, dict):
            rows[variant] = {"unavailable": got["unavailable"]}
            log(f"  {variant:12s} not available: {got['unavailable']}")
            continue
        n = got[0]["params"]
        row: dict[str, Any] = {"params": n, "backend": got[0]["backend"]}
        for r in got:
            row["state"] = r["state_bytes"] / n
            row[r["phase"]] = r["peak_bytes"] / n
            row[r["phase"] + "_overhead"] = r["overhead_bytes"] / n
            row[r["phase"] + "_net"] = (r["peak_bytes"] - r["overhead_bytes"]) / n
            net = row[r["phase"] + "_net"]
            log(f"  {variant:12s} {r['phase']:8s} peak {row[r['phase']]:6.2f} B/param, "
                f"net {net:6.2f} (state {row['state']:.2f})")  # fmt: skip
        rows[variant] = row
    base = rows.get(BASE, {})
    for row in rows.values():
        for phase in phases:
            if phase in row and base.get(phase):
                row[phase + "_ratio"] = row[phase + "_net"] / base[phase + "_net"]
    return rows


def fits(variant: str, num: int, cap: int, timeout_s: float = 600) -> bool:
    """Whether init + 3 train steps of ``num`` parameters stay within ``cap`` bytes."""
    rc, rows, _ = _spawn([variant, str(num), "step", str(cap)], timeout_s)
    return rc == 0 and isinstance(rows, list) and rows[0]["peak_bytes"] <= cap


def largest_fit(
    variant: str,
    cap: int,
    *,
    guess_bpp: float | None = None,
    rel_tol: float = 0.02,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bisection over parameter counts (multiples of 1024) for the largest that fits ``cap``.

    The bracket starts at ``cap / guess_bpp`` +-8% (a measured step peak per parameter), else
    between ``cap / 24`` and ``cap / 8`` (params + grads alone take 8 bytes per parameter); a
    lower end that does not fit is halved, an upper end that fits is doubled."""
    grid = lambda x: max(int(x) // COLUMNS * COLUMNS, COLUMNS)  # noqa: E731
    if guess_bpp:
        lo, hi = grid(cap / guess_bpp / 1.08), grid(cap / guess_bpp * 1.08)
    else:
        lo, hi = grid(cap / 24), grid(cap / 8)
    trials = []

    def trial(num: int) -> bool:
        ok = fits(variant, num, cap)
        trials.append({"params": num, "fits": ok})
        log(f"    {variant:12s} {num / 1e6:8.2f}M params: {'fits' if ok else 'does not fit'}")
        return ok

    while lo > COLUMNS and not trial(lo):
        lo, hi = grid(lo / 2), lo
    while guess_bpp and trial(hi):
        lo, hi = hi, grid(hi * 2)
    while hi - lo > max(rel_tol * lo, COLUMNS):
        mid = grid((lo + hi) // 2)
        lo, hi = (mid, hi) if trial(mid) else (lo, mid)
    return {"params": lo, "bytes_per_param": cap / lo if lo else None, "trials": trials}


# --- what the README and benchmarks/results quote

TARGETS = {"dlopt bf16": 0.80, "dlopt 8-bit": 0.68, "dlopt 4-bit": 0.62}  # step peak vs f32
FIT_TARGETS = {"dlopt bf16": 1.3, "dlopt 8-bit": 1.5, "dlopt 4-bit": 1.65}  # params vs f32


def init_bound(row: dict[str, Any]) -> float:
    """The issue's init target: params (4 B) + returned state + 0.5 bytes per parameter."""
    return 4.0 + row["state"] + 0.5


def markdown(result: dict[str, Any]) -> list[str]:
    """The process table, the targets and the largest-model table, as markdown lines."""
    rows, num = result["rows"], result["params"]
    backend = next((r["backend"] for r in rows.values() if "backend" in r), "?")
    what = "device `peak_bytes_in_use`" if backend == "gpu" else "`VmHWM`"
    lines = [
        f"Peak memory of a fresh process per variant ({backend}, {num / 1e6:.0f}M float32 "
        f"params, Adam; {what} above the size after imports, in bytes per parameter; in "
        "brackets the same net of what the process held beyond its live buffers when the phase "
        "began, compiled code and caches; ratios are of the net figures, to dlopt float32 in "
        "the same run). `compiled estimate`: argument + temp bytes of the donated step from "
        "XLA's `memory_analysis()`, an estimate for one compiled function, not a measurement.",
        "",
        "| Adam state | state | init, eager `tx.init` | init, `jax.jit(tx.init)` "
        "| train step | step vs f32 | compiled estimate |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, r in rows.items():
        if "unavailable" in r:
            lines.append(f"| {name} | not available: {r['unavailable']} |||||")
            continue
        cell = lambda p, r=r: f"{r[p]:.2f} ({r[p + '_net']:.2f})"  # noqa: E731
        est = result.get("estimate", {}).get(name)
        lines.append(
            f"| {name} | {r['state']:.2f} | {cell('init')} | {cell('init_jit')} "
            f"| {cell('step')} | {r['step_ratio']:.3f} | {f'{est:.2f}' if est else '-'} |"
        )
    lines += ["", "| target | measured | met |", "|---|--:|--:|"]
    for name, r in rows.items():
        if "unavailable" in r:
            lines.append(f"| {name}: every target | not available | missed |")
            continue
        bound = init_bound(r)
        worst = max(r["init_net"], r["init_jit_net"])
        ok = "yes" if worst <= bound else "**missed**"
        got = f"eager {r['init_net']:.2f}, jit {r['init_jit_net']:.2f}"
        lines.append(f"| {name}: init net peak <= {bound:.2f} (params + state + 0.5) "
                     f"| {got} | {ok} |")  # fmt: skip
        if name in TARGETS:
            ok = "yes" if r["step_ratio"] <= TARGETS[name] else "**missed**"
            lines.append(f"| {name}: step <= {TARGETS[name]} of f32 "
                         f"| {r['step_ratio']:.3f} | {ok} |")  # fmt: skip
    if result.get("fit"):
        fit, cap = result["fit"], result["cap"]
        base = fit.get(BASE, {}).get("params") or 1
        lines += [
            "",
            f"Largest linear model whose jitted `tx.init` and 3 donated train steps run with a "
            f"peak (`VmHWM`) of at most {cap / 2**30:.1f} GiB above the size after imports "
            "(bisection, a fresh process per size, killed by a watchdog when its resident size "
            "passes the cap):",
            "",
            "| Adam state | params | bytes per param | vs f32 | target |",
            "|---|--:|--:|--:|--:|",
        ]
        for name, r in fit.items():
            if not r.get("params"):
                lines.append(f"| {name} | not available | | | |")
                continue
            goal = FIT_TARGETS.get(name)
            ratio = r["params"] / base
            met = "" if goal is None else f">= {goal}: {'met' if ratio >= goal else '**missed**'}"
            lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['bytes_per_param']:.2f} "
                         f"| {ratio:.2f} | {met} |")  # fmt: skip
    return lines


def _main_child(argv: list[str]) -> None:
    variant, num, phases = argv[0], int(float(argv[1])), tuple(argv[2].split(","))
    cap = int(argv[3]) if len(argv) > 3 else None
    try:
        make_tx(variant)
    except (ValueError, TypeError, NotImplementedError) as e:
        print(json.dumps({"unavailable": str(e).splitlines()[0]}), flush=True)
        return
    print(json.dumps(child(variant, num, phases, cap)), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _main_child(sys.argv[2:])
