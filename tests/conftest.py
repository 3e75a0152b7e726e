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

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=10,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("ci")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code_after_each_module():
    """Drops JAX's compiled executables and trace caches when a test module is done: a worker
    that keeps every module's executables grew past 4 GiB of resident memory in its first 10
    minutes, and two of them with the memory tests' subprocesses can exhaust the machine
    (tests/schedules, tree and losses in one process: peak 2.5 GB kept, 1.3 GB dropped)."""
    yield
    jax.clear_caches()
    gc.collect()
