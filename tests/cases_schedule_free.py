"""Schedule-free optimizers and the wrappers that fit the optimizer table: table rows.

See `helpers.Case`; test_optimizers.py runs parity (rows with ``reference="optax"``),
convergence, properties and bad-input checks on every row. ``CONFORMANCE`` rows join the
conformance table (test_conformance.py: every exported factory needs one); ``REQUIRED``
gives valid values for required arguments that test_hyperparameters.py cannot guess, and
``NO_HYPERPARAMETERS`` names factories with nothing numeric to probe.

Schedule-free rows compare the params the loop holds (the ``y`` sequence) and the updates;
``z`` and ``schedule_free_eval_params`` are compared in test_schedule_free.py. `lookahead`
needs `LookaheadParams`, so it is tested there and in test_lookahead_sam.py rather than here
(its hyperparameter probes too).
"""

from typing import Any

import jax
import jax.numpy as jnp
from helpers import Case, Entry, from_lib

import dlopt
from dlopt.testing import default_params


def _schedule_free_adam(lib, lr):
    """The generic wrapper around Adam without momentum (optax's recommended base)."""
    return from_lib(lib, "schedule_free")(lib.adam(lr, b1=0.0), lr, b1=0.9)


CASES: list[Case] = [
    Case(
        "schedule_free_sgd",
        lambda lib, lr: from_lib(lib, "schedule_free_sgd")(lr, weight_decay=1e-4),
        1e-2,
        0.1,
        1e-2,
        has_moments=False,
        rtol=1e-5,
    ),
    Case(
        "schedule_free_adamw",
        lambda lib, lr: from_lib(lib, "schedule_free_adamw")(lr, weight_decay=1e-4),
        1e-2,
        0.1,
        0.1,
        rtol=1e-5,
    ),
    Case("schedule_free_adam", _schedule_free_adam, 1e-2, 0.1, 0.1, rtol=1e-5),
    Case(
        "prodigy",
        lambda lib, lr: from_lib(lib, "prodigy")(lr, weight_decay=1e-3),
        1.0,
        1.0,
        1.0,
        rtol=1e-5,
        complex_ok=False,
    ),
    Case(
        "dadapt_adamw",
        lambda lib, lr: from_lib(lib, "dadapt_adamw")(lr, weight_decay=1e-3),
        1.0,
        1.0,
        1.0,
        rtol=1e-5,
        complex_ok=False,
    ),
    Case(
        "cautious_adamw",
        lambda lib, lr: dlopt.cautious(dlopt.adamw(lr)),
        1e-2,
        0.1,
        1e-2,
        reference=None,
    ),
]


def _matrices(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


class _FastGradients(dlopt.GradientTransformationExtraArgs):
    """`lookahead` seen by the conformance kit: the kit draws gradients shaped like the params
    (`LookaheadParams`), lookahead takes them shaped like ``params.fast``."""


def _lookahead_for_the_kit(**kwargs):
    tx = dlopt.lookahead(dlopt.adam(1e-2), **kwargs)
    return _FastGradients(tx.init, lambda g, s, p=None, **kw: tx.update(g.fast, s, p, **kw))


SYNCED = {"params": dlopt.LookaheadParams.init_synced(default_params()), "check_none_leaves": False}
NONNEGATIVE = {"params": jax.tree.map(jnp.abs, default_params())}
ADVERSARY = dlopt.chain(dlopt.normalize(), dlopt.sgd(0.05))

CONFORMANCE: list[Entry] = [
    Entry(
        "schedule_free_sgd",
        "warmup_bf16_z",
        lambda: dlopt.schedule_free_sgd(0.1, warmup_steps=2, state_dtype=jnp.bfloat16),
        {"decays_weights": True},  # z = bf16(y) != y: x, and so y, move by that rounding
    ),
    Entry(
        "schedule_free_adamw",
        "",
        lambda: dlopt.schedule_free_adamw(1e-2, weight_decay=1e-2),
        {"decays_weights": True},
    ),
    Entry(
        "schedule_free",
        "sgd_schedule",
        lambda: dlopt.schedule_free(
            dlopt.sgd(dlopt.linear_schedule(0.0, 0.1, 2)), dlopt.linear_schedule(0.0, 0.1, 2)
        ),
    ),
    Entry("prodigy", "", lambda: dlopt.prodigy(1.0, safeguard_warmup=True)),
    Entry("dadapt_adamw", "", lambda: dlopt.dadapt_adamw(1.0)),
    Entry("cautious", "adamw", lambda: dlopt.cautious(dlopt.adamw(1e-2)), {"decays_weights": True}),
    Entry(
        "lookahead",
        "reset",
        lambda: _lookahead_for_the_kit(sync_period=2, slow_step_size=0.5, reset_state=True),
        SYNCED,
    ),
    Entry("sam", "", lambda: dlopt.sam(dlopt.sgd(0.1), ADVERSARY)),
    Entry("ema", "bf16", lambda: dlopt.ema(0.9, mu_dtype=jnp.bfloat16)),
    Entry("centralize", "", dlopt.centralize),
    Entry("freeze", "callable", lambda: dlopt.freeze(_matrices)),
    Entry("zero_nans", "", dlopt.zero_nans),
    Entry("normalize_by_update_norm", "", lambda: dlopt.normalize_by_update_norm(-0.1)),
    Entry("normalize", "", dlopt.normalize),
    Entry(
        "keep_params_nonnegative",
        "",
        lambda: dlopt.chain(dlopt.sgd(0.1), dlopt.keep_params_nonnegative()),
        NONNEGATIVE,
    ),
]
REQUIRED: dict[str, Any] = {
    "base_optimizer": dlopt.sgd(1e-2),
    "optimizer": dlopt.sgd(1e-2),
    "adv_optimizer": ADVERSARY,
}
# lookahead's update needs LookaheadParams: its probes are in test_lookahead_sam.py.
NO_HYPERPARAMETERS: set[str] = {
    "centralize",
    "freeze",
    "zero_nans",
    "normalize",
    "keep_params_nonnegative",
    "lookahead",
}
