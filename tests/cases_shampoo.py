"""distributed_shampoo: conformance rows and the hyperparameter-table hooks.

See `helpers.Entry`. The parity with the reference (optax-shampoo) runs in
tests/optimizers/test_shampoo.py; these rows put the optimizer through the conformance kit
with its defaults and with the periodic refresh, blocking and Adam grafting switched on.
"""

from typing import Any

from helpers import Entry

import dlopt

DECAYS = {"decays_weights": True}
CONFORMANCE = [
    Entry("distributed_shampoo", "", lambda: dlopt.distributed_shampoo(1e-2)),
    Entry(
        "distributed_shampoo",
        "blocked_refresh_adam_graft_decay",
        lambda: dlopt.distributed_shampoo(
            1e-2,
            block_size=2,
            start_preconditioning_step=1,
            preconditioning_compute_steps=2,
            statistics_compute_steps=2,
            graft_type=dlopt.GraftingType.ADAM,
            weight_decay=1e-3,
        ),
        DECAYS,
    ),
]
REQUIRED: dict[str, Any] = {}
NO_HYPERPARAMETERS: set[str] = set()
