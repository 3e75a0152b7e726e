"""Optimizer state follows the params' sharding, and ``init`` plans on abstract params.

For every row of the optimizer table, on a mesh of 8 CPU devices with JAX's explicit
sharding: the state made by ``init`` is sharded like the params (``float16[2,8@x,4]``, not a
replicated ``float16[2,8,4]``), ``update`` keeps every state type, and jitted ``init`` and
``update`` give the same types as eager ones. ``init`` also accepts ``jax.ShapeDtypeStruct``
params, which is how state shardings are planned before anything is allocated.
(optax's sharding_test.py checks the same; it skips itself on jax >= 0.10 by comparing
version strings.)
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from support.optimizers import by_case

import dlopt

MESH = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))


def types(tree):
    return jax.tree.map(jax.typeof, tree)


def test_mesh_has_eight_devices():
    assert MESH.devices.size == 8


@by_case
def test_state_is_sharded_like_the_params_and_keeps_its_types(case):
    tx = case.build(dlopt, 1e-2)
    with jax.set_mesh(MESH):
        params = jnp.zeros((2, 8, 4), jnp.float16, out_sharding=NamedSharding(MESH, P(None, "x")))
        grads = jnp.full((2, 8, 4), 0.5, jnp.float16, out_sharding=params.sharding)
        state0 = tx.init(params)
        for leaf in jax.tree.leaves(state0):
            if jnp.shape(leaf) == params.shape:
                assert jax.typeof(leaf).sharding.spec == jax.typeof(params).sharding.spec, leaf
        updates, state1 = tx.update(grads, state0, params)
        chex.assert_trees_all_equal(types(state1), types(state0))
        assert jax.typeof(updates) == jax.typeof(params)
        chex.assert_trees_all_equal(types(jax.jit(tx.init)(params)), types(state0))
        _, state2 = jax.jit(tx.update)(grads, state0, params)
        chex.assert_trees_all_equal(types(state2), types(state1))


@by_case
def test_init_accepts_abstract_params(case):
    tx = case.build(dlopt, 1e-2)
    params = {
        "w": jax.ShapeDtypeStruct((2, 4, 8), jnp.float32),
        "b": jax.ShapeDtypeStruct((8,), jnp.float32),
    }
    state = tx.init(params)
    concrete = tx.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params))
    chex.assert_trees_all_equal_shapes_and_dtypes(state, concrete)


@pytest.mark.parametrize(
    "make",
    [
        lambda: dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adamw(1e-3)),
        lambda: dlopt.inject_hyperparams(dlopt.adam)(learning_rate=1e-3),
        lambda: dlopt.apply_if_finite(dlopt.sgd(0.1, momentum=0.9), 3),
        lambda: dlopt.multi_steps(dlopt.adam(1e-3), 2),
        lambda: dlopt.skip_step_on_spikes(dlopt.adam(1e-3), interval=4),
        lambda: dlopt.chain(
            dlopt.scale_by_adam(),
            dlopt.clip_by_update_rms(1.0, stacked_axes=1),
            dlopt.clip_by_norm_history(interval=4),
            dlopt.scale(-1e-3),
        ),
    ],
    ids=[
        "chain",
        "inject_hyperparams",
        "apply_if_finite",
        "multi_steps",
        "skip_step_on_spikes",
        "update_clipping",
    ],  # fmt: skip
)
def test_wrappers_keep_the_params_sharding(make):
    tx = make()
    with jax.set_mesh(MESH):
        params = jnp.zeros((2, 8, 4), jnp.float32, out_sharding=NamedSharding(MESH, P(None, "x")))
        state0 = tx.init(params)
        _, state1 = jax.jit(tx.update)(params, state0, params)
        chex.assert_trees_all_equal(types(state1), types(state0))
        big = [leaf for leaf in jax.tree.leaves(state0) if jnp.shape(leaf) == params.shape]
        spec = jax.typeof(params).sharding.spec
        assert big and all(jax.typeof(b).sharding.spec == spec for b in big)
