"""The 4-bit codes of dlopt.wrappers.codes4: tables, packing, round trips, edge blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.core import numerics
from dlopt.wrappers.codes4 import (
    de4_decode,
    de4_encode,
    dequantize4_block,
    dequantize4_rank1,
    dynamic_exponent_code4,
    linear4_decode,
    linear4_encode,
    linear_code4,
    pack4,
    quantize4_block,
    quantize4_rank1,
    unpack4,
)

# jitted once per (shape, static args); the tests reuse them
q_block = jax.jit(quantize4_block, static_argnums=1)
dq_block = jax.jit(dequantize4_block, static_argnums=2)
q_rank1 = jax.jit(quantize4_rank1, static_argnames="zero_point")
dq_rank1 = jax.jit(dequantize4_rank1, static_argnums=2, static_argnames="zero_point")
enc_de, dec_de = jax.jit(de4_encode), jax.jit(de4_decode)
enc_lin, dec_lin = jax.jit(linear4_encode), jax.jit(linear4_decode, static_argnames="zero_point")


def reference_dynamic_map():
    """bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=3, total_bits=4)."""
    values = [0.0, 1.0]
    for i in range(3):
        edges = np.linspace(0.1, 1.0, 2**i + 1)
        means = 10.0 ** (i - 2) * (edges[:-1] + edges[1:]) / 2
        values += list(means) + list(-means)
    return np.sort(np.asarray(values, np.float32))


def half_gaps(table, x):
    """Half the gap between the two sorted code values around each ``x`` (clipped inside)."""
    table = np.sort(table)
    hi = np.clip(np.searchsorted(table, x), 1, len(table) - 1)
    return (table[hi] - table[hi - 1]) / 2


# ------------------------------------------------------------------------- tables, packing


def test_tables_are_the_papers_codes_and_decode_arithmetically():
    de = dynamic_exponent_code4()
    np.testing.assert_array_equal(np.sort(de), reference_dynamic_map())
    assert de.dtype == np.float32 and len(set(de.tolist())) == 16
    np.testing.assert_array_equal(np.asarray(dec_de(jnp.arange(16))), de)
    lin = linear_code4()
    np.testing.assert_array_equal(lin, np.arange(1, 17) / 16)  # no zero point
    np.testing.assert_array_equal(np.asarray(dec_lin(jnp.arange(16))), lin)
    with_zero = linear_code4(zero_point=True)
    assert with_zero[0] == 0 and with_zero[-1] == 1
    np.testing.assert_allclose(np.asarray(dec_lin(jnp.arange(16), zero_point=True)), with_zero)


@pytest.mark.parametrize("stochastic", [False, True])
def test_encoders_hit_every_code_value_exactly(stochastic):
    uniform = jnp.full(16, 0.999) if stochastic else None
    de = dynamic_exponent_code4()
    np.testing.assert_array_equal(
        np.asarray(enc_de(jnp.asarray(de), uniform=uniform)), np.arange(16)
    )
    lin = linear_code4()
    codes = enc_lin(jnp.asarray(lin), uniform=uniform)
    np.testing.assert_array_equal(np.asarray(codes), np.arange(16))


def test_de_encode_picks_the_nearest_value():
    y = np.random.default_rng(0).uniform(-1, 1, 20000).astype(np.float32)
    y = np.concatenate([y, np.sign(y) * y**6])
    got = dynamic_exponent_code4()[np.asarray(enc_de(jnp.asarray(y)))]
    table = dynamic_exponent_code4()
    best = np.min(np.abs(table[None, :] - y[:, None]), axis=1)
    np.testing.assert_allclose(np.abs(got - y), best, atol=1e-7)


@pytest.mark.parametrize("encode", ["de", "linear"])
def test_stochastic_rounding_is_unbiased(encode):
    n = 2**16
    value = 0.3 if encode == "de" else 0.3 / 16 + 5 / 16  # between two codes
    uniform = jnp.asarray(np.random.default_rng(8).uniform(size=n), jnp.float32)
    y = jnp.full((n,), value, jnp.float32)
    if encode == "de":
        decoded = dec_de(enc_de(y, uniform=uniform))
    else:
        decoded = dec_lin(enc_lin(y, uniform=uniform))
    assert len(np.unique(np.asarray(decoded))) == 2
    np.testing.assert_allclose(float(jnp.mean(decoded)), value, rtol=0.01)


@pytest.mark.parametrize("shape", [(), (1,), (7,), (8,), (3, 5), (2, 3, 4)])
def test_pack_round_trip_including_odd_lengths(shape):
    idx = np.random.default_rng(1).integers(0, 16, shape).astype(np.uint8)
    packed = jax.jit(pack4)(jnp.asarray(idx))
    n = shape[-1] if shape else 1
    assert packed.dtype == jnp.uint8 and packed.shape[-1] == (n + 1) // 2
    unpacked = jax.jit(unpack4, static_argnums=1)(packed, n)
    np.testing.assert_array_equal(np.asarray(unpacked).reshape(shape), idx)
    with pytest.raises(ValueError, match="n must be"):
        unpack4(packed, n + 2)


# -------------------------------------------------------------------------- block-wise m

BLOCKS = {
    "normal": lambda rng, n: rng.standard_normal(n),
    "cauchy": lambda rng, n: rng.standard_cauchy(n),
    "zeros": lambda rng, n: np.zeros(n),
    "one_huge": lambda rng, n: np.where(np.arange(n) % 128 == 5, 3e38, rng.standard_normal(n)),
    "negative_max": lambda rng, n: np.where(np.arange(n) % 128 == 3, -50.0, rng.uniform(size=n)),
    "tiny": lambda rng, n: 1e-30 * rng.standard_normal(n),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_round_trip_within_half_a_step_per_block(name):
    rng = np.random.default_rng(2)
    x = BLOCKS[name](rng, 37 * 41).astype(np.float32).reshape(37, 41)  # ragged last block
    codes, scales = q_block(jnp.asarray(x), 128)
    assert codes.shape == (12, 64) and codes.dtype == jnp.uint8 and scales.shape == (12,)
    y = np.asarray(dq_block(codes, scales, x.shape))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    blocks = np.pad(x.reshape(-1), (0, -x.size % 128)).reshape(-1, 128)
    got = np.pad(y.reshape(-1), (0, -y.size % 128)).reshape(-1, 128)
    s = np.asarray(scales)
    np.testing.assert_array_equal(s, blocks[np.arange(len(blocks)), np.abs(blocks).argmax(1)])
    table = dynamic_exponent_code4()
    for b in range(len(blocks)):
        if s[b] == 0:
            np.testing.assert_array_equal(got[b], 0.0)  # a zero block decodes to 0
            continue
        bound = half_gaps(table, blocks[b] / s[b]) * abs(s[b])
        assert np.all(np.abs(got[b] - blocks[b]) <= bound * (1 + 1e-5) + 1e-37)
        k = np.abs(blocks[b]).argmax()
        assert got[b][k] == blocks[b][k]  # the block's largest magnitude is exact, any sign


def test_non_finite_element_does_not_poison_its_block():
    x = np.random.default_rng(3).standard_normal(256).astype(np.float32)
    x[10], x[200] = np.nan, np.inf
    y = np.asarray(dq_block(*q_block(jnp.asarray(x), 128), x.shape))
    assert np.all(np.isfinite(y)) and y[10] == 0.0
    top = np.abs(np.delete(x[128:], 200 - 128)).max()  # +Inf: the top code of its sign
    assert 0.8875 * top * (1 - 1e-6) <= y[200] <= top
    clean = x.copy()
    clean[10], clean[200] = 0.0, 0.0
    z = np.asarray(dq_block(*q_block(jnp.asarray(clean), 128), x.shape))
    mask = np.ones(256, bool)
    mask[[10, 200]] = False
    np.testing.assert_array_equal(y[mask], z[mask])  # the rest coded as without them


def test_block_stochastic_rounding_and_dtype():
    x = jnp.linspace(-1.0, 2.0, 300, dtype=jnp.float32).astype(jnp.bfloat16)
    seed = numerics.state_seed(jnp.int32(3), 0, 1)
    codes, scales = jax.jit(quantize4_block, static_argnums=1)(x, 64, seed=seed)
    y = jax.jit(dequantize4_block, static_argnums=(2, 3))(codes, scales, x.shape, jnp.bfloat16)
    assert y.dtype == jnp.bfloat16 and y.shape == (300,)
    assert float(jnp.max(jnp.abs(y.astype(jnp.float32) - x.astype(jnp.float32)))) < 0.5
    with pytest.raises(ValueError, match="block_size must be even"):
        quantize4_block(x, 63)


# ----------------------------------------------------------------------------- rank-1 v


def first_axis(shape):
    """``[0, 1, ..., shape[0] - 1]`` shaped to broadcast along the first axis."""
    return np.arange(shape[0]).reshape(-1, *[1] * (len(shape) - 1))


RANK1 = {
    "squares": lambda rng, shape: rng.standard_normal(shape) ** 2,
    "rows_apart": lambda rng, shape: rng.uniform(size=shape) * 1e-2 ** first_axis(shape),
    "one_huge": lambda rng, shape: np.where(rng.uniform(size=shape) < 0.01, 3e38, 1.0),
    "zero_row": lambda rng, shape: np.where(first_axis(shape) == 2, 0.0, rng.uniform(size=shape)),
}


def rank1_reference_scale(x):
    dims = tuple(d for d in x.shape if d != 1)
    v = x.reshape(dims)
    scale = np.full(dims, np.inf, np.float32)
    for k in range(len(dims)):
        other = tuple(a for a in range(len(dims)) if a != k)
        shape = [1] * len(dims)
        shape[k] = -1
        scale = np.minimum(scale, v.max(axis=other).reshape(shape))
    return scale.reshape(x.shape)


@pytest.mark.parametrize("name", list(RANK1))
@pytest.mark.parametrize("shape", [(16, 33), (4, 1, 6, 5)])
def test_rank1_round_trip_within_half_a_step_and_never_zero(name, shape):
    x = RANK1[name](np.random.default_rng(4), shape).astype(np.float32)
    codes, stats = q_rank1(jnp.asarray(x))
    assert codes.dtype == jnp.uint8 and codes.shape[-1] == (shape[-1] + 1) // 2
    assert [s.shape for s in stats] == [(d,) for d in shape if d != 1]
    y = np.asarray(dq_rank1(codes, stats, shape))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    scale = rank1_reference_scale(x)
    assert np.all(x <= scale)
    # half a step of 1/16 at the element's scale; below 1/16 the code rounds up to 1/16
    bound = np.maximum(scale / 32, scale / 16 - x)
    assert np.all(np.abs(y - x) <= bound * (1 + 1e-5))
    assert np.all(y[x > 0] > 0)  # a positive v never decodes to 0
    np.testing.assert_array_equal(y[scale == 0], 0.0)  # an all-zero row decodes to 0


def test_rank1_keeps_small_columns_apart_from_large_ones():
    x = np.outer(np.ones(32), np.logspace(0, -8, 64)).astype(np.float32)
    x *= np.random.default_rng(5).uniform(0.5, 1, x.shape).astype(np.float32)
    y = np.asarray(dq_rank1(*q_rank1(jnp.asarray(x)), x.shape))
    assert np.max(np.abs(y - x) / x) <= 1 / 32 / 0.5 * (1 + 1e-5)
    blockwise = np.asarray(dq_rank1(*q_rank1(jnp.asarray(x.reshape(-1))), (x.size,)))
    # blocks of 128 span two rows, every column: small values decode to 1/16 of the largest
    assert np.max(np.abs(blockwise - x.reshape(-1)) / x.reshape(-1)) > 1e6


@pytest.mark.parametrize("shape", [(300,), (1, 300), ()])
def test_rank1_falls_back_to_blocks_for_vectors(shape):
    x = np.random.default_rng(6).uniform(size=shape).astype(np.float32)
    codes, stats = q_rank1(jnp.asarray(x))
    n = max(x.size, 1)
    assert codes.shape == (-(-n // 128), 64) and stats[0].shape == (-(-n // 128),)
    y = np.asarray(dq_rank1(codes, stats, shape))
    blocks = np.pad(x.reshape(-1), (0, -n % 128)).reshape(-1, 128)
    scale = np.repeat(blocks.max(1), 128)[:n].reshape(shape)
    assert np.all(np.abs(y - x) <= np.maximum(scale / 32, scale / 16 - x) * (1 + 1e-5))
    assert np.all(y > 0)


def test_rank1_non_finite_element_does_not_poison_its_row_or_column():
    x = np.random.default_rng(7).uniform(0.1, 1, (8, 16)).astype(np.float32)
    x[3, 4], x[5, 9] = np.nan, np.inf
    y = np.asarray(dq_rank1(*q_rank1(jnp.asarray(x)), x.shape))
    assert np.all(np.isfinite(y))
    clean = x.copy()
    clean[3, 4], clean[5, 9] = 0.0, 0.0
    scale = rank1_reference_scale(clean)
    assert y[3, 4] == scale[3, 4] and y[5, 9] == scale[5, 9]  # the top of its scale
    z = np.asarray(dq_rank1(*q_rank1(jnp.asarray(clean)), x.shape))
    mask = np.isfinite(x)
    np.testing.assert_array_equal(y[mask], z[mask])


def test_a_zero_point_rounds_small_second_moments_to_zero():
    x = (np.eye(16) + 0.01).astype(np.float32)  # every row and column holds a 1
    codes, stats = q_rank1(jnp.asarray(x), zero_point=True)
    with_zero = np.asarray(dq_rank1(codes, stats, x.shape, zero_point=True))
    off = ~np.eye(16, dtype=bool)
    assert np.all(with_zero[off] == 0)  # m / sqrt(0): the step Adam takes explodes
    without = np.asarray(dq_rank1(*q_rank1(jnp.asarray(x)), x.shape))
    np.testing.assert_allclose(without[off], 1.01 / 16)  # 6x too large: a smaller step
