"""A small character-level transformer language model, offline, for optimizer comparisons.

The corpus is the docstrings of 26 modules of Python's own standard library (the module's,
then those of its public names in sorted order; about 340k characters on Python 3.11; the
exact text follows the running Python's version), read with `inspect.getdoc`, so nothing is
downloaded. Characters are their ASCII codes (anything else becomes ``?``): 128 tokens. The
last 10% of the text is held out for `LMProblem.evaluate`.

The model is a pre-LayerNorm decoder-only transformer in pure JAX (no Flax): token and
learned position embeddings, ``layers`` blocks of causal multi-head attention and a 4x GELU
MLP, a final LayerNorm and an untied output projection; about 120k parameters at the
defaults (2 layers, width 64, 4 heads, context 64). A few hundred Adam steps take seconds on
a CPU and bring the loss from ln(128) = 4.85 to about 2.3 nats per character.

Usage::

    problem = make_problem(seed=0)
    losses = train(dlopt.adam(3e-3), steps=300, seed=0)   # per-step training losses
    params, loss_and_grad, batches = problem.params, problem.loss_and_grad, problem.batches(0)
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import dlopt

MODULES = (
    "argparse", "bisect", "calendar", "collections", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "fractions", "functools", "heapq", "itertools", "json", "logging",
    "operator", "pathlib", "random", "re", "shutil", "statistics", "string", "textwrap",
    "typing", "unittest", "urllib.parse",
)  # fmt: skip
VOCAB = 128


@functools.cache
def corpus() -> str:
    """The docstrings of `MODULES`: each module's, then its public names' (sorted)."""
    parts = []
    for name in MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr in sorted(a for a in dir(module) if not a.startswith("_")):
            doc = inspect.getdoc(getattr(module, attr))
            if doc:
                parts.append(doc)
    return "\n\n".join(parts)


@functools.cache
def tokens() -> np.ndarray:
    """The corpus as int32 ASCII codes (non-ASCII characters as ``?``)."""
    data = corpus().encode("ascii", errors="replace")
    return np.frombuffer(data, np.uint8).astype(np.int32)


def init_params(
    key: jax.Array, *, layers: int = 2, width: int = 64, context: int = 64
) -> dict[str, Any]:
    """Weights ~ N(0, 0.02), the residual outputs scaled by 1 / sqrt(2 layers) (GPT-2)."""
    keys = iter(jax.random.split(key, 3 + 4 * layers))

    def normal(shape, std=0.02):
        return std * jax.random.normal(next(keys), shape, jnp.float32)

    out_std = 0.02 / np.sqrt(2 * layers)
    params: dict[str, Any] = {
        "embed": normal((VOCAB, width)),
        "position": normal((context, width)),
        "head": normal((width, VOCAB)),
        "final_norm": {"scale": jnp.ones(width), "bias": jnp.zeros(width)},
    }
    for i in range(layers):
        params[f"block{i}"] = {
            "norm1": {"scale": jnp.ones(width), "bias": jnp.zeros(width)},
            "qkv": normal((width, 3 * width)),
            "proj": normal((width, width), out_std),
            "norm2": {"scale": jnp.ones(width), "bias": jnp.zeros(width)},
            "up": normal((width, 4 * width)),
            "up_bias": jnp.zeros(4 * width),
            "down": normal((4 * width, width), out_std),
            "down_bias": jnp.zeros(width),
        }
    return params


def _norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def logits(params: dict[str, Any], inputs: jax.Array, *, heads: int = 4) -> jax.Array:
    """``[batch, time]`` token ids -> ``[batch, time, VOCAB]`` next-token logits."""
    _, time = inputs.shape
    x = params["embed"][inputs] + params["position"][:time]
    causal = jnp.tril(jnp.ones((time, time), bool))
    layers = sum(1 for k in params if k.startswith("block"))
    for i in range(layers):
        p = params[f"block{i}"]
        q, k, v = jnp.split(_norm(x, p["norm1"]) @ p["qkv"], 3, axis=-1)
        q, k, v = (t.reshape(*t.shape[:2], heads, -1) for t in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape)
        x = x + attended @ p["proj"]
        hidden = jax.nn.gelu(_norm(x, p["norm2"]) @ p["up"] + p["up_bias"])
        x = x + hidden @ p["down"] + p["down_bias"]
    return _norm(x, params["final_norm"]) @ params["head"]


def loss_fn(params: dict[str, Any], batch: jax.Array, *, heads: int = 4) -> jax.Array:
    """Mean next-character cross-entropy (nats) of ``batch`` ``[batch, context + 1]``."""
    out = logits(params, batch[:, :-1], heads=heads)
    target = batch[:, 1:]
    picked = jnp.take_along_axis(out, target[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(out, axis=-1) - picked)


class LMProblem(NamedTuple):
    """What `make_problem` returns."""

    params: dict[str, Any]  # the initial parameters
    loss: Callable[[Any, jax.Array], jax.Array]  # (params, batch) -> mean loss, not jitted
    loss_and_grad: Callable[[Any, jax.Array], tuple[jax.Array, Any]]  # jitted
    batches: Callable[[int], Iterator[jax.Array]]  # seed -> endless training batches
    evaluate: Callable[[Any], float]  # mean loss on fixed held-out batches


def make_problem(
    *,
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    context: int = 64,
    batch_size: int = 16,
    seed: int = 0,
) -> LMProblem:
    """The initial parameters (from ``seed``), a jitted ``(params, batch) -> (loss, grads)``,
    a batch iterator factory (random windows of the training 90%, from its own seed) and a
    held-out evaluation (8 fixed batches of the last 10%)."""
    if width % heads:
        raise ValueError(f"width must be a multiple of heads; got {width=}, {heads=}")
    data = tokens()
    split = int(0.9 * len(data))
    train_data, held_out = data[:split], data[split:]
    params = init_params(jax.random.PRNGKey(seed), layers=layers, width=width, context=context)
    loss = functools.partial(loss_fn, heads=heads)
    loss_and_grad = jax.jit(jax.value_and_grad(loss))

    def windows(source: np.ndarray, starts: np.ndarray) -> jax.Array:
        return jnp.asarray(source[starts[:, None] + np.arange(context + 1)])

    def batches(batch_seed: int) -> Iterator[jax.Array]:
        rng = np.random.default_rng(batch_seed)
        while True:
            yield windows(train_data, rng.integers(0, len(train_data) - context - 1, batch_size))

    fixed = np.random.default_rng(12345).integers(0, len(held_out) - context - 1, (8, 64))
    eval_batches = jnp.stack([windows(held_out, starts) for starts in fixed])
    eval_loss = jax.jit(lambda p: jnp.mean(jax.lax.map(functools.partial(loss, p), eval_batches)))

    def evaluate(p: Any) -> float:
        return float(eval_loss(p))

    return LMProblem(params, loss, loss_and_grad, batches, evaluate)


def run(
    tx: Any, steps: int = 300, seed: int = 0, *, problem: LMProblem | None = None
) -> tuple[Any, list[float]]:
    """Trains the model with ``tx`` for ``steps`` steps: ``(final params, per-step losses)``.

    ``seed`` picks the initial parameters and the batches; ``problem`` (from `make_problem`)
    reuses a model configuration (its own initial parameters, this seed's batches). The step
    (loss, gradient, ``tx.update``, ``apply_updates``) is one jitted, donated call; the
    losses are fetched once at the end.
    """
    problem = problem or make_problem(seed=seed)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, state, batch):
        loss, grads = jax.value_and_grad(problem.loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return dlopt.apply_updates(params, updates), state, loss

    params = jax.tree.map(jnp.copy, problem.params)
    state = tx.init(params)
    losses = []
    batches = problem.batches(seed)
    for _ in range(steps):
        params, state, loss = step(params, state, next(batches))
        losses.append(loss)
    return params, [float(x) for x in jax.device_get(losses)]


def train(
    tx: Any, steps: int = 300, seed: int = 0, *, problem: LMProblem | None = None
) -> list[float]:
    """The per-step training losses of `run`."""
    return run(tx, steps, seed, problem=problem)[1]


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    problem = make_problem(seed=0)
    size = sum(x.size for x in jax.tree.leaves(problem.params))
    params, losses = run(dlopt.adam(3e-3), 300, 0, problem=problem)
    print(
        f"{len(tokens())} characters, {size} parameters, 300 Adam steps in "
        f"{time.perf_counter() - start:.1f} s: training loss {losses[0]:.3f} -> "
        f"{np.mean(losses[-20:]):.3f} (last 20), held-out {problem.evaluate(params):.3f}"
    )
