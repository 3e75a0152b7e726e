"""Memory traffic: bytes each rule must move per step, the machine's copy bandwidth, state bytes.

An elementwise update step is memory bound: it reads the params, the gradients and every state
buffer, and writes the params and every state buffer back. Those bytes divided by the step's
time is the achieved bandwidth; divided by the bandwidth of a jitted large-array copy measured in
the same run it is the roofline fraction.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax

import dlopt
from benchmarks.update_step import LR, OPTIMIZERS, num_params, state_bytes


def copy_bandwidth(num_bytes: int, reps: int = 20) -> dict[str, float]:
    """Bytes/s of a jitted ``x <- x + 1`` over ``num_bytes`` of float32 (read x, write x).

    ``x`` is donated, as the update steps' buffers are: a fresh output buffer every call
    would time the operating system's page faults, not the memory.
    """
    x = jnp.zeros((num_bytes // 4,), jnp.float32)
    f = jax.jit(lambda a: a + jnp.float32(1), donate_argnums=(0,))
    for _ in range(3):
        x = jax.block_until_ready(f(x))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        x = jax.block_until_ready(f(x))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"bytes": 2 * x.nbytes, "median_s": median, "bytes_per_s": 2 * x.nbytes / median}


def bytes_per_step(params_bytes: int, state_bytes_: int) -> int:
    """Params read + written, gradients read, each state buffer read + written."""
    return 3 * params_bytes + 2 * state_bytes_


def roofline_rows(update_rows: list[dict[str, Any]], copy_bw: float) -> list[dict[str, Any]]:
    """Rows of the ``large`` tree: achieved bandwidth and roofline fraction per contender."""
    out = []
    for row in update_rows:
        if row["tree"] != "large":
            continue
        params_bytes = 4 * row["params"]
        entry = {"optimizer": row["optimizer"], "params": row["params"]}
        for name, res in row["results"].items():
            lib = "optax" if name == "optax" else "dlopt"
            moved = bytes_per_step(params_bytes, row["state_bytes"][lib])
            achieved = moved / res["median_s"]
            entry[name] = {
                "bytes_per_step": moved,
                "bytes_per_s": achieved,
                "roofline": achieved / copy_bw,
            }
        out.append(entry)
    return out


def state_bytes_per_param(n: int = 1 << 16) -> list[dict[str, Any]]:
    """Optimizer-state bytes per float32 parameter, each rule, dlopt and optax (and fused)."""
    params = {"w": jnp.zeros((n,), jnp.float32)}
    rows = []
    builds = dict(OPTIMIZERS)
    builds["adam_mu_bf16"] = (
        lambda lr: dlopt.adam(lr, mu_dtype=jnp.bfloat16),
        lambda lr: optax.adam(lr, mu_dtype=jnp.bfloat16),
    )
    for name, (make_dlopt, make_optax) in builds.items():
        rows.append(
            {
                "optimizer": name,
                "dlopt": state_bytes(make_dlopt(LR), params) / num_params(params),
                "fused": state_bytes(dlopt.fused(make_dlopt(LR)), params) / num_params(params),
                "optax": state_bytes(make_optax(LR), params) / num_params(params),
            }
        )
    return rows
