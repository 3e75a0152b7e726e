"""Steps to a target loss, each optimizer tuned over a small learning-rate grid.

``python -m benchmarks.steps_to_target [--quick] [--problems ...] [--optimizers ...]``

Problems where preconditioning should matter:

- ``lstsq``: multi-output least squares ``0.5 mean ||X W - Y||^2`` with a matrix parameter
  ``W`` (64 x 16) and inputs whose covariance has condition number 10^4 (singular values of
  ``X`` spread geometrically over two decades), full batch, noise-free (optimum 0). A
  Kronecker-factored preconditioner sees the input covariance; Adam's diagonal does not.
- ``digits``: a 64-64-10 tanh MLP on scikit-learn's digits (1797 images, bundled: offline),
  mini-batches of 128, the metric the full training cross-entropy.
- ``lm``: the character-level transformer of `benchmarks.lm_problem` (2 layers, width 64,
  context 64, batches of 16), the metric the held-out loss (8 fixed batches).

Every optimizer is ``getattr(dlopt, name)(learning_rate)`` with its other arguments at their
defaults (the rate injected with `dlopt.inject_hyperparams`, so that each optimizer compiles
once per problem), run once per learning rate of its grid (`GRIDS`: five values a factor 3 apart,
centred where that family is usually tuned) from the same initial parameters and batches.
The metric is taken every ``eval_every`` steps; "steps to target" is the first such step
at which it is at or below the problem's target. The best learning rate is the one that
reaches the target first (ties and misses: the lowest final metric). A run whose metric
turns non-finite counts as diverged. An optimizer dlopt does not have is reported as not
available. The markdown table and a JSON of every run go to ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import dlopt

OPTIMIZERS = ("adamw", "soap", "muon", "distributed_shampoo", "kron")
_ADAM_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
GRIDS = {
    "adamw": _ADAM_GRID,
    "soap": _ADAM_GRID,
    "distributed_shampoo": (1e-2, 3e-2, 1e-1, 3e-1, 1.0),  # SGD grafting (the default)
    "muon": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    "kron": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
}
PROBLEMS = ("lstsq", "digits", "lm")
RESULTS = Path(__file__).resolve().parent / "results"


class Problem(NamedTuple):
    """One benchmark problem: a step-indexed loss (its batch picked inside the jit) and a
    deterministic metric, with the target, the step budget and the metric's interval."""

    name: str
    params: Any
    loss: Callable[[Any, jax.Array], jax.Array]  # (params, step index) -> training loss
    metric: Callable[[Any], jax.Array]  # params -> the loss the target is about (jittable)
    target: float
    steps: int
    eval_every: int
    about: str


def lstsq_problem(*, quick: bool = False) -> Problem:
    rng = np.random.default_rng(0)
    n, d, k = (128, 16, 4) if quick else (512, 64, 16)
    basis_u, _ = np.linalg.qr(rng.standard_normal((n, d)))
    basis_v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    singular = np.geomspace(1.0, 1e-2, d)  # X^T X: condition number 1e4
    x = jnp.asarray(np.sqrt(n) * (basis_u * singular) @ basis_v.T, jnp.float32)
    w_star = jnp.asarray(rng.standard_normal((d, k)), jnp.float32)
    y = x @ w_star

    def metric(params):
        return 0.5 * jnp.mean(jnp.sum(jnp.square(x @ params["w"] - y), axis=1))

    params = {"w": jnp.zeros((d, k), jnp.float32)}
    initial = float(metric(params))
    return Problem(
        name="lstsq",
        params=params,
        loss=lambda p, t: metric(p),
        metric=metric,
        target=1e-3 * initial,
        steps=60 if quick else 500,
        eval_every=5,
        about=f"least squares, W {d}x{k}, cond(X^T X) = 1e4, full batch; target 1e-3 x the "
        f"initial loss ({initial:.3g})",
    )


def digits_problem(*, quick: bool = False) -> Problem:
    from sklearn.datasets import load_digits

    data = load_digits()
    x_np = (data.data - data.data.mean(0)) / (data.data.std(0) + 1e-6)
    x = jnp.asarray(x_np, jnp.float32)
    y = jnp.asarray(data.target, jnp.int32)
    steps, batch, hidden = (40, 64, 16) if quick else (600, 128, 64)
    order = np.random.default_rng(0).integers(0, len(x_np), (steps, batch))
    index = jnp.asarray(order, jnp.int32)
    key = jax.random.key(0)
    k1, k2 = jax.random.split(key)
    params = {
        "w1": jax.random.normal(k1, (64, hidden), jnp.float32) / 8.0,
        "b1": jnp.zeros(hidden, jnp.float32),
        "w2": jax.random.normal(k2, (hidden, 10), jnp.float32) / math.sqrt(hidden),
        "b2": jnp.zeros(10, jnp.float32),
    }

    def cross_entropy(p, xs, ys):
        logits = jnp.tanh(xs @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        picked = jnp.take_along_axis(logits, ys[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)

    def loss(p, t):
        rows = index[t]
        return cross_entropy(p, x[rows], y[rows])

    target = 0.3 if quick else 0.01
    return Problem(
        name="digits",
        params=params,
        loss=loss,
        metric=lambda p: cross_entropy(p, x, y),
        target=target,
        steps=steps,
        eval_every=5 if quick else 10,
        about=f"MLP 64-{hidden}-10 (tanh) on sklearn digits, batches of {batch}; target: full "
        f"training cross-entropy <= {target}",
    )


def lm_problem(*, quick: bool = False) -> Problem | None:
    try:
        from benchmarks import lm_problem as lm
    except ImportError:
        return None
    width, context, steps = (16, 16, 20) if quick else (64, 64, 300)
    problem = lm.make_problem(width=width, context=context, seed=0)
    batches = problem.batches(0)
    data = jnp.stack([next(batches) for _ in range(steps)])
    target = 4.0 if quick else 2.5
    return Problem(
        name="lm",
        params=problem.params,
        loss=lambda p, t: problem.loss(p, data[t]),
        metric=lambda p: jnp.asarray(problem.evaluate(p)),
        target=target,
        steps=steps,
        eval_every=10 if quick else 50,
        about=f"character transformer (benchmarks/lm_problem.py: 2 layers, width {width}, "
        f"context {context}, batches of 16); target: held-out loss <= {target} nats/char",
    )


MAKERS = {"lstsq": lstsq_problem, "digits": digits_problem, "lm": lm_problem}


class Runner:
    """Trains ``problem`` with the optimizer ``name`` at any learning rate, compiled once.

    The learning rate is injected (`dlopt.inject_hyperparams`, set with
    `dlopt.set_hyperparam`), so the chunk of ``eval_every`` steps compiles once per problem
    and optimizer; an optimizer that cannot be injected is rebuilt (and recompiled) per rate.
    """

    def __init__(self, problem: Problem, name: str):
        self.problem, self.factory = problem, getattr(dlopt, name)

        def with_rate(learning_rate):  # only the rate is injected
            return self.factory(learning_rate)

        try:
            self.tx = dlopt.inject_hyperparams(with_rate)(learning_rate=1e-3)
            self.tx.init(problem.params)
            self.chunk = self._compile(self.tx)
        except Exception:  # not injectable: built per learning rate
            self.tx = None
        self.metric = problem.metric if problem.name == "lm" else jax.jit(problem.metric)

    def _compile(self, tx):
        problem = self.problem

        def step(carry, t):
            params, state = carry
            grads = jax.grad(problem.loss)(params, t)
            updates, state = tx.update(grads, state, params)
            return (dlopt.apply_updates(params, updates), state), None

        @jax.jit
        def chunk(params, state, start):
            steps = start + jnp.arange(problem.eval_every)
            return jax.lax.scan(step, (params, state), steps)[0]

        return chunk

    def __call__(self, lr: float) -> tuple[list[int], list[float]]:
        """The evaluated steps and the metric at each, for learning rate ``lr``."""
        problem, params = self.problem, self.problem.params
        if self.tx is not None:
            tx, chunk = self.tx, self.chunk
            state = dlopt.set_hyperparam(tx.init(params), "learning_rate", lr)
        else:
            tx = self.factory(lr)
            chunk, state = self._compile(tx), tx.init(params)
        evaluated, values = [0], [float(self.metric(params))]
        for start in range(0, problem.steps, problem.eval_every):
            params, state = chunk(params, state, jnp.int32(start))
            value = float(self.metric(params))
            evaluated.append(start + problem.eval_every)
            values.append(value)
            if not math.isfinite(value):
                break
        return evaluated, values


def steps_to(evaluated: Sequence[int], values: Sequence[float], target: float) -> int | None:
    for step, value in zip(evaluated, values, strict=True):
        if math.isfinite(value) and value <= target:
            return step
    return None


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def key(r):
        final = r["final"] if math.isfinite(r["final"]) else math.inf
        return (r["steps_to_target"] is None, r["steps_to_target"] or 0, final)

    return min(runs, key=key)


def benchmark(
    problems: Sequence[str],
    optimizers: Sequence[str],
    *,
    quick: bool,
    log: Callable[[str], Any] = print,
    save: Callable[[dict[str, Any]], Any] = lambda result: None,
) -> dict[str, Any]:
    """Every run of ``optimizers`` on ``problems``; ``save(result so far)`` after each
    optimizer's grid, so a run cut short keeps what it measured."""
    out: dict[str, Any] = {"problems": {}, "available": {}, "quick": quick}
    for name in optimizers:
        out["available"][name] = hasattr(dlopt, name)
    for pname in problems:
        problem = MAKERS[pname](quick=quick)
        if problem is None:
            out["problems"][pname] = {"missing": "benchmarks/lm_problem.py is not there"}
            log(f"{pname}: skipped (benchmarks/lm_problem.py is not there)")
            continue
        entry: dict[str, Any] = {"about": problem.about, "target": problem.target, "runs": {}}
        for name in optimizers:
            if not out["available"][name]:
                continue
            grid = GRIDS[name][1:4:2] if quick else GRIDS[name]
            runs, runner = [], Runner(problem, name)
            for lr in grid:
                start = time.perf_counter()
                evaluated, values = runner(lr)
                reached = steps_to(evaluated, values, problem.target)
                runs.append(
                    {
                        "learning_rate": lr,
                        "steps_to_target": reached,
                        "final": values[-1],
                        "diverged": not math.isfinite(values[-1]),
                        "seconds": time.perf_counter() - start,
                        "curve": list(zip(evaluated, values, strict=True)),
                    }
                )
                log(
                    f"{pname} {name} lr={lr:g}: steps to target "
                    f"{reached if reached is not None else '-'}, final {values[-1]:.4g} "
                    f"({runs[-1]['seconds']:.1f} s)"
                )
            entry["runs"][name] = runs
            out["problems"][pname] = entry
            save(out)
        out["problems"][pname] = entry
    return out


def markdown(result: dict[str, Any], command: str) -> str:
    available = [n for n, ok in result["available"].items() if ok]
    missing = [n for n, ok in result["available"].items() if not ok]
    lines = [
        "# Steps to target",
        "",
        f"`{command}` on {platform.machine()} CPU, jax {jax.__version__}. Each optimizer: "
        "`getattr(dlopt, name)(learning_rate)`, other arguments at their defaults, over its "
        "learning-rate grid; the best learning rate reaches the target in the fewest steps "
        '(misses: the lowest final metric); "grid edge": the best rate is the grid\'s smallest '
        "or largest, so the optimum may lie outside it.",
        "",
        f"Available: {', '.join(available) or 'none'}. "
        f"Not available: {', '.join(missing) or 'none'}.",
        "",
    ]
    for pname, entry in result["problems"].items():
        lines.append(f"## {pname}")
        lines.append("")
        if "missing" in entry:
            lines += [f"Skipped: {entry['missing']}.", ""]
            continue
        lines += [entry["about"] + ".", ""]
        lines.append("| optimizer | best lr | steps to target | final metric | lrs reaching it |")
        lines.append("|---|---|---|---|---|")
        for name, ok in result["available"].items():
            if not ok:
                lines.append(f"| {name} | not available | | | |")
                continue
            if name not in entry["runs"]:
                lines.append(f"| {name} | not run (yet) | | | |")
                continue
            runs = entry["runs"][name]
            best = _best(runs)
            steps = best["steps_to_target"]
            reached = sum(r["steps_to_target"] is not None for r in runs)
            diverged = sum(r["diverged"] for r in runs)
            note = f"{reached}/{len(runs)}" + (f" ({diverged} diverged)" if diverged else "")
            lr = f"{best['learning_rate']:g}"
            if best["learning_rate"] in (runs[0]["learning_rate"], runs[-1]["learning_rate"]):
                lr += " (grid edge)"
            lines.append(
                f"| {name} | {lr} | "
                f"{steps if steps is not None else 'not reached'} | {best['final']:.3g} | {note} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.steps_to_target", description=__doc__)
    p.add_argument("--quick", action="store_true", help="test-sized problems, two lrs each")
    p.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    p.add_argument("--name", default=None, help="file stem (default steps_to_target[_quick])")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("steps_to_target_quick" if args.quick else "steps_to_target")
    command = "python -m benchmarks.steps_to_target " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )

    def save(result: dict[str, Any]) -> None:
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / f"{stem}.md").write_text(markdown(result, command.strip()) + "\n")

    save(benchmark(args.problems, args.optimizers, quick=args.quick, save=save))
    print(f"wrote {out / stem}.md and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
