"""distributed_shampoo against the reference (optax-shampoo 0.0.6, shimmed in tests/support),
its inverse p-th root, blocking and stacking, refresh cond, pmap split and checkpoint resume.

Parity runs open-loop gradients (a fixed sequence, so a last-bit difference in one step is not
amplified by the next gradient) for 50 steps on a tree with a matrix, a vector, a matrix cut
into blocks and a 4-D kernel. The coupled Newton iteration stops on a tolerance, so a rounding
difference (the reference pads every statistic to the largest one, dlopt to its block) can move
its stopping step: the roots agree to ~1e-5, the params to rtol 1e-4.
"""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.shampoo_reference import reference_shims

import dlopt
from dlopt.linalg.matrix_root import inverse_pth_root
from dlopt.optimizers import shampoo_blocks

SHAPES = {"matrix": (6, 5), "vector": (7,), "large": (20, 9), "kernel": (3, 3, 4, 5)}
BASE = dict(block_size=8, merge_small_dims_block_size=16, start_preconditioning_step=3)
STEPS = 50


def tree(seed: int, scale: float = 1.0, shapes=SHAPES) -> dict:
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def run(tx, steps: int = STEPS, start: int = 0, params=None, state=None):
    """``steps`` jitted steps on the gradients ``noise_t + 0.1`` (t from ``start``); the
    promotion modes are the reference's (it multiplies an ``[n, n]`` by an ``[n]``)."""
    params = tree(0) if params is None else params
    state = tx.init(params) if state is None else state
    noise = [tree(100 + t, 0.3) for t in range(start, start + steps)]
    noise = jax.tree.map(lambda *x: jnp.stack(x), *noise)

    def step(carry, n):
        p, s = carry
        u, s = tx.update(jax.tree.map(lambda x: x + 0.1, n), s, p)
        return (jax.tree.map(jnp.add, p, u), s), None

    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        return jax.jit(lambda p, s: jax.lax.scan(step, (p, s), noise)[0])(params, state)


G = dlopt.GraftingType
CONFIGS = {
    "sgd_nesterov": {},
    "adagrad_l2": dict(graft_type=G.ADAGRAD, nesterov=False, weight_decay=1e-3),
    "rmsprop_normalized_decoupled_periodic": dict(
        graft_type=G.RMSPROP_NORMALIZED, decoupled_weight_decay=True, weight_decay=1e-2,
        preconditioning_compute_steps=3, statistics_compute_steps=2,
    ),
    "adagrad_normalized_exponent_average": dict(
        graft_type=G.ADAGRAD_NORMALIZED, exponent_override=4, moving_average_for_momentum=True
    ),
    "rmsprop_clip_input_only": dict(
        graft_type=G.RMSPROP, clip_by_scaled_gradient_norm=0.5, precondtioner_type=2
    ),
    "sqrt_n_coupled_lr_rank2": dict(
        graft_type=G.SQRT_N, decoupled_learning_rate=False, skip_preconditioning_rank_lt=2
    ),
    "large_dims_diagonal_absolute_eps": dict(
        graft_type=G.RMSPROP, skip_preconditioning_dim_size_gt=15,
        best_effort_shape_interpretation=False, relative_matrix_epsilon=False,
    ),
}  # fmt: skip
SLOW = pytest.mark.slow  # each row compiles the reference (~30-60 s on 2 loaded cores)


@pytest.mark.parametrize(
    "name", [n if n == "sgd_nesterov" else pytest.param(n, marks=SLOW) for n in CONFIGS]
)
@pytest.mark.filterwarnings("ignore:Explicitly requested dtype")  # its float64 without x64
def test_matches_the_reference_over_50_steps(name):
    kwargs = BASE | CONFIGS[name]
    ours, _ = run(dlopt.distributed_shampoo(0.05, **kwargs))
    with reference_shims() as reference:
        theirs, _ = run(reference.distributed_shampoo(0.05, **kwargs))
    chex.assert_trees_all_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), ours, tree(0)))


def test_the_reference_enum_and_ints_are_accepted():
    with reference_shims() as reference:
        by_enum = dlopt.distributed_shampoo(0.1, graft_type=reference.GraftingType.ADAGRAD)
    assert jax.tree.structure(by_enum.init(tree(0))) == jax.tree.structure(
        dlopt.distributed_shampoo(0.1, graft_type=2).init(tree(0))
    )


def test_inverse_pth_root_matches_eigh_and_masks_padding():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 5))
    a = a @ a.T + 0.1 * np.eye(5)
    padded = np.zeros((8, 8))
    padded[:5, :5] = a
    for p in (2, 4, 6):
        root, error = inverse_pth_root(jnp.asarray(padded, jnp.float32), p, 5, matrix_epsilon=0.0)
        w, v = np.linalg.eigh(a)
        expected = (v * w ** (-1.0 / p)) @ v.T
        np.testing.assert_allclose(np.asarray(root)[:5, :5], expected, rtol=2e-4, atol=2e-5)
        assert float(error) < 1e-5 and not np.any(np.asarray(root)[5:]) and not np.any(root[:, 5:])


def test_merge_small_dims_follows_the_reference():
    merge = shampoo_blocks.merge_small_dims
    assert merge((1, 2, 512, 1, 2048, 1, 3, 4), 1024) == (1024, 2048, 12)
    assert merge((1, 2, 768, 1, 2048), 1024) == (2, 768, 2048)
    assert merge((1, 1), 8) == (1,)


@pytest.mark.parametrize("shape", [(20, 9), (7,), (3, 3, 4, 5), (8, 16), (1, 5)])
def test_blocks_round_trip(shape):
    plan = shampoo_blocks.plan(
        [shape], block_size=4, merge_dims=16, skip=[False], input_only=False, exponent_override=0
    )
    x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
    groups = shampoo_blocks.to_groups([x], plan)
    chex.assert_trees_all_equal(shampoo_blocks.from_groups(groups, plan, [x])[0], x)


def test_same_shape_blocks_are_stacked_into_one_root_computation():
    """Ten 6x5 leaves and a 20x9 leaf cut in 8-blocks: two groups per shape, and one while loop
    pair (power iteration + Newton) per (size, exponent) in the step, not one per block."""
    params = {f"w{i}": jnp.ones((6, 5)) for i in range(10)} | {"big": jnp.ones((24, 16))}
    tx = dlopt.distributed_shampoo(
        0.1, block_size=8, preconditioning_compute_steps=4, best_effort_shape_interpretation=False
    )
    state = tx.init(params)
    assert sorted(s.shape for group in state.statistics for s in group) == [
        (6, 8, 8), (6, 8, 8), (10, 5, 5), (10, 6, 6)
    ]  # fmt: skip
    jaxpr = str(jax.make_jaxpr(tx.update)(params, state, params))
    assert jaxpr.count("while[") == 2 * 3  # sizes 5, 6 and 8 (exponent 4 each)
    assert jaxpr.count("cond[") == 1  # the refresh: one lax.cond over every stacked block


def test_vectors_and_huge_axes_fall_back_to_the_diagonal_rule():
    params = {"v": jnp.ones(5), "wide": jnp.ones((3, 40)), "w": jnp.ones((3, 4))}
    tx = dlopt.distributed_shampoo(
        0.1,
        skip_preconditioning_rank_lt=2,
        skip_preconditioning_dim_size_gt=32,
        best_effort_shape_interpretation=False,
    )
    state = tx.init(params)
    assert [s.shape for group in state.statistics for s in group] == [(1, 3, 3), (1, 4, 4)]
    updates, _ = tx.update(params, state, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_learning_rate_alone_uses_the_reference_defaults():
    params_after, state = run(dlopt.distributed_shampoo(1e-2), steps=8)
    assert int(state.count) == 8
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params_after))


@pytest.mark.parametrize(
    "argument, value",
    [("shard_optimizer_states", True), ("num_devices_for_pjit", 8), ("lobpcg_topk_precondition", 2),
     ("best_effort_memory_usage_reduction", True), ("statistics_partition_spec", ("x",)),
     ("graft_type", 9), ("precondtioner_type", 3), ("batch_axis_name", 3)],
)  # fmt: skip
def test_unimplemented_modes_and_bad_values_raise_naming_the_argument(argument, value):
    with pytest.raises((TypeError, ValueError), match=argument):
        dlopt.distributed_shampoo(0.1, **{argument: value})


def test_checkpoint_resume_is_bitwise():
    tx = dlopt.distributed_shampoo(0.05, **BASE, preconditioning_compute_steps=3)
    half_params, half_state = run(tx, steps=5)
    straight = run(tx, steps=5, start=5, params=half_params, state=half_state)
    blob = flax.serialization.to_bytes(half_state)
    restored = flax.serialization.from_bytes(tx.init(tree(0)), blob)
    resumed = run(tx, steps=5, start=5, params=half_params, state=restored)
    chex.assert_trees_all_equal(resumed, straight)


def test_batch_axis_name_splits_the_roots_over_replicas():
    """Each replica computes a slice of each stack of roots (a differently sized vmap: the
    Newton iteration may stop a step apart, hence the parity tolerance)."""
    n = min(jax.local_device_count(), 4)
    if n < 2:
        pytest.skip("needs 2 or more devices")
    params, grads = tree(0), tree(1)
    kwargs = BASE | {"start_preconditioning_step": 0}
    plain = dlopt.distributed_shampoo(0.05, **kwargs)
    split = dlopt.distributed_shampoo(0.05, **kwargs, batch_axis_name="i")
    expected, _ = plain.update(grads, plain.init(params), params)
    replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * n), t)  # noqa: E731
    got, _ = jax.pmap(split.update, axis_name="i")(
        replicate(grads), replicate(split.init(params)), replicate(params)
    )
    chex.assert_trees_all_close(
        jax.tree.map(lambda x: x[n - 1], got), expected, rtol=1e-4, atol=1e-5
    )


def test_state_is_sharded_like_the_params_on_an_explicit_mesh():
    """The per-leaf state (grafting moment, both momenta) takes the params' sharding; the
    stacked statistics are replicated (they mix blocks of many leaves)."""
    if jax.device_count() < 8:
        pytest.skip("needs the 8 CPU devices of tests/conftest.py")
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    tx = dlopt.distributed_shampoo(1e-2, graft_type=dlopt.GraftingType.RMSPROP)
    with jax.set_mesh(mesh):
        sharding = NamedSharding(mesh, P(None, "x"))
        params = {"w": jnp.zeros((2, 8, 4), jnp.float32, out_sharding=sharding)}
        grads = {"w": jnp.full((2, 8, 4), 0.5, jnp.float32, out_sharding=sharding)}
        state = tx.init(params)
        for buffer in (state.diagonal_statistics, state.diagonal_momentum, state.momentum):
            assert jax.typeof(buffer["w"]).sharding.spec == jax.typeof(params["w"]).sharding.spec
        updates, new_state = jax.jit(tx.update)(grads, state, params)
        assert jax.typeof(updates["w"]) == jax.typeof(params["w"])
        per_leaf = lambda st: (st.diagonal_statistics, st.diagonal_momentum, st.momentum)  # noqa: E731
        chex.assert_trees_all_equal(
            jax.tree.map(jax.typeof, per_leaf(new_state)), jax.tree.map(jax.typeof, per_leaf(state))
        )
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
