"""Two local CPU processes (gloo, loopback coordinator) train together and end with the
params one process gets on the same global batches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import chex
import jax
import numpy as np
import pytest
from support import TESTS
from support.training import MLP, batches, make_data, make_loss_fn, make_state

from dlopt import training
from dlopt.training import distributed

STEPS = 6
GLOBAL_BATCH = 16

WORKER = textwrap.dedent(
    """
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    from dlopt.training import distributed
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n, b, steps = (int(a) for a in sys.argv[4:7])
    distributed.initialize(f"127.0.0.1:{port}", 2, pid, initialization_timeout=60)
    import numpy as np
    from dlopt import training
    from support.training import MLP, batches, make_data, make_loss_fn, make_state

    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    mesh = training.make_mesh()
    step = training.make_mesh_train_step(make_loss_fn(MLP()), mesh=mesh, shard_opt_state=True)
    state = training.shard_state(make_state(), mesh, shard_opt_state=True)
    data = batches(make_data(n, seed=5), b)
    for t in range(steps):
        local = distributed.local_rows(data[t % len(data)])
        state, metrics = step(state, training.shard_batch(local, mesh))
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.params)]
    np.savez(out, *leaves, loss=np.asarray(metrics["loss"].addressable_data(0)))
    distributed.shutdown()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    tests_dir = str(TESTS)  # support/ lives there
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([tests_dir, os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "",
    }
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(port), str(pid), str(tmp_path / f"out{pid}.npz")]
            + [str(3 * GLOBAL_BATCH), str(GLOBAL_BATCH), str(STEPS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    logs, deadline = [], time.monotonic() + 60.0  # the whole run, both processes
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(deadline - time.monotonic(), 1.0))[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=False):
        assert p.returncode == 0, log[-3000:]

    # one process, the same global batches, the plain jit step
    step = training.make_train_step(make_loss_fn(MLP()))
    state = make_state()
    data = batches(make_data(3 * GLOBAL_BATCH, seed=5), GLOBAL_BATCH)
    for t in range(STEPS):
        state, metrics = step(state, data[t % len(data)])
    want = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    for pid in range(2):
        got = np.load(tmp_path / f"out{pid}.npz")
        chex.assert_trees_all_close(
            [got[f"arr_{i}"] for i in range(len(want))], want, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(got["loss"], metrics["loss"], rtol=1e-5)


def test_process_slices_single_process():
    assert distributed.is_main_process()
    assert distributed.process_slice(8) == slice(0, 8)
    data = make_data(6)
    chex.assert_trees_all_equal(distributed.local_rows(data), data)
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize("127.0.0.1:1", num_processes=2, process_id=2)
