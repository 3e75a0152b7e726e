"""Memory-lean, large-batch, sign and game optimizers (adafactor, sm3, lamb, lars,
fromage, sign_sgd, signum, optimistic methods, noisy_sgd, polyak_sgd): rows of the optimizer table.

See `helpers.Case`; test_optimizers.py runs parity (rows with ``reference="optax"``),
convergence, properties and bad-input checks on every row. ``CONFORMANCE`` rows join the
conformance table (test_conformance.py: every exported factory needs one); ``REQUIRED``
gives valid values for required arguments that test_hyperparameters.py cannot guess, and
``NO_HYPERPARAMETERS`` names factories with nothing numeric to probe.

Not in ``CASES`` (tested in test_large_batch.py instead):

* ``polyak_sgd``: its ``update`` needs ``value=`` (the loss), which the table's runners do
  not pass; test_large_batch.py runs its parity and convergence with the value.
* ``sm3`` has a row without an optax reference: optax's SM3 raises on the parity tree's
  scalar leaf; test_large_batch.py compares it with optax on the tree without the scalar.
"""

from typing import Any

import jax
import jax.numpy as jnp
from helpers import Case, Entry

import dlopt


def _scaled(lr, factor):
    """The schedule ``t -> factor * lr(t)`` (``lr`` a number, a traced value or a schedule)."""
    return lambda t: factor * (lr(t) if callable(lr) else lr)


def _matrices(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


CASES: list[Case] = [
    Case("adafactor", lambda lib, lr: lib.adafactor(lr), 1e-2, 0.1, 0.01),
    Case(
        "adafactor_factored_momentum_decay",
        lambda lib, lr: lib.adafactor(
            lr,
            min_dim_size_to_factor=3,  # factors the conv kernel (3, 3, 2, 4) and the matrices
            momentum=0.9,
            weight_decay_rate=_scaled(lr, 1e-3),
        ),
        1e-2,
        0.1,
        0.01,
        # optax stores the complex momentum in float32 (dropping its imaginary part):
        # test_large_batch.py compares with optax's dtype_momentum=complex64 instead
        complex_ok=False,
    ),
    Case(
        "adafactor_unfactored_no_clipping",
        lambda lib, lr: lib.adafactor(
            lr, factored=False, clipping_threshold=None, multiply_by_parameter_scale=False
        ),
        1e-2,
        0.1,
        0.01,
    ),
    Case("sm3", lambda lib, lr: lib.sm3(lr), 0.1, 1.0, 1.0, reference=None, complex_ok=False),
    Case("lamb", lambda lib, lr: lib.lamb(lr, weight_decay=1e-4), 1e-2, 0.05, 0.01),
    Case("lars", lambda lib, lr: lib.lars(lr, weight_decay=1e-4), 1.0, 1.0, 1.0),
    Case(
        "lars_nesterov_masked",
        lambda lib, lr: lib.lars(lr, nesterov=True, trust_ratio_mask=_matrices),
        0.5,
        0.05,  # the test problems' vectors are masked out: SGD with Nesterov momentum there
        1e-3,
    ),
    Case("fromage", lambda lib, lr: lib.fromage(lr), 1e-2, 0.1, 0.01, complex_ok=False),
    Case("sign_sgd", lambda lib, lr: lib.sign_sgd(lr), 1e-2, 0.01, 5e-4, complex_ok=False),
    Case("signum", lambda lib, lr: lib.signum(lr), 1e-2, 0.01, 1e-3, complex_ok=False),
    Case(
        "optimistic_gradient_descent",
        lambda lib, lr: lib.optimistic_gradient_descent(lr, alpha=0.7, beta=0.1),
        1e-2,
        0.1,
        3e-3,
        complex_ok=False,
    ),
    Case("optimistic_adam_v2", lambda lib, lr: lib.optimistic_adam_v2(lr), 1e-2, 0.05, 1e-2),
    Case(
        "noisy_sgd",
        lambda lib, lr: lib.noisy_sgd(lr, key=0),
        1e-2,
        0.05,  # the noise (variance 0.01 / t^0.55) limits the final precision: 6e-4 here
        2e-3,
        has_moments=False,
        complex_ok=False,
    ),
]

EXTRA_VALUE = {"extra_args": {"value": 1.0}}
DECAYS = {"decays_weights": True}  # also: params move with zero gradients (noise, shrink)

CONFORMANCE: list[Entry] = [
    Entry("scale_by_factored_rms", "", dlopt.scale_by_factored_rms),
    Entry(
        "scale_by_factored_rms",
        "factored_bf16_stats",
        lambda: dlopt.scale_by_factored_rms(min_dim_size_to_factor=2, nu_dtype=jnp.bfloat16),
    ),
    Entry("scale_by_param_block_rms", "", dlopt.scale_by_param_block_rms),
    Entry("adafactor", "", lambda: dlopt.adafactor(1e-2)),
    Entry(
        "adafactor",
        "factored_momentum_decay",
        lambda: dlopt.adafactor(
            1e-2, min_dim_size_to_factor=2, momentum=0.9, weight_decay_rate=1e-3
        ),
        DECAYS,
    ),
    Entry("scale_by_sm3", "", dlopt.scale_by_sm3),
    Entry("sm3", "", lambda: dlopt.sm3(0.1)),
    Entry("scale_by_trust_ratio", "", dlopt.scale_by_trust_ratio),
    Entry("lamb", "", lambda: dlopt.lamb(1e-3, weight_decay=1e-2), DECAYS),
    Entry("lars", "", lambda: dlopt.lars(0.1, weight_decay=1e-4), DECAYS),
    Entry("fromage", "", lambda: dlopt.fromage(1e-2), DECAYS),
    Entry("scale_by_sign", "", dlopt.scale_by_sign),
    Entry("sign_sgd", "", lambda: dlopt.sign_sgd(1e-3)),
    Entry("signum", "bf16_momentum", lambda: dlopt.signum(1e-3, mu_dtype=jnp.bfloat16)),
    Entry("scale_by_optimistic_gradient", "", dlopt.scale_by_optimistic_gradient),
    Entry(
        "optimistic_gradient_descent",
        "schedules",
        lambda: dlopt.optimistic_gradient_descent(
            dlopt.cosine_decay_schedule(1e-2, 10), alpha=lambda t: 1.0, beta=lambda t: 0.5
        ),
    ),
    Entry("optimistic_adam_v2", "", lambda: dlopt.optimistic_adam_v2(1e-3)),
    Entry("add_noise", "", lambda: dlopt.add_noise(0.01, 0.55, key=0), DECAYS),
    Entry("noisy_sgd", "", lambda: dlopt.noisy_sgd(1e-2, key=1), DECAYS),
    Entry("scale_by_polyak", "", dlopt.scale_by_polyak, EXTRA_VALUE),
    Entry("polyak_sgd", "", dlopt.polyak_sgd, EXTRA_VALUE),
    Entry("polyak_sgd", "sps+", lambda: dlopt.polyak_sgd(0.5, variant="sps+"), EXTRA_VALUE),
]
REQUIRED: dict[str, Any] = {"eta": 0.01, "gamma": 0.55}
NO_HYPERPARAMETERS: set[str] = {"scale_by_sign"}
