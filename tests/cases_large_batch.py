"""Memory-lean, large-batch, sign and game optimizers (adafactor, sm3, lamb, lars,
fromage, sign_sgd, signum, optimistic methods, noisy_sgd, polyak_sgd): rows of the optimizer table.

See `helpers.Case`; test_optimizers.py runs parity (rows with ``reference="optax"``),
convergence, properties and bad-input checks on every row. ``CONFORMANCE`` rows join the
conformance table (test_conformance.py: every exported factory needs one); ``REQUIRED``
gives valid values for required arguments that test_hyperparameters.py cannot guess, and
``NO_HYPERPARAMETERS`` names factories with nothing numeric to probe.
"""

from typing import Any

from helpers import Case, Entry

CASES: list[Case] = []
CONFORMANCE: list[Entry] = []
REQUIRED: dict[str, Any] = {}
NO_HYPERPARAMETERS: set[str] = set()
