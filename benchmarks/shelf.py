"""The rest of the optimizer shelf against optax: every optimizer dlopt shares with optax or
optax.contrib, plain rule against plain rule (``update + apply_updates``, jitted, donated),
on the ResNet-like and transformer trees of `benchmarks.update_step`.

The first eleven families are timed in `benchmarks.update_step` (with the fused contenders);
SOAP, which optax lacks, is timed against AdamW so its preconditioning cost is visible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

import dlopt
from benchmarks.report import case_line
from benchmarks.timing import Runner, interleaved
from benchmarks.update_step import LR, copy, make_tree, num_params, step_fn, tree_shapes


def _contrib(name: str) -> Callable[..., Any]:
    return getattr(optax, name, None) or getattr(optax.contrib, name)


def _same(name: str, **kwargs: Any) -> tuple[Callable, Callable]:
    """(dlopt builder, optax builder) of the same-named optimizer with the same arguments."""
    return (
        lambda lr: getattr(dlopt, name)(lr, **kwargs),
        lambda lr: _contrib(name)(lr, **kwargs),
    )


SHELF: dict[str, tuple[Callable[[float], Any], Callable[[float], Any]]] = {
    name: _same(name)
    for name in (
        "radam",
        "amsgrad",
        "adabelief",
        "yogi",
        "adan",
        "adamaxw",
        "novograd",
        "lamb",
        "lars",
        "fromage",
        "sm3",
        "sign_sgd",
        "signum",
        "optimistic_gradient_descent",
        "optimistic_adam_v2",
        "adopt",
        "ademamix",
        "simplified_ademamix",
        "schedule_free_adamw",
        "schedule_free_sgd",
        "prodigy",
        "dadapt_adamw",
    )
}
SHELF["adafactor"] = (lambda lr: dlopt.adafactor(lr), lambda lr: optax.adafactor(lr))
SHELF["noisy_sgd"] = _same("noisy_sgd", key=0)
SHELF["muon"] = (
    lambda lr: dlopt.muon(lr, infer_dimension_numbers=False),  # optax's rule: 2-D leaves
    lambda lr: optax.contrib.muon(lr),
)
SHELF["soap_vs_adamw"] = (lambda lr: dlopt.soap(lr), lambda lr: optax.adamw(lr))
TREES = ("resnet50", "transformer12")


def runners_for(name: str, params: Any, grads: Any) -> dict[str, Runner]:
    make_dlopt, make_optax = SHELF[name]
    tx_optax, tx_dlopt = make_optax(LR), make_dlopt(LR)
    with jax.numpy_dtype_promotion("standard"):
        optax_state = tx_optax.init(params)
    # copies all round: a state may hold the params themselves (schedule-free's z), and the
    # carry is donated, so nothing in it may alias ``params`` or another carry leaf
    return {
        "optax": Runner(step_fn(tx_optax, optax.apply_updates), copy((params, optax_state)), grads),
        "dlopt": Runner(
            step_fn(tx_dlopt, dlopt.apply_updates), copy((params, tx_dlopt.init(params))), grads
        ),
    }


def run(
    trees: list[str],
    names: list[str],
    *,
    reps: int,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Times every shelf optimizer on every tree; one row per (tree, optimizer)."""
    rows = []
    for tree in trees:
        shapes = tree_shapes(tree, 0)
        params, grads = make_tree(shapes, 0, 0.1), make_tree(shapes, 1, 0.01)
        for name in names:
            with jax.numpy_dtype_promotion("standard"):  # optax is not strict-promotion clean
                results = interleaved(runners_for(name, params, grads), reps=reps)
            rows.append(
                {
                    "tree": tree,
                    "optimizer": name,
                    "leaves": len(shapes),
                    "params": num_params(params),
                    "results": results,
                }
            )
            log(case_line(f"{tree:13s} {name:27s}", results))
        del params, grads
    return rows


def sections(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One report table per tree: optax's median time, dlopt's speed-up, compile times; its
    figure panel leaves out ``soap_vs_adamw`` (a different rule, not a parity figure)."""
    from benchmarks.report import fmt_speedup, section, speedup

    out = []
    for tree in dict.fromkeys(r["tree"] for r in rows):
        mine = [r for r in rows if r["tree"] == tree]
        cells = [
            [
                row["optimizer"],
                f"{1e3 * row['results']['optax']['median_s']:.2f} ms",
                fmt_speedup(speedup(row["results"]["dlopt"])),
                f"{row['results']['optax']['compile_s']:.2f} s",
                f"{row['results']['dlopt']['compile_s']:.2f} s",
            ]
            for row in mine
        ]
        plotted = [r for r in mine if r["optimizer"] != "soap_vs_adamw"]
        out.append(
            section(
                f"The rest of the shelf, {tree} ({mine[0]['leaves']} leaves)",
                "(plain dlopt rule vs optax's, `update + apply_updates`, jit, donated; "
                "speed-up > 1 is faster; soap_vs_adamw times SOAP against optax's AdamW)",
                ["optimizer", "optax", "dlopt speed-up", "compile optax", "compile dlopt"],
                cells,
                labels=[r["optimizer"] for r in plotted],
                speedups={"dlopt": [speedup(r["results"]["dlopt"]) for r in plotted]},
            )
        )
    return out


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """Issue 10's target: no plain rule slower than optax beyond the noise (speed-up >= 1/1.05)
    on the ResNet-like and transformer trees (SOAP, which optax lacks, left out)."""
    from benchmarks.report import fmt_speedup, speedup

    out = []
    for tree in sorted({r["tree"] for r in rows}):
        found = [
            (speedup(r["results"]["dlopt"]), r["optimizer"])
            for r in rows
            if r["tree"] == tree and r["optimizer"] != "soap_vs_adamw"
        ]
        if found:
            s, name = min(found)
            slow = [n for v, n in found if v < 1 / 1.05]
            out.append(
                (
                    f"{tree}: every shelf optimizer no slower than optax (within 1.05x)",
                    f"worst {fmt_speedup(s)} ({name}); slower than 1/1.05: {slow or 'none'}",
                    not slow,
                )
            )
    return out
