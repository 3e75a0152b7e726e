"""Contrib optimizers and transforms (galore, sophia, DP-SGD, complex split): table rows.

``CONFORMANCE`` rows join the conformance table. Sophia and Hutchinson's estimator need the
objective: `with_objective` supplies ``obj_fn=`` (a function cannot go through the kit's
jitted ``extra_args``). DP-SGD takes per-example gradients: `per_example` turns the kit's
gradient into a batch of three examples (g, -g/2, 2g) before the transform, so the kit checks
everything else (state, jit, scan, vmap, None leaves) on the real per-example path; zero
gradients give zero updates only without noise, so the noisy rows skip that property.
``EXTRA_ARGS`` and ``GRADS`` give test_hyperparameters.py the objective and the per-example
gradients per factory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from cases_second_order import objective
from helpers import Entry

import dlopt

SKIP_ZERO = {"decays_weights": True}  # weight decay, a Hessian probe or DP noise moves params


def objective_args(params: Any) -> dict[str, Any]:
    return {"obj_fn": objective}


@dlopt.per_leaf
def with_objective(tx: Any) -> dlopt.GradientTransformationExtraArgs:
    """``tx`` whose ``update`` gets ``obj_fn=objective``."""

    def update(updates, state, params=None, **extra_args):
        return tx.update(updates, state, params, obj_fn=objective, **extra_args)

    return dlopt.GradientTransformationExtraArgs(tx.init, update)


def batch_of_examples(grads: Any) -> Any:
    """Three examples per leaf: g, -g/2 and 2g (their clipped sum is not 2.5 g)."""
    return jax.tree.map(lambda g: jnp.stack([g, -0.5 * g, 2.0 * g]), grads)


@dlopt.per_leaf
def per_example(tx: Any) -> dlopt.GradientTransformationExtraArgs:
    """``tx`` fed `batch_of_examples` of the gradient it is given."""

    def update(updates, state, params=None, **extra_args):
        return dlopt.with_extra_args_support(tx).update(
            batch_of_examples(updates), state, params, **extra_args
        )

    return dlopt.GradientTransformationExtraArgs(tx.init, update)


CONFORMANCE: list[Entry] = [
    Entry("scale_by_galore", "", lambda: dlopt.scale_by_galore(rank=1, update_proj_gap=2)),
    Entry(
        "galore",
        "decay_lion",
        lambda: dlopt.galore(
            1e-2,
            rank=1,
            update_proj_gap=2,
            base_optimizer=dlopt.scale_by_lion(),
            weight_decay=1e-2,
        ),
        SKIP_ZERO,
    ),  # fmt: skip
    Entry("scale_by_sophia", "", lambda: with_objective(dlopt.scale_by_sophia(update_interval=2))),
    Entry("sophia", "", lambda: with_objective(dlopt.sophia(1e-2, update_interval=2)), SKIP_ZERO),
    Entry(
        "hutchinson_estimator_diag_hessian",
        "",
        lambda: with_objective(dlopt.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(1))),
        SKIP_ZERO,
    ),
    Entry(
        "differentially_private_aggregate",
        "noiseless",
        lambda: per_example(dlopt.differentially_private_aggregate(1.0, 0.0, key=0)),
    ),
    Entry(
        "differentially_private_aggregate",
        "",
        lambda: per_example(dlopt.differentially_private_aggregate(1.0, 1.1, key=1)),
        SKIP_ZERO,
    ),
    Entry(
        "dpsgd",
        "momentum",
        lambda: per_example(dlopt.dpsgd(0.1, 1.0, 1.1, seed=0, momentum=0.9, nesterov=True)),
        SKIP_ZERO,
    ),
    Entry("split_real_and_imaginary", "", lambda: dlopt.split_real_and_imaginary(dlopt.adam(0.1))),
]
REQUIRED: dict[str, Any] = {"l2_norm_clip": 1.0, "noise_multiplier": 1.1, "seed": 0}
NO_HYPERPARAMETERS: set[str] = {"split_real_and_imaginary"}
EXTRA_ARGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "sophia": objective_args,
    "scale_by_sophia": objective_args,
    "hutchinson_estimator_diag_hessian": objective_args,
}
GRADS: dict[str, Callable[[Any], Any]] = {
    "dpsgd": batch_of_examples,
    "differentially_private_aggregate": batch_of_examples,
}
