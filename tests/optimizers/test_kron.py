"""PSGD Kron (`dlopt.kron`): parity with psgd-jax's ``kron``, layout, key, resume, sharding.

psgd-jax 0.2.9 imports ``optax._src.clipping``, which optax 0.2.8 no longer has: the
`psgd_kron` fixture puts optax's ``transforms._clipping`` there for the test's duration
(the shim lives here, never in dlopt). Both libraries then draw the same probes (same key,
same splits) and agree to float32 rounding over 40 steps.
"""

from __future__ import annotations

import functools
import importlib
import sys

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import dlopt
from dlopt.optimizers import kron_layout

STEPS = 40
SHAPES = {"w": (6, 5), "b": (5,), "s": (), "conv": (3, 3, 2, 4), "tall": (40, 3), "w2": (6, 5)}


@pytest.fixture(scope="module")
def psgd_kron():
    """psgd-jax's ``kron`` module, imported with the optax shim; the shim is removed after."""
    import optax._src
    import optax.transforms._clipping as clipping

    added = "optax._src.clipping" not in sys.modules
    sys.modules.setdefault("optax._src.clipping", clipping)
    optax._src.clipping = clipping
    yield importlib.import_module("psgd_jax.kron")
    if added:
        del sys.modules["optax._src.clipping"]
        del optax._src.clipping


def initial_params(shapes=SHAPES):
    rng = np.random.default_rng(0)
    return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def loss(params):
    """Non-convex, ill-scaled per leaf: sin bumps on a bowl whose curvature grows with the index."""
    total = jnp.zeros([], jnp.float32)
    for x in jax.tree.leaves(params):
        scales = jnp.linspace(0.2, 5.0, x.size, dtype=jnp.float32).reshape(x.shape)
        total = total + jnp.sum(0.5 * scales * x**2 + jnp.sin(3 * x))
    return total


@functools.cache
def runner(make):
    tx = make()

    def one(carry, _):
        params, state = carry
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return (jax.tree.map(jnp.add, params, updates), state), updates

    @jax.jit
    def run(params, state):
        (params, state), updates = jax.lax.scan(one, (params, state), None, length=STEPS // 2)
        return params, state, jax.tree.map(lambda u: u[-1], updates)

    return tx, run


def run_steps(make, params=None):
    tx, run = runner(make)
    params = initial_params() if params is None else params
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        params, state, _ = run(params, tx.init(params))
        return run(params, state)


PARITY = {
    "defaults": {},
    "every_third_step": {"preconditioner_update_probability": 0.3, "b1": 0.95},
    "one_diag_no_momentum": {
        "memory_save_mode": "one_diag",
        "b1": 0.0,
        "momentum_into_precond_update": False,
    },  # fmt: skip
    "small_triangular_decay": {
        "max_size_triangular": 5,
        "min_ndim_triangular": 3,
        "preconditioner_lr": 0.3,
        "preconditioner_init_scale": 0.5,
        "weight_decay": 1e-2,
    },  # fmt: skip
}


@pytest.mark.parametrize("name", PARITY)
def test_matches_psgd_jax_kron(psgd_kron, name):
    kwargs = {"precond_update_precision": "float32", **PARITY[name]}
    ours = run_steps(functools.partial(dlopt.kron, 1e-2, **kwargs))
    theirs = run_steps(functools.partial(psgd_kron.kron, 1e-2, **kwargs))
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-4, atol=1e-6)  # params
    chex.assert_trees_all_close(ours[2], theirs[2], rtol=1e-4, atol=1e-6)  # last updates
    our_qs, their_qs = ours[1][0].Qs_preconditioners, theirs[1][0]["Qs_preconditioners"]
    for key in SHAPES:
        for q, r in zip(our_qs[key], their_qs[key], strict=True):
            np.testing.assert_allclose(np.reshape(q, np.shape(r)), r, rtol=1e-4, atol=1e-6)
    assert int(ours[1][0].update_counter) == int(theirs[1][0]["update_counter"])
    assert float(loss(ours[0])) < 0.5 * float(loss(initial_params()))


def test_scanned_layers_match_psgd_jax(psgd_kron):
    params = initial_params({"stack": (3, 4, 5), "b": (5,)})
    scanned = {"stack": True, "b": False}
    kwargs = {"precond_update_precision": "float32", "scanned_layers": scanned}
    ours = run_steps(functools.partial(dlopt.kron, 1e-2, **kwargs), params)
    theirs = run_steps(functools.partial(psgd_kron.kron, 1e-2, **kwargs), params)
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-4, atol=1e-6)
    assert ours[1][0].Qs_preconditioners["stack"][0].shape == (3, 4, 4)  # one Q per layer


def test_works_with_only_a_learning_rate():
    params = initial_params()
    tx = dlopt.kron(3e-3)
    updates, state = jax.jit(tx.update)(params, tx.init(params), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_tree_all_finite((updates, state))


def test_bfloat16_params_get_bfloat16_updates_and_float32_factors():
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), initial_params())
    tx = dlopt.kron(1e-2, mu_dtype=jnp.float32)
    updates, state = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    assert state[0].mu["w"].dtype == jnp.float32
    dtypes = {q.dtype for q in jax.tree.leaves(state[0].Qs_preconditioners)}
    assert dtypes == {jnp.dtype(jnp.float32)}


# ------------------------------------------------------------------------ layout


def test_merge_dims_picks_psgd_jax_grouping():
    diag = (False,) * 4
    assert kron_layout.merge_dims((3, 3, 64, 128), 2048, diag) == ((576, 128), (False, False))
    assert kron_layout.merge_dims((1, 1), 2048, (True, True)) == ((1,), (True,))
    assert kron_layout.merge_dims((4096, 3), 2048, (False, True)) == ((12288,), (False,))


@pytest.mark.parametrize("scanned", [False, True])
def test_blocks_round_trip_with_padding(scanned):
    shape = (2, 10, 7) if scanned else (10, 7)
    plan = kron_layout.plan_leaf(shape, scanned=scanned, max_size=64, min_ndim=2,
                                 memory_save_mode=None, merge=False, target=2048, block_size=4,
                                 partition=True)  # fmt: skip
    assert plan.block == (4, 4) and plan.splits == (3, 2) and plan.padded
    x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    blocks = kron_layout.to_blocks(x, plan)
    assert blocks.shape == (plan.n_items, 4, 4)
    first = np.asarray(x).reshape(-1, 10, 7)[0]
    np.testing.assert_array_equal(blocks[0], first[:4, :4])
    np.testing.assert_array_equal(blocks[1], np.pad(first[:4, 4:], ((0, 0), (0, 1))))
    np.testing.assert_array_equal(blocks[5], np.pad(first[8:, 4:], ((0, 2), (0, 1))))
    np.testing.assert_array_equal(kron_layout.from_blocks(blocks, plan), x)
    np.testing.assert_array_equal(plan.valid()[:6], [[4, 4], [4, 3], [4, 4], [4, 3], [2, 4],
                                                     [2, 3]])  # fmt: skip


def test_padding_stays_out_of_the_fit():
    """A (6, 6) leaf in blocks of 4 (each axis split in two, padded to 8): the padded rows
    and columns of each factor keep their initial (balanced) identity, and it optimizes."""
    params = initial_params({"w": (6, 6)})
    blocked = functools.partial(dlopt.kron, 1e-2, partition_grads_into_blocks=True, block_size=4)
    final, state, _ = run_steps(blocked, params)
    q = state[0].Qs_preconditioners["w"][0]  # (4 blocks, 4, 4)
    assert q.shape == (4, 4, 4)
    np.testing.assert_allclose(q[-1, 2:, 2:], np.eye(2) * q[-1, 2, 2], atol=0)
    np.testing.assert_array_equal(q[-1, :2, 2:], 0.0)
    assert float(loss(final)) < 0.5 * float(loss(params))


def test_merged_dims_equal_a_reshaped_leaf():
    """merge_small_dims is a reshape: the same run as on the leaf reshaped by hand (the
    probes are drawn in the leaf's shape; threefry's draws do not depend on it)."""
    merged_shape, _ = kron_layout.merge_dims((3, 3, 4, 5), 16, (False,) * 4)
    assert merged_shape == (9, 20)
    leaf = initial_params({"k": (3, 3, 4, 5)})
    merged = run_steps(
        functools.partial(dlopt.kron, 1e-2, merge_small_dims=True, target_merged_dim_size=16),
        leaf,
    )
    reshaped = run_steps(functools.partial(dlopt.kron, 1e-2), {"k": leaf["k"].reshape(9, 20)})
    assert [q.shape for q in merged[1][0].Qs_preconditioners["k"]] == [(9, 9), (20, 20)]
    np.testing.assert_allclose(merged[0]["k"].reshape(9, 20), reshaped[0]["k"], rtol=1e-5)


def test_same_shaped_leaves_compile_one_computation():
    """Twenty (8, 8) leaves trace the fit as often as two: one vmapped copy per block shape."""

    def solves(n):
        params = {f"w{i}": jnp.ones((8, 8)) for i in range(n)}
        tx = dlopt.kron(1e-2)
        jaxpr = jax.make_jaxpr(tx.update)(params, tx.init(params), params)
        return str(jaxpr).count("triangular_solve")

    assert solves(20) == solves(2) > 0


# ------------------------------------------------------------------ key and resume


def updates_for(**kwargs):
    params = initial_params({"w": (6, 5)})
    tx = dlopt.kron(1e-2, **kwargs)
    return tx.update(params, tx.init(params), params)


def test_key_sets_the_draws():
    base, state = updates_for(key=3)
    for same in (jax.random.key(3), jax.random.PRNGKey(3), np.int64(3)):
        chex.assert_trees_all_equal(updates_for(key=same), (base, state))
    assert not np.allclose(updates_for(key=4)[0]["w"], base["w"])
    assert state[0].key.dtype == jnp.uint32  # raw key data: a plain array state
    default, _ = updates_for()
    chex.assert_trees_all_equal(default, updates_for(key=5318008)[0])  # psgd-jax's seed
    with pytest.raises(TypeError, match="key"):
        dlopt.kron(1e-2, key=1.5)


@pytest.mark.parametrize("kwargs", [{}, {"partition_grads_into_blocks": True, "block_size": 4}])
def test_checkpoint_resume_is_bitwise(kwargs):
    make = functools.partial(dlopt.kron, 1e-2, preconditioner_update_probability=0.5, **kwargs)
    tx, run = runner(make)
    params = initial_params()
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        half_params, half_state, _ = run(params, tx.init(params))
        straight = run(half_params, half_state)
        blob = flax.serialization.to_bytes(half_state)
        restored = flax.serialization.from_bytes(tx.init(params), blob)
        resumed = run(half_params, restored)
    chex.assert_trees_all_equal(resumed, straight)


def test_update_probability_schedule_is_psgd_jax(psgd_kron):
    ours, theirs = dlopt.precond_update_prob_schedule(), psgd_kron.precond_update_prob_schedule()
    t = jnp.arange(0, 6000, 250, dtype=jnp.int32)
    with jax.numpy_dtype_promotion("standard"):
        np.testing.assert_allclose(ours(t), theirs(t), rtol=1e-6)
    with pytest.raises(ValueError, match="min_prob"):
        dlopt.precond_update_prob_schedule(min_prob=2.0)


# -------------------------------------------------------------------------- sharding


def test_momentum_is_sharded_like_the_params():
    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    tx = dlopt.kron(1e-2, partition_grads_into_blocks=True, block_size=4)
    with jax.set_mesh(mesh):
        params = jnp.zeros((2, 8, 4), jnp.float32, out_sharding=NamedSharding(mesh, P(None, "x")))
        grads = jnp.full((2, 8, 4), 0.5, jnp.float32, out_sharding=params.sharding)
        state0 = tx.init(params)
        assert jax.typeof(state0[0].mu).sharding.spec == jax.typeof(params).sharding.spec
        updates, state1 = jax.jit(tx.update)(grads, state0, params)
        chex.assert_trees_all_equal(jax.tree.map(jax.typeof, state1),
                                    jax.tree.map(jax.typeof, state0))  # fmt: skip
        assert jax.typeof(updates) == jax.typeof(params)
