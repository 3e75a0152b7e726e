"""Quality of Adam with 8-bit and 4-bit state: final losses against float32 Adam.

Three problems, each trained from the same start with the same data:

* ``lstsq``: least squares, 512 x 64 features spread over 1.5 decades, 64 targets, full
  batch, 600 steps of Adam(1e-2); the final loss;
* ``digits``: a 64-128-128-10 ReLU MLP on all 1797 scikit-learn digits (full batch, L2
  1e-4), 600 steps of Adam(1e-3); the final loss;
* ``lm``: `benchmarks.lm_problem` (a 2-layer, width-64 character transformer on Python
  docstrings), 300 steps of Adam(3e-3) on batches of 16 x 64; the held-out loss at the end.

Variants: ``f32`` (``dlopt.adam``), ``q8`` (``dlopt.quantized(adam)``), ``q4``
(``dlopt.quantized(adam, bits=4)``, where this dlopt has it), and 4-bit Adams written here
from `dlopt.wrappers.codes4` to take the design apart: ``paper`` (m: block 128 + signed DE
code; v: rank-1 normalization + linear code without zero point, Li et al. 2023; stochastic
rounding), ``paper_nearest`` (the same, rounded to nearest), ``v_block`` (v normalized per
block of 128 instead of rank-1, as torchao does), ``v_zero`` (rank-1, but the linear code
{0, 1/15, ..., 1} with a zero point) and ``v_block_zero`` (both). Leaves under 4096
elements stay float32 in every quantized variant.

Run ``python -m benchmarks.quantized_quality`` (about 5 minutes of CPU); it prints and
writes ``benchmarks/results/quantized_quality.md``. ``--problems``, ``--variants`` and the
LM's ``--seed`` pick a part (printed only).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import dlopt
from benchmarks import lm_problem
from dlopt.wrappers import codes4

RESULTS = pathlib.Path(__file__).parent / "results"
MIN_SIZE = 4096
LEARNING_RATES = {"lstsq": 1e-2, "digits": 1e-3, "lm": 3e-3}


# --- a 4-bit Adam for taking the second moment's code apart


class Adam4State(NamedTuple):
    count: jax.Array
    mu: Any  # per leaf: (codes, scales) or a float32 array (small leaves)
    nu: Any  # per leaf: (codes, stats) or a float32 array


def adam4_reference(
    learning_rate: float,
    *,
    v_norm: str = "rank1",
    zero_point: bool = False,
    rounding: str = "stochastic",
    moments: tuple[str, ...] = ("mu", "nu"),
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> dlopt.GradientTransformation:
    """Adam whose m and v live in 4-bit codes between steps.

    ``rounding="stochastic"`` (unbiased, the noise hashed from (step, leaf, index) as in
    `dlopt.quantized`) or ``"nearest"``: with nearest rounding a moment stops moving once its
    per-step change, (1 - b) (g - m) or (1 - b2) (g^2 - v), is under half a code step, and
    at 4 bits that is most of the time (v moves 0.1% per step, its codes are 1/16 apart).
    ``moments`` names the moments stored in 4 bits (the others stay float32).

    m: `codes4.quantize4_block` (block 128, signed DE code). v: `codes4.quantize4_rank1`
    (``v_norm="rank1"``) or the same code on the flattened leaf, i.e. per block of 128
    (``"block"``); ``zero_point`` switches v's code to one with a zero.
    """
    if v_norm not in ("rank1", "block"):
        raise ValueError(f"v_norm must be 'rank1' or 'block'; got {v_norm=}")
    if rounding not in ("stochastic", "nearest"):
        raise ValueError(f"rounding must be 'stochastic' or 'nearest'; got {rounding=}")

    def big(x, moment="mu"):
        return x.size >= MIN_SIZE and moment in moments

    def seed(count, leaf, salt):
        if rounding == "nearest":
            return None
        return dlopt.numerics.state_seed(count, leaf, salt)

    def encode_m(m, s=None):
        return codes4.quantize4_block(m, seed=s)

    def encode_v(v, s=None):
        flat = v.reshape(-1) if v_norm == "block" else v
        return codes4.quantize4_rank1(flat, zero_point=zero_point, seed=s)

    def decode_v(stored, like):
        shape = (like.size,) if v_norm == "block" else like.shape
        v = codes4.dequantize4_rank1(*stored, shape, zero_point=zero_point)
        return v.reshape(like.shape)

    def init(params):
        def leaf_mu(p):
            return codes4.quantize4_block(jnp.zeros_like(p)) if big(p) else jnp.zeros_like(p)

        def leaf_nu(p):
            return encode_v(jnp.zeros_like(p)) if big(p, "nu") else jnp.zeros_like(p)

        mu = jax.tree.map(leaf_mu, params)
        nu = jax.tree.map(leaf_nu, params)
        return Adam4State(jnp.zeros([], jnp.int32), mu, nu)

    def update(grads, state, params=None):
        del params
        count = state.count + 1
        treedef = jax.tree.structure(grads)
        flat_g = treedef.flatten_up_to(grads)
        flat_mu = treedef.flatten_up_to(state.mu)
        flat_nu = treedef.flatten_up_to(state.nu)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)
        updates, mus, nus = [], [], []
        for i, (g, mu, nu) in enumerate(zip(flat_g, flat_mu, flat_nu, strict=True)):
            m = codes4.dequantize4_block(*mu, g.shape) if big(g) else mu
            v = decode_v(nu, g) if big(g, "nu") else nu
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            updates.append(-learning_rate * (m / c1) / (jnp.sqrt(v / c2) + eps))
            mus.append(encode_m(m, seed(count, i, 1)) if big(g) else m)
            nus.append(encode_v(v, seed(count, i, 2)) if big(g, "nu") else v)
        unflat = functools.partial(jax.tree.unflatten, treedef)
        return unflat(updates), Adam4State(count, unflat(mus), unflat(nus))

    return dlopt.GradientTransformation(init, update)


# --- the problems


def lstsq_problem(n: int = 512, d: int = 64, k: int = 64, noise: float = 0.01):
    """Least squares with features spread over 1.5 decades: ``(loss, initial params)``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, d)) * np.logspace(0, -1.5, d)
    b = a @ rng.standard_normal((d, k)) + noise * rng.standard_normal((n, k))
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    return (lambda p: jnp.mean((a @ p["w"] - b) ** 2)), {"w": jnp.zeros((d, k), jnp.float32)}


def digits_problem(hidden: int = 128, l2: float = 1e-4):
    """A 64-128-128-10 ReLU MLP on all 1797 digits (full batch), L2 penalty."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
    rng = np.random.default_rng(0)
    params = {}
    for i, (fan_in, fan_out) in enumerate([(64, hidden), (hidden, hidden), (hidden, 10)]):
        w = rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)
        params[f"w{i}"] = jnp.asarray(w, jnp.float32)
        params[f"b{i}"] = jnp.zeros(fan_out, jnp.float32)

    def loss(p):
        h = x
        for i in range(3):
            h = h @ p[f"w{i}"] + p[f"b{i}"][None, :]
            h = jax.nn.relu(h) if i < 2 else h
        ce = jax.nn.logsumexp(h, -1) - jnp.take_along_axis(h, y[:, None], 1)[:, 0]
        return jnp.mean(ce) + l2 * sum(jnp.sum(p[f"w{i}"] ** 2) for i in range(3))

    return loss, params


def full_batch_final_loss(problem, tx: dlopt.GradientTransformation, steps: int = 600) -> float:
    """The loss after ``steps`` full-batch steps of ``tx`` (one jitted scan)."""
    loss, params = problem

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            updates, state = tx.update(jax.grad(loss)(params), state, params)
            return (dlopt.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return loss(params)

    return float(run(params))


LM_SEED = [0]  # the LM's seed (initial parameters and batches); --seed sets it


def lm_final_loss(tx: dlopt.GradientTransformation, steps: int = 300) -> float:
    """The held-out loss of `benchmarks.lm_problem` after ``steps`` steps of ``tx``."""
    problem = _lm(LM_SEED[0])
    params, _ = lm_problem.run(tx, steps, LM_SEED[0], problem=problem)
    return problem.evaluate(params)


@functools.cache
def _lm(seed: int) -> lm_problem.LMProblem:
    return lm_problem.make_problem(seed=seed)


PROBLEMS: dict[str, Callable[[dlopt.GradientTransformation], float]] = {
    "lstsq": lambda tx: full_batch_final_loss(lstsq_problem(), tx),
    "digits": lambda tx: full_batch_final_loss(digits_problem(), tx),
    "lm": lm_final_loss,
}


def _has_4bit() -> bool:
    try:
        dlopt.quantized(dlopt.adam(1e-3), bits=4)
    except ValueError:
        return False
    return True


def variants(lr: float) -> dict[str, dlopt.GradientTransformation]:
    """Every contender at learning rate ``lr`` (``q4`` only where dlopt has 4-bit state)."""
    out = {
        "f32": dlopt.adam(lr),
        "q8": dlopt.quantized(dlopt.adam(lr), min_size=MIN_SIZE),
    }
    if _has_4bit():
        out["q4"] = dlopt.quantized(dlopt.adam(lr), bits=4, min_size=MIN_SIZE)
    out["paper"] = adam4_reference(lr)
    out["paper_nearest"] = adam4_reference(lr, rounding="nearest")
    out["v_block"] = adam4_reference(lr, v_norm="block")
    out["v_zero"] = adam4_reference(lr, zero_point=True)
    out["v_block_zero"] = adam4_reference(lr, v_norm="block", zero_point=True)
    return out


def quality(
    problem: str, names: tuple[str, ...] | None = None, *, verbose: bool = False
) -> dict[str, float]:
    """Final loss of each variant (all, or ``names``) on ``problem``."""
    out = {}
    for name, tx in variants(LEARNING_RATES[problem]).items():
        if names is None or name in names:
            out[name] = PROBLEMS[problem](tx)
            if verbose:
                print(f"{problem} {name}: {out[name]:.5g}", flush=True)
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: final losses and their ratio to float32's, one row per variant."""
    names = list(next(iter(results.values())))
    problems = list(results)
    head = "| state | " + " | ".join(f"{p} loss | {p} / f32" for p in problems) + " |"
    rule = "|---|" + "--:|--:|" * len(problems)
    rows = [head, rule]
    for name in names:
        cells = []
        for p in problems:
            loss, ref = results[p][name], results[p]["f32"]
            cells += [f"{loss:.4g}", f"{loss / ref:.3f}" if np.isfinite(loss) else "diverged"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--variants", nargs="+", help="a subset (f32 always runs)")
    parser.add_argument("--seed", type=int, default=0, help="the LM's seed")
    args = parser.parse_args(argv)
    LM_SEED[0] = args.seed
    names = None if args.variants is None else ("f32", *args.variants)
    results = {p: quality(p, names, verbose=True) for p in args.problems}
    text = table(results)
    print(text)
    if args.variants is not None or args.seed != 0:
        return  # the results file holds the default run only
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantized_quality.md").write_text(
        "Final loss of Adam with 8-bit and 4-bit state against float32 "
        "(`python -m benchmarks.quantized_quality`).\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
