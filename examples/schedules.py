"""Learning-rate schedules on one figure: step, exponential, cosine, warmup-cosine, one-cycle,
and the trace that reduce-on-plateau leaves on a loss that stalls.

The plateau trace runs `dlopt.plateau_step` (the rule behind `dlopt.reduce_on_plateau` and the
`ReduceLROnPlateau` callback) once per "epoch" of 50 steps on a synthetic validation loss that
falls and then flattens: after `patience` epochs without a 1% improvement the rate is cut 2x.

Run: ``python examples/schedules.py`` (seconds); writes ``examples/figures/schedules.png``.
"""

import os

import numpy as np

import dlopt
from dlopt.lab.plots import plot_schedules

OUT = os.path.join(os.path.dirname(__file__), "figures")
STEPS, PEAK, STEPS_PER_EPOCH = 1000, 0.1, 50


def plateau_trace():
    """Per-step learning rate of reduce-on-plateau driven by a stalling validation loss."""
    config = dlopt.PlateauConfig(factor=0.5, patience=2, threshold=0.01, cooldown=1)
    state = dlopt.plateau_init(config)
    epochs = STEPS // STEPS_PER_EPOCH
    rng = np.random.default_rng(0)
    val_loss = np.maximum(2.0 * np.exp(-0.4 * np.arange(epochs)), 0.4) + 0.01 * rng.random(epochs)
    lrs = []
    for epoch in range(epochs):
        lrs += [PEAK * float(state.scale)] * STEPS_PER_EPOCH
        state = dlopt.plateau_step(state, float(val_loss[epoch]), config)
    return np.array(lrs)


def main():
    schedules = {
        "step (x0.5 every 250)": dlopt.step_decay_schedule(PEAK, step_size=250, decay_rate=0.5),
        "exponential (x0.1 over 1000)": dlopt.exponential_decay(PEAK, STEPS, decay_rate=0.1),
        "cosine": dlopt.cosine_decay_schedule(PEAK, decay_steps=STEPS),
        "warmup (100) + cosine": dlopt.warmup_cosine_decay_schedule(
            0.0, PEAK, warmup_steps=100, decay_steps=STEPS
        ),
        "one-cycle": dlopt.cosine_onecycle_schedule(STEPS, PEAK),
        "reduce on plateau (x0.5)": plateau_trace(),
    }
    path = os.path.join(OUT, "schedules.png")
    plot_schedules(
        schedules, num_steps=STEPS, title=f"learning-rate schedules, peak {PEAK}", path=path
    )
    for name, schedule in schedules.items():
        values = schedule if isinstance(schedule, np.ndarray) else schedule(np.arange(STEPS))
        picks = ", ".join(f"{float(values[t]):.3g}" for t in (0, 100, 250, 500, 999))
        print(f"{name:>30}: lr at steps 0/100/250/500/999 = {picks}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
