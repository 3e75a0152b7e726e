"""Strict numerics for the whole suite: dtype slips in update rules fail loudly.

Eight fake CPU devices are configured before JAX initializes, for pmap/sharding tests.
"""

import gc

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

from hypothesis import HealthCheck, settings  # noqa: E402
from support.benchmarks import load  # noqa: E402

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=10,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci")


CLEAR_CACHES_ABOVE_BYTES = 3 * 2**30


def _resident_bytes() -> int:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        return load("memory_process").status_bytes("VmRSS")
    except OSError:
        return 0


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code_when_memory_grows():
    """Drops JAX's compiled executables and trace caches after a test module once the process
    holds more than 3 GiB: a CI worker that kept every module's executables passed 4 GiB in its
    first 10 minutes, and two such workers with the memory tests' subprocesses can exhaust the
    machine (tests/schedules, tree and losses in one process: peak 2.5 GB kept, 1.3 GB
    dropped). Below the threshold, modules that share jitted runners keep them."""
    yield
    if _resident_bytes() > CLEAR_CACHES_ABOVE_BYTES:
        jax.clear_caches()
        gc.collect()
