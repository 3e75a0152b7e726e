"""Adam relatives (radam, amsgrad, adabelief, yogi, adan, adamaxw, novograd) and the
torch/Keras optimizers (rprop, asgd, ftrl): rows of the optimizer table.

See `helpers.Case`; test_optimizers.py runs parity (rows with ``reference="optax"``),
convergence, properties and bad-input checks on every row. ``CONFORMANCE`` rows join the
conformance table (test_conformance.py: every exported factory needs one); ``REQUIRED``
gives valid values for required arguments that test_hyperparameters.py cannot guess, and
``NO_HYPERPARAMETERS`` names factories with nothing numeric to probe.

rprop, asgd and ftrl have no optax reference here (rprop follows torch's semantics, which
differ from optax's; asgd and ftrl are not in optax): tests/test_adam_family.py checks them
against torch.optim (float64) and a transcription of Keras 3's rule.
"""

from typing import Any

import jax.numpy as jnp
from helpers import Case, Entry

import dlopt

DECAYS = {"decays_weights": True}  # moves params even when the gradient is zero

# RAdam's rectification r_t: optax computes rho_t = rho_inf - 2 t b2^t / (1 - b2^t) in
# float32, a difference of numbers near rho_inf = 1999 (b2 = 0.999) that loses ~1e-4 of
# rho_t ~ 6 in the first rectified steps; dlopt's is exact to float32 (radam.rectification).
# Measured on the parity run (100 steps, lr 1e-2): params differ from a float64 evaluation
# by at most 2.7e-6 (dlopt) and 4.8e-5 (optax), so dlopt and optax differ by up to 4.7e-5:
# the tolerance reflects optax's float32 error (test_adam_family checks dlopt's at 1e-5).
RADAM_RTOL = 1e-4


def rprop_row(lib, lr):
    """Rprop's ``learning_rate`` is its initial step size, not a multiplier (torch ignores
    lr schedulers for Rprop too): a schedule's value at step 0 is used. ``min_step_size=0``
    so that a zero learning rate is a no-op (the default 1e-6 clamps a 0 step up to 1e-6)."""
    initial = lr(jnp.zeros([], jnp.int32)) if callable(lr) else lr
    return lib.rprop(initial, min_step_size=0.0)


# Option variants (radam and adabelief with Nesterov, amsgrad without bias correction,
# novograd and adan with weight decay, ...) are checked against optax on a small tree in
# test_adam_family.py, whole state included; ftrl's regularizers against Keras's rule there.
# That keeps the table (about 10 s of one core per row) to one row per family.
CASES: list[Case] = [
    Case("radam", lambda lib, lr: lib.radam(lr), 1e-2, 0.05, 1e-2, rtol=RADAM_RTOL),
    Case("amsgrad", lambda lib, lr: lib.amsgrad(lr), 1e-2, 0.05, 1e-2),
    Case("adabelief", lambda lib, lr: lib.adabelief(lr), 1e-2, 0.05, 1e-2),
    Case("yogi", lambda lib, lr: lib.yogi(lr), 1e-2, 0.05, 1e-2),
    Case("adan", lambda lib, lr: lib.adan(lr), 1e-2, 0.05, 1e-2, complex_ok=False),
    Case("adamaxw", lambda lib, lr: lib.adamaxw(lr), 1e-2, 0.05, 1e-2),
    Case("novograd", lambda lib, lr: lib.novograd(lr), 1e-2, 0.05, 1e-2),
    Case("rprop", rprop_row, 1e-2, 0.1, 0.1, reference=None, complex_ok=False),
    Case(
        "asgd_averaging",
        lambda lib, lr: lib.asgd(lr, t0=10.0),
        1e-2,
        0.1,
        2e-3,
        reference=None,
        complex_ok=False,
    ),
    Case("ftrl", lambda lib, lr: lib.ftrl(lr), 0.1, 1.0, 1.0, reference=None, complex_ok=False),
]

CONFORMANCE: list[Entry] = [
    Entry("scale_by_radam", "nesterov_bf16_mu", lambda: dlopt.scale_by_radam(
        nesterov=True, mu_dtype=jnp.bfloat16)),
    Entry("radam", "", lambda: dlopt.radam(1e-2)),
    Entry("scale_by_amsgrad", "", dlopt.scale_by_amsgrad),
    Entry("amsgrad", "bf16_nu", lambda: dlopt.amsgrad(1e-2, nu_dtype=jnp.bfloat16)),
    Entry("scale_by_belief", "", dlopt.scale_by_belief),
    Entry("adabelief", "nesterov", lambda: dlopt.adabelief(1e-2, nesterov=True)),
    Entry("scale_by_yogi", "", dlopt.scale_by_yogi, DECAYS),  # m_0 = v_0 = 1e-6 move params
    Entry("yogi", "", lambda: dlopt.yogi(1e-2), DECAYS),
    Entry("scale_by_adan", "", dlopt.scale_by_adan),
    Entry("adan", "weight_decay", lambda: dlopt.adan(1e-2, weight_decay=1e-2), DECAYS),
    Entry("adamaxw", "", lambda: dlopt.adamaxw(1e-2), DECAYS),
    Entry("scale_by_novograd", "", dlopt.scale_by_novograd),
    Entry("novograd", "weight_decay", lambda: dlopt.novograd(1e-2, weight_decay=1e-2), DECAYS),
    Entry("scale_by_rprop", "", lambda: dlopt.scale_by_rprop(1e-2)),
    Entry("rprop", "", lambda: dlopt.rprop(1e-2)),
    Entry("asgd", "averaging", lambda: dlopt.asgd(1e-2, t0=1.0, weight_decay=1e-3), DECAYS),
    Entry("ftrl", "", lambda: dlopt.ftrl(0.1)),
    Entry(
        "ftrl",
        "all_regularizers_schedule",
        lambda: dlopt.ftrl(
            dlopt.cosine_decay_schedule(0.1, 10),
            l1_regularization_strength=1e-2,
            l2_regularization_strength=1e-2,
            l2_shrinkage_regularization_strength=1e-2,
            beta=0.5,
        ),
        DECAYS,
    ),
]  # fmt: skip
REQUIRED: dict[str, Any] = {}
NO_HYPERPARAMETERS: set[str] = set()
