"""Hyperparameter tuning: grid and random search, vectorized trials, the LR range test.

* `grid_search` / `random_search` call a user's ``train_fn(config) -> metrics`` per
  configuration and return a `SearchResult` (trials sorted by a validation metric, the best
  config, a printable table). `log_uniform` samples learning rates and weight decays.
* `vmap_trials` trains N values of one hyperparameter at once, in one compiled program:
  the optimizer is wrapped with `dlopt.inject_hyperparams`, the N optimizer states differ only
  in that hyperparameter, and `jax.vmap` runs the N trainings side by side. `sequential_trials`
  is the same experiment as N separate runs (the reference, and the baseline of `time_trials`).
* `lr_find` is the learning-rate range test (Smith 2017): one pass with an exponentially
  increasing learning rate; it suggests the rate of steepest loss descent before divergence.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import validation
from dlopt.core.base import GradientTransformation, apply_updates
from dlopt.wrappers.inject import inject_hyperparams, set_hyperparam

# ----------------------------------------------------------------------------- search spaces


class LogUniform(NamedTuple):
    """``exp(U(log low, log high))``: every decade equally likely (learning rates, decays)."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))


class Uniform(NamedTuple):
    """``U(low, high)``."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


class Choice(NamedTuple):
    """One of ``values``, uniformly."""

    values: tuple

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]


def log_uniform(low: float, high: float) -> LogUniform:
    """A log-uniform distribution on ``[low, high]``, ``0 < low < high``.

    Example:
        >>> from dlopt.lab.tuning import log_uniform, random_search
        >>> space = {"learning_rate": log_uniform(1e-4, 1e-1), "batch_size": [32, 64]}
        >>> result = random_search(lambda c: abs(c["learning_rate"] - 3e-3), space, num_trials=8)
        >>> result.best_config
        {'learning_rate': 0.00427..., 'batch_size': 64}
    """
    validation.check_positive("low", low)
    if not high > low:
        raise ValueError(f"high must be > low, got {low=}, {high=}.")
    return LogUniform(float(low), float(high))


def uniform(low: float, high: float) -> Uniform:
    """A uniform distribution on ``[low, high]``."""
    if not high > low:
        raise ValueError(f"high must be > low, got {low=}, {high=}.")
    return Uniform(float(low), float(high))


class SearchResult(NamedTuple):
    """The trials of a search, best first by ``metric`` (``mode`` "min" or "max").

    ``trials`` is a list of dicts: the configuration's keys, the returned metrics and
    ``"seconds"``. Trials whose metric is NaN come last.
    """

    trials: list[dict[str, Any]]
    metric: str
    mode: str
    keys: tuple[str, ...]

    @property
    def best(self) -> dict[str, Any]:
        """The best trial (configuration and metrics)."""
        return self.trials[0]

    @property
    def best_config(self) -> dict[str, Any]:
        """The configuration of the best trial."""
        return {k: self.trials[0][k] for k in self.keys}

    def table(self) -> str:
        """The trials as an aligned text table, best first."""
        columns = list(dict.fromkeys(k for t in self.trials for k in t))
        fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
        cells = [[fmt(t.get(c, "")) for c in columns] for t in self.trials]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
        row = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
        return "\n".join([row(columns), row(["-" * w for w in widths]), *map(row, cells)])


def _run_trials(train_fn, configs, metric, mode, keys) -> SearchResult:
    validation.check_choice("mode", mode, ("min", "max"))
    trials = []
    for config in configs:
        start = time.perf_counter()
        out = train_fn(dict(config))
        seconds = time.perf_counter() - start
        metrics = dict(out) if isinstance(out, Mapping) else {metric: out}
        if metric not in metrics:
            raise ValueError(
                f"train_fn returned {sorted(metrics)} without the metric {metric!r}; return a "
                "dict holding it (or pass metric= naming one of these)."
            )
        trials.append({**config, **{k: float(v) for k, v in metrics.items()}, "seconds": seconds})
    sign = 1.0 if mode == "min" else -1.0
    trials.sort(key=lambda t: (math.isnan(t[metric]), sign * t[metric]))
    return SearchResult(trials, metric, mode, tuple(keys))


def grid_search(
    train_fn: Callable[[dict[str, Any]], Mapping[str, float] | float],
    space: Mapping[str, Sequence[Any]],
    *,
    metric: str = "val_loss",
    mode: str = "min",
) -> SearchResult:
    """Runs ``train_fn`` on every combination of the values in ``space``.

    Args:
        train_fn: ``config -> metrics`` (a dict holding ``metric``, or the metric as a float).
        space: ``name -> list of values``; the configurations are their Cartesian product.
        metric: the validation metric that ranks the trials.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).

    Returns:
        A `SearchResult`, best first.

    Example:
        >>> from dlopt.lab.tuning import grid_search
        >>> result = grid_search(lambda c: (c["lr"] - 0.1) ** 2, {"lr": [0.01, 0.1, 1.0]})
        >>> result.best_config
        {'lr': 0.1}
    """
    keys = list(space)
    configs = [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*space.values())
    ]
    return _run_trials(train_fn, configs, metric, mode, keys)


def random_search(
    train_fn: Callable[[dict[str, Any]], Mapping[str, float] | float],
    space: Mapping[str, Any],
    *,
    num_trials: int,
    seed: int = 0,
    metric: str = "val_loss",
    mode: str = "min",
) -> SearchResult:
    """Runs ``train_fn`` on ``num_trials`` configurations sampled from ``space``.

    Args:
        train_fn: ``config -> metrics`` (a dict holding ``metric``, or the metric as a float).
        space: ``name -> distribution`` (`log_uniform`, `uniform`), a list (a uniform choice)
            or a constant.
        num_trials: the number of configurations, >= 1.
        seed: seeds the sampler (same seed, same configurations).
        metric, mode: as in `grid_search`.

    Returns:
        A `SearchResult`, best first.

    References:
        Bergstra & Bengio, 2012, "Random search for hyper-parameter optimization".
    """
    validation.check_int("num_trials", num_trials, 1)
    rng = np.random.default_rng(seed)

    def draw(spec):
        if hasattr(spec, "sample"):
            return spec.sample(rng)
        if isinstance(spec, list | tuple):
            return Choice(tuple(spec)).sample(rng)
        return spec

    configs = [{k: draw(v) for k, v in space.items()} for _ in range(num_trials)]
    return _run_trials(train_fn, configs, metric, mode, list(space))


# ----------------------------------------------------------------------------- vectorized trials


class TrialsResult(NamedTuple):
    """N trainings: the hyperparameter ``values`` (N,), final ``params`` (leading axis N) and
    the per-step ``losses`` (N, steps), each loss taken before that step's update."""

    values: jax.Array
    params: chex.ArrayTree
    losses: jax.Array


def _stack(batches: Any) -> Any:
    if isinstance(batches, list | tuple):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    return batches


def _train_scan(tx: GradientTransformation, loss_fn: Callable, params, opt_state, batches):
    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt_state), batches)
    return params, losses


def _vmap_runner(optimizer, loss_fn, hyperparam, fixed, first_value):
    tx = inject_hyperparams(optimizer)(**{hyperparam: first_value}, **fixed)

    @jax.jit
    def run(values, params, batches):
        def one(value):
            state = set_hyperparam(tx.init(params), hyperparam, value)
            return _train_scan(tx, loss_fn, params, state, batches)

        return jax.vmap(one)(values)

    return run


def _sequential_runner(optimizer, loss_fn, hyperparam, fixed):
    @jax.jit
    def run_one(value, params, batches):
        tx = optimizer(**{hyperparam: value}, **fixed)
        return _train_scan(tx, loss_fn, params, tx.init(params), batches)

    def run(values, params, batches):
        outs = [run_one(v, params, batches) for v in values]
        final = jax.tree.map(lambda *xs: jnp.stack(xs), *[o[0] for o in outs])
        return final, jnp.stack([o[1] for o in outs])

    return run


def vmap_trials(
    optimizer: Callable[..., GradientTransformation],
    loss_fn: Callable[[chex.ArrayTree, Any], jax.Array],
    params: chex.ArrayTree,
    batches: Any,
    values: Sequence[float] | jax.Array,
    *,
    hyperparam: str = "learning_rate",
    **fixed: Any,
) -> TrialsResult:
    """Trains one model per value of ``hyperparam``, all at once, in one compiled program.

    ``tx = inject_hyperparams(optimizer)(hyperparam=values[0], **fixed)``; trial ``i`` starts
    from ``set_hyperparam(tx.init(params), hyperparam, values[i])``, and ``jax.vmap`` over
    those N states (the same ``params`` and ``batches`` for all) runs ``lax.scan`` of
    ``loss_fn``'s gradient steps. Equal to N separate runs (`sequential_trials`); see
    `time_trials` for the speed-up.

    Args:
        optimizer: a factory taking ``hyperparam`` as a keyword, e.g. ``dlopt.adam``.
        loss_fn: ``(params, batch) -> scalar loss``.
        params: the initial parameters (shared by the trials).
        batches: the batches of the run, a list of pytrees or one pytree with a leading
            step axis.
        values: the N hyperparameter values.
        hyperparam: which hyperparameter varies (``"learning_rate"``, ``"weight_decay"``).
        **fixed: the optimizer's other arguments.

    Returns:
        A `TrialsResult`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> from dlopt.lab.tuning import vmap_trials
        >>> loss = lambda p, b: jnp.sum((p - b) ** 2)
        >>> out = vmap_trials(dlopt.sgd, loss, jnp.zeros(2), [jnp.ones(2)] * 5, [0.01, 0.1])
        >>> out.losses.shape
        (2, 5)
    """
    values = jnp.asarray(values, jnp.float32)
    run = _vmap_runner(optimizer, loss_fn, hyperparam, fixed, float(values[0]))
    final, losses = run(values, params, _stack(batches))
    return TrialsResult(values, final, losses)


def sequential_trials(
    optimizer: Callable[..., GradientTransformation],
    loss_fn: Callable[[chex.ArrayTree, Any], jax.Array],
    params: chex.ArrayTree,
    batches: Any,
    values: Sequence[float] | jax.Array,
    *,
    hyperparam: str = "learning_rate",
    **fixed: Any,
) -> TrialsResult:
    """The experiment of `vmap_trials` as N separate runs of ``optimizer(hyperparam=v)``.

    One jitted run takes the value as an argument, so it compiles once and is then called N
    times (the fair sequential baseline).
    """
    values = jnp.asarray(values, jnp.float32)
    run = _sequential_runner(optimizer, loss_fn, hyperparam, fixed)
    final, losses = run(values, params, _stack(batches))
    return TrialsResult(values, final, losses)


def time_trials(
    optimizer: Callable[..., GradientTransformation],
    loss_fn: Callable[[chex.ArrayTree, Any], jax.Array],
    params: chex.ArrayTree,
    batches: Any,
    values: Sequence[float] | jax.Array,
    *,
    hyperparam: str = "learning_rate",
    repeats: int = 3,
    **fixed: Any,
) -> dict[str, float]:
    """Wall seconds (median of ``repeats``, after a compiling call, interleaved) of the vmapped
    and the sequential trials, and the ``speedup = sequential / vmapped``."""
    values = jnp.asarray(values, jnp.float32)
    batches = _stack(batches)
    runners = {
        "vmapped_s": _vmap_runner(optimizer, loss_fn, hyperparam, fixed, float(values[0])),
        "sequential_s": _sequential_runner(optimizer, loss_fn, hyperparam, fixed),
    }
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(repeats + 1):
        for name, run in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(run(values, params, batches))
            if i:  # the first call compiles
                times[name].append(time.perf_counter() - start)
    out = {k: float(np.median(v)) for k, v in times.items()}
    return {**out, "speedup": out["sequential_s"] / out["vmapped_s"]}


# ----------------------------------------------------------------------------- LR range test


class LRFindResult(NamedTuple):
    """The range test: per step the ``learning_rates``, the batch ``losses`` (before the
    step's update), the bias-corrected ``smoothed`` losses; ``stop`` (the first step counted
    as diverged, or the number of steps) and the ``suggested_lr``."""

    learning_rates: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    stop: int
    suggested_lr: float


def lr_find(
    loss_fn: Callable[[chex.ArrayTree, Any], jax.Array],
    params: chex.ArrayTree,
    batches: Any,
    optimizer: Callable[..., GradientTransformation] | None = None,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    **optimizer_kwargs: Any,
) -> LRFindResult:
    """The learning-rate range test: one pass with ``lr`` growing exponentially per step.

    .. math::
        \\eta_t = \\eta_{min} (\\eta_{max} / \\eta_{min})^{t / (T - 1)}, \\qquad
        \\bar{L}_t = \\frac{a_t}{1 - \\beta^{t+1}},\\ a_t = \\beta a_{t-1} + (1 - \\beta) L_t

    The run counts as diverged at the first ``t`` with a non-finite loss or
    ``L̄_t > diverge_factor * min_{s<t} L̄_s``. The suggested learning rate is the one of
    steepest descent of ``log L̄`` (``L̄`` if not positive) against ``log η`` before that point,
    by central differences over a tenth of that range, the first tenth skipped: the middle of
    the useful range, a few times below the largest rate that still trains.

    Args:
        loss_fn: ``(params, batch) -> scalar loss``.
        params: the initial parameters.
        batches: the ``T`` batches of the pass, a list of pytrees or one pytree with a
            leading step axis.
        optimizer: a factory ``learning_rate -> GradientTransformation`` (default `dlopt.sgd`).
        min_lr, max_lr: the range, ``0 < min_lr < max_lr``.
        smoothing: ``beta`` of the loss average, in [0, 1).
        diverge_factor: the rise over the best smoothed loss that counts as divergence, > 1.
        **optimizer_kwargs: the optimizer's other arguments (``momentum=0.9``).

    Returns:
        An `LRFindResult` (draw it with `dlopt.lab.plots.plot_lr_find`).

    Example:
        >>> import jax.numpy as jnp
        >>> from dlopt.lab.tuning import lr_find
        >>> loss = lambda p, b: jnp.mean((b["x"] * p - b["y"]) ** 2)
        >>> xs = jnp.linspace(-1.0, 1.0, 50)
        >>> found = lr_find(loss, jnp.zeros(()), [{"x": xs, "y": 3 * xs}] * 60)
        >>> 1e-3 < found.suggested_lr < 3.0  # the curvature makes lr > 3 diverge
        True

    References:
        Smith, 2017, "Cyclical learning rates for training neural networks", section 3.3.
    """
    validation.check_positive("min_lr", min_lr)
    if not max_lr > min_lr:
        raise ValueError(f"max_lr must be > min_lr, got {min_lr=}, {max_lr=}.")
    validation.check_in_range("smoothing", smoothing, 0.0, 1.0)
    if not diverge_factor > 1:
        raise ValueError(f"diverge_factor must be > 1, got {diverge_factor=}.")
    if optimizer is None:
        import dlopt

        optimizer = dlopt.sgd
    batches = _stack(batches)
    steps = jax.tree.leaves(batches)[0].shape[0]
    if steps < 2:
        raise ValueError(f"lr_find needs at least 2 batches, got {steps}.")
    log_ratio = math.log(max_lr / min_lr)

    def schedule(count):
        frac = jnp.asarray(count).astype(jnp.float32) / jnp.float32(steps - 1)
        return jnp.float32(min_lr) * jnp.exp(jnp.float32(log_ratio) * frac)

    tx = optimizer(schedule, **optimizer_kwargs)
    run = jax.jit(lambda p, b: _train_scan(tx, loss_fn, p, tx.init(p), b)[1])
    losses = np.asarray(run(params, batches), np.float64)
    lrs = np.asarray(schedule(np.arange(steps)), np.float64)

    smoothed, avg = np.empty(steps), 0.0
    stop = steps
    for t, loss in enumerate(losses):
        avg = smoothing * avg + (1 - smoothing) * loss
        smoothed[t] = avg / (1 - smoothing ** (t + 1))
        if not math.isfinite(smoothed[t]) or (
            t > 0 and smoothed[t] > diverge_factor * np.min(smoothed[:t])
        ):
            stop = t
            break
    smoothed[stop:] = np.nan
    # Central differences over +-k steps (a tenth of the useful range) average out the
    # batch-to-batch noise that dominates while the learning rate is still tiny.
    # The slope is of log(loss) when the loss is positive (a relative descent, so the noisy
    # first steps at a high loss do not outweigh the real descent at a lower one).
    k = max(1, stop // 10)
    if stop > 3 * k:
        curve = smoothed[:stop]
        curve = np.log(curve) if np.all(curve > 0) else curve
        log_lr = np.log(lrs[:stop])
        slope = (curve[3 * k :] - curve[k : stop - 2 * k]) / (
            log_lr[3 * k :] - log_lr[k : stop - 2 * k]
        )
        suggested = float(lrs[2 * k + int(np.argmin(slope))])
    else:
        suggested = float(lrs[0])
    return LRFindResult(lrs, losses, smoothed, stop, suggested)
