"""Weight initialization and activations: why Xavier suits tanh and He suits ReLU.

A 5-layer, 100-unit network is fed 1,000 random inputs; we histogram each layer's activations
for five initializations (zeros, N(0, 1), N(0, 0.01), Xavier/Glorot, He/Kaiming) under
sigmoid, tanh and ReLU. What to look for:

* zeros: every unit computes the same thing (a single spike; symmetry is never broken).
* N(0, 1): too large; tanh and sigmoid saturate at their ends (vanishing gradients), ReLU
  activations blow up layer after layer.
* N(0, 0.01): too small; activations shrink toward 0 (tanh, ReLU) or 0.5 (sigmoid) with depth.
* Xavier (variance 1/fan_avg) keeps tanh's spread roughly constant across layers.
* He (variance 2/fan_in) does the same for ReLU, which zeroes half its inputs.

Run: ``python examples/initialization_activations.py`` (seconds, CPU);
writes ``examples/figures/init_<activation>.png`` and prints each layer's activation std.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from dlopt import initializers
from dlopt.plots import plot_activation_histograms, save

OUT = os.path.join(os.path.dirname(__file__), "figures")
LAYERS, UNITS = 5, 100
INITS = {
    "zeros": initializers.zeros(),
    "N(0,1)": initializers.normal(1.0),
    "N(0,0.01)": initializers.normal(0.01),
    "Xavier": initializers.glorot_normal(),
    "He": initializers.he_normal(),
}
ACTIVATIONS = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}
RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "relu": (0.0, 5.0)}  # same x axis per row


def layer_activations(init, activation, x, key):
    """The activations after each of the LAYERS dense layers (biases 0)."""
    outputs = []
    for k in jax.random.split(key, LAYERS):
        w = init(k, (x.shape[-1], UNITS), jnp.float32)
        x = activation(x @ w)
        outputs.append(np.asarray(x))
    return outputs


def main():
    x = jax.random.normal(jax.random.key(0), (1000, UNITS))
    for act_name, activation in ACTIVATIONS.items():
        rows = {}
        print(f"\n{act_name}: activation std per layer")
        for init_name, init in INITS.items():
            acts = layer_activations(init, activation, x, jax.random.key(1))
            # ReLU zeroes about half of its inputs; histogram the rest so the spread shows.
            rows[init_name] = [a[a > 0] if act_name == "relu" and a.max() > 0 else a for a in acts]
            print(f"  {init_name:>10}: " + "  ".join(f"{a.std():8.3g}" for a in acts))
        path = os.path.join(OUT, f"init_{act_name}.png")
        fig = plot_activation_histograms(rows, bins=30, value_range=RANGES[act_name], path=path)
        title = f"{act_name}: activations of layers 1-5 (rows: initialization)"
        if act_name == "relu":
            title += "; nonzero values only, those above 5 in the last bin"
        fig.suptitle(title, y=1.02)
        save(fig, path, dpi=80)
        print(f"  wrote {path}")


if __name__ == "__main__":
    main()
