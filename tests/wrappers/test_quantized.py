"""dlopt.quantized: the 8-bit codes, round trips, state bytes, peak memory, quality,
resume, ZeRO-1.

Also the peak memory of the per-moment dtypes (bf16 moments with stochastic rounding).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from support.benchmarks import load
from support.training import MLP, batches, make_data, make_loss_fn, make_state

import dlopt
from dlopt import training
from dlopt.training import History, ModelCheckpoint, restore
from dlopt.wrappers.codes8 import dynamic_code, linear_code
from dlopt.wrappers.codes8 import encode as _encode
from dlopt.wrappers.quantized4 import Quantized4Array
from dlopt.wrappers.quantized_array import QuantizedArray, dequantize, quantize

quality_bench = load("quantized_quality")

BF16 = jnp.bfloat16
N4M = 4 * 2**20
CODES = {"dynamic": dynamic_code, "linear": linear_code}

# ------------------------------------------------------------------------------ the codes


def test_dynamic_code_is_bitsandbytes_map():
    signed, unsigned = dynamic_code(True), dynamic_code(False)
    for code in (signed, unsigned):
        assert code.shape == (256,) and code.dtype == np.float32
        assert np.all(np.diff(code) > 0) and 0.0 in code and code[-1] == 1.0
    np.testing.assert_allclose(signed[0], -(0.98594 + 1) / 2, rtol=1e-4)  # -0.993, no -1
    assert (signed < 0).sum() == 127 and (signed > 0).sum() == 128
    assert unsigned[0] == 0.0 and (unsigned > 0).sum() == 255
    # level 0 of the signed map: the midpoint of [0.1, 1] times 1e-6
    np.testing.assert_allclose(signed[signed > 0][0], 0.55e-6, rtol=1e-6)
    # the top decade of the signed map: 64 values, spacing 0.9 / 64
    top = signed[(signed >= 0.1) & (signed < 1)]
    assert len(top) == 64 and np.allclose(np.diff(top), 0.9 / 64, rtol=1e-4)
    assert len(unsigned[(unsigned >= 0.1) & (unsigned < 1)]) == 128


@pytest.mark.parametrize("code", list(CODES))
@pytest.mark.parametrize("signed", [True, False])
def test_encode_picks_the_nearest_code(code, signed):
    table = CODES[code](signed)
    rng = np.random.default_rng(0)
    y = rng.uniform(-1.0 if signed else 0.0, 1.0, 4000)
    y = np.concatenate([y, np.sign(y) * np.abs(y) ** 8, table, (table[1:] + table[:-1]) / 2])
    y = y.astype(np.float32)
    index = np.asarray(_encode(jnp.asarray(y), jnp.asarray(signed), code, 0.5))
    best = np.min(np.abs(table[None, :] - y[:, None]), axis=1)
    np.testing.assert_allclose(np.abs(table[index] - y), best, atol=1e-7)


def _half_gaps(table, x):
    """Half the gap between the two codes around each value of ``x``."""
    hi = np.clip(np.searchsorted(table, x), 1, len(table) - 1)
    return (table[hi] - table[hi - 1]) / 2


ROUND_TRIPS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "cauchy": lambda rng, n: rng.standard_cauchy(n),  # heavy tails
    "squares": lambda rng, n: rng.standard_normal(n) ** 2,  # non-negative: unsigned code
    "zeros": lambda rng, n: np.zeros(n),
    "one_huge": lambda rng, n: np.where(np.arange(n) % 256 == 7, 3e38, rng.standard_normal(n)),
    "negative_max": lambda rng, n: np.where(np.arange(n) % 256 == 3, -50.0, rng.uniform(size=n)),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
@pytest.mark.parametrize("code", list(CODES))
def test_round_trip_error_within_the_code_resolution(name, code):
    rng = np.random.default_rng(1)
    x = ROUND_TRIPS[name](rng, 1000 * 37).astype(np.float32).reshape(1000, 37)
    q = quantize(jnp.asarray(x), 256, code=code)
    y = np.asarray(dequantize(q))
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    blocks = np.pad(x.reshape(-1), (0, -x.size % 256)).reshape(-1, 256)
    got = np.pad(y.reshape(-1), (0, -y.size % 256)).reshape(-1, 256)
    scale = np.asarray(q.scale)
    np.testing.assert_array_equal(scale, blocks[np.arange(len(blocks)), np.abs(blocks).argmax(1)])
    signed = np.asarray(q.signed)
    np.testing.assert_array_equal(signed, (blocks < 0).any(1))
    for b in range(len(blocks)):
        table = CODES[code](bool(signed[b]))
        if scale[b] == 0:
            np.testing.assert_array_equal(got[b], 0.0)
            continue
        normalized = blocks[b] / scale[b]
        bound = _half_gaps(table, normalized) * abs(scale[b])
        assert np.all(np.abs(got[b] - blocks[b]) <= bound * (1 + 1e-5) + 1e-30 * abs(scale[b]))
        # the block's largest magnitude is stored exactly, whatever its sign
        k = np.abs(blocks[b]).argmax()
        assert got[b][k] == blocks[b][k]
    # max error relative to the block's scale: the coarsest half-step of the code
    worst = np.max(np.abs(got - blocks) / np.maximum(np.abs(scale), 1e-38)[:, None])
    resolution = {"dynamic": (0.9 / 64 / 2, 0.9 / 128 / 2), "linear": (1 / 254, 1 / 510)}[code]
    assert worst <= max(resolution) * (1 + 1e-5)


def test_quantize_keeps_shape_dtype_and_handles_ragged_blocks():
    x = jnp.linspace(-1.0, 2.0, 1000, dtype=jnp.float32).reshape(10, 100).astype(BF16)
    q = quantize(x, 64)
    assert q.codes.shape == (16, 64) and q.codes.dtype == jnp.uint8
    assert q.scale.shape == (16,) and q.scale.dtype == jnp.float32
    y = dequantize(q)
    assert y.shape == (10, 100) and y.dtype == BF16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(x, np.float32), atol=0.03)


def test_stochastic_rounding_is_unbiased_between_neighbouring_codes():
    table = dynamic_code(True)
    value = float(0.3 * table[200] + 0.7 * table[201])  # 30% of the way from code 201 down
    x = jnp.full((2**16,), value, jnp.float32).at[0].set(1.0)  # the max pins the scale to 1
    x = x.at[1].set(-0.5)  # and a negative value the signed code
    seed = dlopt.numerics.state_seed(jnp.asarray(5, jnp.int32), 0, 1)
    codes = np.asarray(quantize(x, 2**16, seed=seed).codes)[0, 2:]
    assert set(np.unique(codes)) == {200, 201}
    np.testing.assert_allclose(np.mean(codes == 200), 0.3, atol=0.01)
    again = np.asarray(quantize(x, 2**16, seed=seed).codes)[0, 2:]
    np.testing.assert_array_equal(codes, again)  # a hash of (index, seed): reproducible


# ------------------------------------------------------------------------- the wrapper


def tree(n, leaves=4):
    return {
        f"w{i}": jax.ShapeDtypeStruct((n // leaves // 1024, 1024), jnp.float32)
        for i in range(leaves)
    }


def state_bytes(tx, params):
    state = jax.eval_shape(tx.init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def test_state_bytes_per_parameter_on_a_4m_tree():
    params = tree(N4M)
    per_param = {
        name: state_bytes(tx, params) / N4M
        for name, tx in {
            "f32": dlopt.adam(1e-3),
            "bf16": dlopt.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16),
            "q8": dlopt.quantized(dlopt.adam(1e-3)),
        }.items()
    }
    assert per_param["f32"] == pytest.approx(8.0, abs=1e-5)
    assert per_param["bf16"] <= 4.05
    assert per_param["q8"] <= 2.2


def peak(tx, params):
    """(argument + temp) bytes of the compiled, donated train step of a linear model:
    gradients (a temporary, as in any train step), ``update`` and ``apply_updates``."""
    state = jax.eval_shape(tx.init, params)
    x = jax.ShapeDtypeStruct((8, 1024), jnp.float32)

    def step(p, s, x):
        g = jax.grad(lambda p: sum(jnp.sum((x @ w.T) ** 2) for w in p.values()))(p)
        u, s = tx.update(g, s, p)
        return dlopt.apply_updates(p, u), s

    with jax.numpy_dtype_promotion("standard"):
        stats = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile()
    stats = stats.memory_analysis()
    return stats.argument_size_in_bytes + stats.temp_size_in_bytes


@pytest.mark.parametrize("leaves", [1, 4])
def test_peak_memory_of_the_donated_step_falls_with_the_state(leaves):
    params = tree(N4M, leaves)
    f32 = peak(dlopt.adam(1e-3), params)
    assert f32 <= 16.1 * N4M  # params + grads + state, no temporaries
    assert peak(dlopt.adam(1e-3, mu_dtype=BF16, nu_dtype=BF16), params) <= 0.76 * f32
    # params + grads + codes + a few chunks: no float32 moment-sized temporary
    assert peak(dlopt.quantized(dlopt.adam(1e-3)), params) <= 0.65 * f32
    assert peak(dlopt.quantized(dlopt.adam(1e-3), bits=4), params) <= 0.59 * f32


def test_small_and_non_float_leaves_stay_as_they_are():
    tx = dlopt.quantized(dlopt.adam(1e-3), min_size=100)
    params = {"w": jnp.ones((20, 10)), "b": jnp.ones(99)}
    state = tx.init(params)
    adam = state.inner_state[0]
    assert isinstance(adam.mu["w"], QuantizedArray) and adam.mu["b"].dtype == jnp.float32
    assert adam.count.dtype == jnp.int32  # integers never quantized
    abstract = jax.eval_shape(
        tx.init, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    )
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, state)


def test_validation_names_the_argument():
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        dlopt.quantized(dlopt.adam(1e-3), bits=6)
    with pytest.raises(ValueError, match="block_size"):
        dlopt.quantized(dlopt.adam(1e-3), block_size=0)
    with pytest.raises(TypeError, match="min_size"):
        dlopt.quantized(dlopt.adam(1e-3), min_size=1.5)
    with pytest.raises(ValueError, match="code must be one of"):
        dlopt.quantized(dlopt.adam(1e-3), code="fp8")
    with pytest.raises(ValueError, match="state_rounding"):
        dlopt.quantized(dlopt.adam(1e-3), state_rounding="up")
    with pytest.raises(TypeError, match="tx must be"):
        dlopt.quantized(0.1)


def test_wraps_optax_and_sits_in_optax_chains():
    params = {"w": jnp.linspace(-1.0, 1.0, 4096).reshape(64, 64)}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.2, params)  # magnitudes within 3x
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    for tx in (
        dlopt.quantized(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))),
        optax.chain(optax.clip_by_global_norm(1.0), dlopt.quantized(dlopt.adam(1e-2))),
    ):
        state, ref_state = tx.init(params), reference.init(params)
        for _ in range(3):
            with jax.numpy_dtype_promotion("standard"):
                u, state = jax.jit(tx.update)(grads, state, params)
                ref, ref_state = reference.update(grads, ref_state, params)
        chex.assert_trees_all_close(u, ref, rtol=1e-2)  # the rounded state, 3 steps
        is_q = lambda x: isinstance(x, QuantizedArray)  # noqa: E731
        assert any(map(is_q, jax.tree.leaves(state, is_leaf=is_q)))


def test_extra_args_reach_the_wrapped_transform():
    tx = dlopt.quantized(dlopt.chain(dlopt.sgd(0.1, 0.9), dlopt.reduce_on_plateau(patience=0)))
    params = {"w": jnp.ones((64, 64))}
    state = tx.init(params)
    for value in (1.0, 2.0, 3.0):  # getting worse: the plateau scale drops
        _, state = tx.update(params, state, params, value=jnp.asarray(value))
    assert float(state.inner_state[1].plateau.scale) < 1.0


# ----------------------------------------------------------------------------- quality


# the problems of `benchmarks.quantized_quality` (which runs the 4-bit comparison too)
lstsq_problem = quality_bench.lstsq_problem
digits_problem = quality_bench.digits_problem
final_loss = quality_bench.full_batch_final_loss


def quality(problem_name):
    problem, lr = {"lstsq": (lstsq_problem(), 1e-2), "digits": (digits_problem(), 1e-3)}[
        problem_name
    ]
    variants = {
        "f32": dlopt.adam(lr),
        "bf16": dlopt.adam(lr, mu_dtype=BF16, nu_dtype=BF16),
        "bf16_nearest": dlopt.adam(lr, mu_dtype=BF16, nu_dtype=BF16, state_rounding="nearest"),
        "q8": dlopt.quantized(dlopt.adam(lr)),
        "q8_linear": dlopt.quantized(dlopt.adam(lr), code="linear"),
        "q4": dlopt.quantized(dlopt.adam(lr), bits=4),
    }
    return {name: final_loss(problem, tx) for name, tx in variants.items()}


@pytest.mark.parametrize("problem", ["lstsq", "digits"])
def test_low_precision_state_ends_within_5_percent_of_float32(problem):
    losses = quality(problem)
    for name in ("bf16", "q8") + (("q4",) if problem == "digits" else ()):
        assert losses[name] <= 1.05 * losses["f32"] and losses[name] >= 0.95 * losses["f32"], losses
    if problem == "lstsq":  # 4-bit misses the 5% target here: 1.26x float32's loss
        assert losses["q4"] <= 1.35 * losses["f32"], losses


def test_round_to_nearest_bf16_does_measurably_worse_on_least_squares():
    losses = quality("lstsq")
    assert losses["bf16"] <= 1.005 * losses["f32"]
    assert losses["bf16_nearest"] >= 1.02 * losses["f32"], losses


@pytest.mark.parametrize("problem", ["lstsq", "digits"])
def test_a_linear_code_diverges_where_the_dynamic_code_trains(problem):
    losses = quality(problem)
    # NaN counts as diverged; where it stays finite (digits), it ends 50x above float32's loss
    # (near the 2.3 it starts at): 20x is far outside the 5% the dynamic code keeps
    assert not losses["q8_linear"] < 20 * losses["f32"], losses


# ------------------------------------------------------------------- resume and ZeRO-1


def small_tx(bits=8):
    return dlopt.quantized(dlopt.adam(1e-2), bits=bits, block_size=8, min_size=16)


@pytest.mark.parametrize("bits", [8, 4])
def test_checkpoint_round_trip_resumes_bit_identically(tmp_path, bits):
    data = batches(make_data(64, seed=1), 16)
    step = training.make_train_step(make_loss_fn(MLP()))
    state = make_state(small_tx(bits))
    stored = QuantizedArray if bits == 8 else Quantized4Array
    assert isinstance(state.opt_state.inner_state[0].nu["Dense_0"]["kernel"], stored)
    for batch in data[:2]:
        state, _ = step(state, batch)
    ckpt = ModelCheckpoint(tmp_path, save_best_only=False)
    ckpt.save(1, state, History())
    ckpt.on_train_end(state, History())
    restored, _ = restore(tmp_path, target=make_state(small_tx(bits), seed=3))
    chex.assert_trees_all_equal(
        jax.tree.leaves(restored.opt_state), jax.tree.leaves(state.opt_state)
    )
    for batch in data[2:]:
        state, _ = step(state, batch)
        restored, _ = step(restored, batch)
    chex.assert_trees_all_equal(jax.tree.leaves(restored), jax.tree.leaves(state))


def test_zero1_mesh_step_shards_the_codes_and_matches_one_device():
    data = batches(make_data(4 * 32, seed=1), 32)
    loss_fn = make_loss_fn(MLP())
    one = training.make_train_step(loss_fn)
    mesh = training.make_mesh(8)
    sharded = training.make_mesh_train_step(loss_fn, mesh=mesh, shard_opt_state=True)
    ref = make_state(small_tx())
    state = training.shard_state(make_state(small_tx()), mesh, shard_opt_state=True)
    for batch in data * 3:
        ref, _ = one(ref, batch)
        state, _ = sharded(state, training.shard_batch(batch, mesh))
    codes = state.opt_state.inner_state[0].mu["Dense_0"]["kernel"].codes  # (8, 8)
    assert codes.dtype == jnp.uint8 and codes.sharding.spec != P()
    got, want = jax.device_get((state.params, ref.params))
    # Dense_0's bias feeds BatchNorm: its gradient is rounding noise, and Adam's m / sqrt(v)
    # of noise differs between layouts even in float32; every other leaf matches
    del got["Dense_0"]["bias"], want["Dense_0"]["bias"]
    chex.assert_trees_all_close(got, want, atol=1e-6)
