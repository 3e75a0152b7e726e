"""Optimizer paths on 2-D test functions, drawn over their contours.

* Rosenbrock ``(1 - x)^2 + 100 (y - x^2)^2``: a curved, flat-bottomed valley, minimum (1, 1).
* Beale: steep walls and flat plateaus, minimum (3, 0.5).
* A saddle ``x^2 - y^2`` started almost on the ridge (y = 0.001): plain SGD slides to the
  saddle point and lingers there, y growing only 1.1x a step (0.12 after 50 steps); momentum
  and Nesterov, at the same learning rate as SGD, compound the growth (about 1.3x a step)
  and pass |y| = 1 at steps 27 and 24; the adaptive methods move y by about their learning
  rate a step whatever the gradient's size (Adam at 0.05: step 20; AdaGrad 28, Adadelta 31;
  RMSProp at 0.01 not within the 50 steps). The script prints these steps.
* An ill-conditioned quadratic ``(x^2 + 25 y^2) / 2``: SGD zigzags across the narrow
  direction; momentum damps it; adaptive methods rescale per coordinate.

Every optimizer runs a fixed number of steps as one `jax.lax.scan`. Learning rates are set per
problem so each method makes visible progress (illustrations, not a benchmark). Paths that
leave the frame (escaping the saddle) are clipped by the axes.

Run: ``python examples/optimizer_paths.py`` (well under a minute); writes
``examples/figures/optimizer_paths.png`` and the animation ``optimizer_paths_zigzag.gif``.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

import dlopt
from dlopt.lab.plot_paths import draw_trajectories, legend_handles, path_colors, plot_trajectories
from dlopt.lab.plots import save

OUT = os.path.join(os.path.dirname(__file__), "figures")


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def saddle(x, y):
    return x**2 - y**2


def ill_conditioned(x, y):
    return 0.5 * (x**2 + 25 * y**2)


# name -> (function, start, steps, xlim, ylim, minimum)
PROBLEMS = {
    "Rosenbrock": (rosenbrock, (-1.5, 2.0), 800, (-2, 2), (-1, 3), (1, 1)),
    "Beale": (beale, (1.0, 1.4), 500, (-0.5, 4), (-1.5, 2), (3, 0.5)),
    "saddle x^2 - y^2": (saddle, (1.5, 1e-3), 50, (-2, 2), (-2, 2), None),
    "ill-conditioned quadratic": (ill_conditioned, (-4.5, 1.0), 60, (-5, 5), (-2, 2), (0, 0)),
}

# optimizer -> (factory, learning rate per problem, in the order of PROBLEMS)
OPTIMIZERS = {
    "SGD": (dlopt.sgd, [1e-3, 1e-2, 0.05, 0.075]),
    "Momentum": (lambda lr: dlopt.sgd(lr, momentum=0.9), [1e-3, 1e-3, 0.05, 0.01]),
    "Nesterov": (lambda lr: dlopt.sgd(lr, momentum=0.9, nesterov=True), [1e-3, 1e-3, 0.05, 0.01]),
    "AdaGrad": (dlopt.adagrad, [0.5, 0.5, 0.1, 1.0]),
    "RMSProp": (dlopt.rmsprop, [0.01, 0.01, 0.01, 0.1]),
    "Adadelta": (dlopt.adadelta, [1.0, 1.0, 1.0, 1.0]),
    "Adam": (dlopt.adam, [0.05, 0.05, 0.05, 0.3]),
}


def run(tx, fn, start, steps):
    """The ``(steps + 1, 2)`` path of ``tx`` minimizing ``fn`` from ``start``."""

    def loss(p):
        return fn(p[0], p[1])

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = tx.update(grads, state, p)
        p = dlopt.apply_updates(p, updates)
        return (p, state), p

    p0 = jnp.asarray(start, jnp.float32)
    _, path = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))(p0)
    return np.concatenate([np.asarray(p0)[None], np.asarray(path)])


GIF_SIZE, GIF_DPI = (7.2, 4.6), 90  # 648 x 414 pixels


def gif_figure(fn, paths, xlim, ylim, upto):
    """One frame of the animation: the paths' first ``upto`` points, in the PNG's colours
    (each optimizer's place in OPTIMIZERS), the legend below the axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=GIF_SIZE)
    ax = fig.add_subplot()
    colors = path_colors(list(paths), list(OPTIMIZERS))
    draw_trajectories(
        ax,
        fn,
        {k: v[:upto] for k, v in paths.items()},
        xlim=xlim,
        ylim=ylim,
        minimum=(0, 0),
        title=f"ill-conditioned quadratic, step {upto - 1}",
        colors=colors,
    )
    handles, labels = legend_handles(list(paths), colors)
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=10, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def save_gif(fn, paths, xlim, ylim, path, frames=30):
    """An animated GIF of the paths being drawn (30 frames of `gif_figure`, 648 x 414)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    steps = len(next(iter(paths.values())))
    images = []
    for i in range(frames):
        fig = gif_figure(fn, paths, xlim, ylim, max(2, int((i + 1) / frames * steps)))
        fig.set_dpi(GIF_DPI)
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        images.append(Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB"))
    palette = images[-1].quantize(colors=256)  # one palette: the colours stay put
    frames_p = [im.quantize(palette=palette) for im in images]
    frames_p[0].save(path, save_all=True, append_images=frames_p[1:], duration=125, loop=0)


def main():
    panels, zigzag = {}, None
    for k, (title, (fn, start, steps, xlim, ylim, minimum)) in enumerate(PROBLEMS.items()):
        paths = {
            name: run(make(lrs[k]), fn, start, steps) for name, (make, lrs) in OPTIMIZERS.items()
        }
        print(f"{title}: start {start}, {steps} steps, final f(x, y):")
        for name, path in paths.items():
            x, y = path[-1]
            line = f"  {name:>9}: ({x:8.3f}, {y:8.3f})  f = {float(fn(x, y)):.4g}"
            if fn is saddle:
                away = np.flatnonzero(np.abs(path[:, 1]) > 1)
                line += f"; |y| > 1 at step {away[0]}" if away.size else "; |y| <= 1 throughout"
            print(line)
        panels[title] = {
            "fn": fn,
            "paths": paths,
            "xlim": xlim,
            "ylim": ylim,
            "minimum": minimum,
            "log_levels": fn is not saddle,
        }
        if fn is ill_conditioned:
            zigzag = (fn, paths, xlim, ylim)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "optimizer_paths.png")
    save(plot_trajectories(panels), path)
    gif = os.path.join(OUT, "optimizer_paths_zigzag.gif")
    fn, paths, xlim, ylim = zigzag
    save_gif(fn, {k: paths[k] for k in ("SGD", "Momentum", "Adam")}, xlim, ylim, gif)
    print(f"wrote {path} and {gif}")


if __name__ == "__main__":
    main()
