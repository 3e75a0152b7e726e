"""Modern optimizers (muon, soap, adopt, ademamix, simplified_ademamix): table rows.

See `helpers.Case`; test_optimizers.py runs parity (rows with ``reference="optax"``),
convergence, properties and bad-input checks on every row. ``CONFORMANCE`` rows join the
conformance table (test_conformance.py: every exported factory needs one); ``REQUIRED``
gives valid values for required arguments that test_hyperparameters.py cannot guess, and
``NO_HYPERPARAMETERS`` names factories with nothing numeric to probe.

Muon rows pass ``infer_dimension_numbers=False`` to dlopt only (optax's every-2-D-leaf rule):
the parity tree's leaves are not named like Flax kernels, so inference would change nothing
there, but the row states what it compares. test_modern.py checks the inference itself.
"""

from typing import Any

import jax.numpy as jnp
import numpy as np
from helpers import Case, Entry, from_lib

import dlopt

DECAYS = {"decays_weights": True}
_RNG = np.random.default_rng(0)
MATRICES = {"w": jnp.asarray(_RNG.standard_normal((4, 3)), jnp.float32),
            "v": [jnp.asarray(_RNG.standard_normal((3, 5)), jnp.float32)]}  # fmt: skip
FLAX_NAMED = {
    "Conv_0": {"kernel": jnp.asarray(_RNG.standard_normal((3, 3, 2, 4)), jnp.float32),
               "bias": jnp.zeros(4, jnp.float32)},
    "Embed_0": {"embedding": jnp.asarray(_RNG.standard_normal((5, 4)), jnp.float32)},
}  # fmt: skip


def _optax_rule(lib) -> dict:
    """dlopt's switch to optax's dimension rule (optax itself takes no such argument)."""
    return {"infer_dimension_numbers": False} if lib is dlopt else {}


def _muon(lib, lr, **kwargs):
    return from_lib(lib, "muon")(lr, **kwargs, **_optax_rule(lib))


def _warmup(t):
    """A schedule for AdEMAMix's alpha (the paper warms it up): 0 -> 5 over 50 steps."""
    return 5.0 * jnp.minimum(t.astype(jnp.float32) / 50.0, 1.0)


# Six rows (each costs ~15-40 s of table tests); more variants run as short parity checks
# in test_modern.py.
CASES = [
    Case("muon", lambda lib, lr: _muon(lib, lr), 1e-2, 0.05, 1e-2, rtol=1e-5),
    Case(
        "muon_aol_dion_decay",
        lambda lib, lr: _muon(
            lib,
            lr,
            nesterov=False,
            preconditioning="aol",
            ns_coeffs="dion",
            weight_decay=1e-2,
            adam_weight_decay=1e-3,
            consistent_rms=0.2,
        ),
        1e-2,
        0.05,
        1e-2,
        rtol=1e-5,
    ),  # fmt: skip
    # optax's adopt forms 1 - b2 in float32 after a jnp.where (1 - float32(0.9999) is off by
    # 1.7e-4 relative); dlopt forms it in double, as for every other EMA. With a b2 whose
    # complement float32 holds exactly (1 - 2**-13) the two agree to 1e-5 (test_modern.py
    # checks the default b2 at 3e-4).
    Case(
        "adopt",
        lambda lib, lr: from_lib(lib, "adopt")(lr, b2=1 - 2**-13),
        1e-2,
        0.05,
        1e-2,
        rtol=1e-5,
        complex_ok=False,  # optax's jnp.clip raises on complex values
    ),
    Case(
        "ademamix_schedules",
        lambda lib, lr: from_lib(lib, "ademamix")(
            lr,
            b3=lambda t: 0.99 + 0.009 * jnp.minimum(t.astype(jnp.float32) / 50, 1.0),
            alpha=_warmup,
            eps_root=1e-8,
            weight_decay=1e-3,
        ),
        1e-2,
        0.05,
        1e-2,
        rtol=1e-5,
    ),  # fmt: skip
    Case(
        "simplified_ademamix",
        lambda lib, lr: from_lib(lib, "simplified_ademamix")(lr, alpha=2.0, weight_decay=1e-3),
        1e-3,
        5e-3,
        1e-3,
        rtol=1e-5,
        complex_ok=False,  # optax squares complex gradients (g * g, not |g|^2)
    ),
    # 1-D leaves preconditioned too, so the quadratic and Rosenbrock runs exercise the
    # rotations; test_modern.py checks SOAP against the paper's algorithm in numpy
    Case(
        "soap_merged_1d",
        lambda lib, lr: lib.soap(
            lr,
            precondition_frequency=3,
            max_precond_dim=64,
            merge_small_dims=True,
            precondition_1d=True,
            weight_decay=1e-3,
        ),
        1e-2,
        0.05,
        1e-2,
        reference=None,
    ),  # fmt: skip
]

CONFORMANCE = [
    Entry(
        "scale_by_adopt",
        "nesterov_bf16_mu",
        lambda: dlopt.scale_by_adopt(mu_dtype=jnp.bfloat16, nesterov=True),
    ),  # fmt: skip
    Entry("adopt", "", lambda: dlopt.adopt(1e-2)),
    Entry("scale_by_ademamix", "", dlopt.scale_by_ademamix),
    Entry("ademamix", "", lambda: dlopt.ademamix(1e-2, weight_decay=1e-2), DECAYS),
    Entry("scale_by_simplified_ademamix", "", dlopt.scale_by_simplified_ademamix),
    Entry("simplified_ademamix", "", lambda: dlopt.simplified_ademamix(1e-3)),
    Entry("scale_by_muon", "matrices", dlopt.scale_by_muon, {"params": MATRICES}),
    Entry("muon", "", lambda: dlopt.muon(1e-2, weight_decay=1e-2), DECAYS),
    Entry(
        "muon",
        "flax_names_nesterov_off",
        lambda: dlopt.muon(1e-2, nesterov=False, adaptive=True),
        {"params": FLAX_NAMED},
    ),
    Entry("normuon", "", lambda: dlopt.normuon(1e-2, weight_decay=1e-2), DECAYS),
    Entry(
        "normuon",
        "polar_express_experts",
        lambda: dlopt.normuon(1e-2, ns_coeffs="polar_express"),
        {"params": {"experts": {"wi": jnp.ones((2, 3, 4), jnp.float32)}}},
    ),
    Entry("scale_by_soap", "", lambda: dlopt.scale_by_soap(precondition_frequency=2)),
    Entry("soap", "", lambda: dlopt.soap(1e-2), DECAYS),
]
REQUIRED: dict[str, Any] = {}
NO_HYPERPARAMETERS: set[str] = set()
