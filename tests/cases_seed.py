"""The first eleven families (SGD ... Lion): rows of the optimizer table.

Each row builds the same optimizer from either library (``build(lib, lr)`` with ``lib`` =
dlopt or optax), since the signatures match. See `helpers.Case`.
"""

import jax.numpy as jnp
from helpers import Case


def exponentially_decayed(lr):
    """The schedule ``t -> lr(t) * 0.999**t`` (``lr`` a number or a schedule)."""
    return lambda t: (lr(t) if callable(lr) else lr) * 0.999 ** t.astype(jnp.float32)


CASES = [
    Case("sgd", lambda lib, lr: lib.sgd(lr), 1e-2, 0.1, 2e-3, has_moments=False),
    Case("sgd_momentum", lambda lib, lr: lib.sgd(lr, momentum=0.9), 1e-2, 0.05, 1e-3),
    Case(
        "sgd_nesterov",
        lambda lib, lr: lib.sgd(lr, momentum=0.9, nesterov=True),
        1e-2,
        0.05,
        1e-3,
    ),
    Case("adagrad", lambda lib, lr: lib.adagrad(lr), 1e-2, 1.0, 1.0),
    Case("rmsprop", lambda lib, lr: lib.rmsprop(lr), 1e-2, 0.01, 2e-3),
    Case("rmsprop_centered", lambda lib, lr: lib.rmsprop(lr, centered=True), 1e-2, 0.01, 1e-3),
    Case("rmsprop_momentum", lambda lib, lr: lib.rmsprop(lr, momentum=0.9), 1e-2, 0.01, 1e-3),
    Case(
        "rmsprop_centered_nesterov",
        lambda lib, lr: lib.rmsprop(lr, centered=True, momentum=0.9, nesterov=True),
        1e-2,
        0.01,
        1e-4,
    ),
    Case(
        "rmsprop_eps_outside_bias_corrected",
        lambda lib, lr: lib.rmsprop(
            lr, decay=0.95, eps=1e-3, initial_scale=0.5, eps_in_sqrt=False, bias_correction=True
        ),
        1e-2,
        0.01,
        1e-3,
    ),
    Case(
        "adadelta",
        lambda lib, lr: lib.adadelta(lr, weight_decay=1e-3),
        1.0,
        1.0,
        0.3,
        complex_ok=False,
    ),
    Case("adam", lambda lib, lr: lib.adam(lr), 1e-2, 0.05, 1e-2),
    Case("adam_nesterov", lambda lib, lr: lib.adam(lr, nesterov=True), 1e-2, 0.05, 1e-2),
    Case(
        "adam_schedule",
        lambda lib, lr: lib.adam(exponentially_decayed(lr), eps_root=1e-8),
        1e-2,
        0.05,
        1e-2,
    ),
    Case("adamw", lambda lib, lr: lib.adamw(lr), 1e-2, 0.05, 1e-2),
    Case("nadam", lambda lib, lr: lib.nadam(lr), 1e-2, 0.05, 1e-2),
    Case("nadamw", lambda lib, lr: lib.nadamw(lr), 1e-2, 0.05, 1e-2),
    Case("adamax", lambda lib, lr: lib.adamax(lr), 1e-2, 0.05, 1e-2),
    Case("lion", lambda lib, lr: lib.lion(lr), 1e-3, 0.01, 1e-3, complex_ok=False),
]
