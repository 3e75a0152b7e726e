"""AdamW, Muon, SOAP, Schedule-Free AdamW and ADOPT training the same MLP on digits.

A 64-128-64-10 MLP (`dlopt.lab.experiments.mlp`) on scikit-learn's 8x8 digits (offline, the
70/15/15 split of `dlopt.lab.experiments.load_dataset`), minibatches of 64, 600 steps, the same
initialization and batch order for every optimizer; each run is one jitted `jax.lax.scan`
that also records the full training loss and the test accuracy after every step. Learning
rates (below) come from a small sweep on this problem, with a cosine decay and no weight
decay; Muon orthogonalizes the three Dense kernels (its dimension numbers
are inferred from the Flax names) and gives the biases to Adam. Schedule-Free AdamW's loss is
measured at its averaged iterate x (``schedule_free_eval_params``).

Writes ``examples/figures/modern_optimizers.png`` (loss and accuracy curves) and
``modern_optimizers.md`` (steps to a training loss of 0.005, final test accuracy, wall time of
the run after compilation). Run: ``python examples/modern_optimizers.py`` (about a minute on
two cores). Timings on a busy machine are indicative only; on CPU SOAP's time goes to
its QR refreshes every 10 steps (LAPACK's QR of a 128x128 factor takes ~10 ms there, a
matmul 0.1 ms).
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import dlopt
from dlopt.lab.experiments import load_dataset, mlp

OUT = os.path.join(os.path.dirname(__file__), "figures")
STEPS, BATCH, TARGET = 600, 64, 0.005


# Peak learning rates: the best of {3e-3, 1e-2} (Muon: {0.02, 0.05}) for the steps to TARGET,
# decayed by a cosine over the run; Schedule-Free AdamW (not available when this was swept)
# takes AdamW's, constant: needing no schedule is its point.
def cosine(peak):
    return dlopt.cosine_decay_schedule(peak, STEPS)


OPTIMIZERS = {
    "AdamW": lambda: dlopt.adamw(cosine(1e-2), weight_decay=0.0),
    "Muon": lambda: dlopt.muon(cosine(0.02), adam_learning_rate=cosine(1e-2)),
    "SOAP": lambda: dlopt.soap(cosine(1e-2), weight_decay=0.0),
    "Schedule-Free AdamW": lambda: dlopt.schedule_free_adamw(1e-2),
    "ADOPT": lambda: dlopt.adopt(cosine(1e-2)),
}


def main():
    data = load_dataset("digits")
    (x, y), (x_test, y_test) = data["train"], data["test"]
    model = mlp((128, 64))
    params0 = model.init(jax.random.key(0), jnp.asarray(x[:2]))["params"]
    rng = np.random.default_rng(0)
    per_epoch = len(x) // BATCH
    order = np.concatenate([rng.permutation(len(x)) for _ in range(STEPS // per_epoch + 1)])
    batches = jnp.asarray(order[: STEPS * BATCH].reshape(STEPS, BATCH))
    x, y, x_test, y_test = map(jnp.asarray, (x, y, x_test, y_test))

    def loss(params, xb, yb):
        logp = jax.nn.log_softmax(model.apply({"params": params}, xb))
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=-1))

    def accuracy(params):
        return jnp.mean(jnp.argmax(model.apply({"params": params}, x_test), -1) == y_test)

    def train(tx, evaluated):
        def step(carry, idx):
            params, state = carry
            grads = jax.grad(loss)(params, x[idx], y[idx])
            updates, state = tx.update(grads, state, params)
            params = dlopt.apply_updates(params, updates)
            at = evaluated(state, params)
            return (params, state), (loss(at, x, y), accuracy(at))

        return jax.lax.scan(step, (params0, tx.init(params0)), batches)[1]

    curves, rows = {}, []
    for name, make in OPTIMIZERS.items():
        if name == "Schedule-Free AdamW" and not hasattr(dlopt, "schedule_free_adamw"):
            print("skipping Schedule-Free AdamW: dlopt.schedule_free_adamw is not in this dlopt")
            continue
        evaluated = getattr(dlopt, "schedule_free_eval_params", None)
        if name != "Schedule-Free AdamW" or evaluated is None:
            evaluated = lambda state, params: params  # noqa: E731
        run = jax.jit(functools.partial(train, make(), evaluated))
        jax.block_until_ready(run())  # compile (and a first run)
        start = time.perf_counter()
        losses, accs = jax.block_until_ready(run())
        seconds = time.perf_counter() - start
        losses, accs = np.asarray(losses), np.asarray(accs)
        reached = np.flatnonzero(losses < TARGET)
        curves[name] = (losses, accs)
        rows.append((name, int(reached[0]) + 1 if reached.size else None, accs[-1], seconds))

    table = [
        f"| optimizer | steps to train loss < {TARGET} | final test accuracy | wall time (s) |",
        "|---|---|---|---|",
    ] + [
        f"| {n} | {s if s is not None else f'> {STEPS}'} | {a:.3f} | {t:.2f} |"
        for n, s, a, t in rows
    ]
    print("\n".join(table))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "modern_optimizers.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    plot(curves)


def plot(curves):
    """Training loss (log) and test accuracy per step, one line per optimizer; the loss axis
    holds every curve (down to the smallest positive loss), the target loss is a labelled
    line, the accuracy axis holds every value after the first tenth of the steps (the title
    says what is below), and the legend sits below the panels, over no curve. Returns the
    figure."""
    from matplotlib.figure import Figure

    from dlopt.lab.plots import save

    fig = Figure(figsize=(11, 4.6))
    left, right = fig.subplots(1, 2)
    for name, (losses, accs) in curves.items():
        steps = np.arange(1, len(losses) + 1)
        left.plot(steps, losses, label=name, lw=1.5)
        right.plot(steps, accs, label=name, lw=1.5)
    left.axhline(TARGET, color="gray", ls=":", lw=1.2, label=f"target loss {TARGET}")
    left.set_yscale("log")
    losses = np.concatenate([np.asarray(c[0], float) for c in curves.values()])
    positive = losses[np.isfinite(losses) & (losses > 0)]
    left.set_ylim(min(positive.min(), TARGET) / 3, max(positive.max(), TARGET) * 3)
    accs = np.concatenate([np.asarray(c[1], float) for c in curves.values()])
    late = np.concatenate([np.asarray(c[1], float)[len(c[1]) // 10 :] for c in curves.values()])
    bottom = max(0.0, min(late.min(), 0.9) - 0.02)
    right.set_ylim(bottom, min(1.0, accs.max() + 0.01) + 0.005)
    left.set(xlabel="step", ylabel="training loss (full set)", title="digits MLP: training loss")
    below = f"; the first steps' {accs.min():.2f} is below the axis" if accs.min() < bottom else ""
    right.set(xlabel="step", ylabel="test accuracy", title=f"test accuracy{below}")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save(fig, os.path.join(OUT, "modern_optimizers.png"))
    return fig


if __name__ == "__main__":
    main()
