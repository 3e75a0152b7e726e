"""dlopt.quantized's lean path: the elementwise test, chunked = whole-leaf arithmetic, the init
without float32 state, non-finite gradients, and the 4-bit state kinds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlopt
from dlopt.wrappers import elementwise
from dlopt.wrappers.quantized4 import Quantized4Array, dequantize4
from dlopt.wrappers.quantized_array import QuantizedArray, dequantize

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 96 * 70).reshape(96, 70), "b": jnp.ones(5)}


def grads(k):
    return jax.tree.map(lambda x: 0.01 * jnp.sin(x * (k + 3) + 1), PARAMS)


def is_stored(x):
    return isinstance(x, QuantizedArray | Quantized4Array)


@pytest.mark.parametrize(
    ("tx", "expected"),
    [
        (dlopt.adam(1e-3), True),
        (dlopt.adamw(1e-3), True),
        (dlopt.sgd(0.1, 0.9), True),
        (dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adam(1e-3)), False),  # a norm
        (dlopt.adam(1e-3, mu_dtype=jnp.bfloat16), False),  # noise hashed from the index
        (dlopt.stateless(lambda u, p: jax.tree.map(lambda x: x / x.size, u)), False),
    ],
)
def test_elementwise_is_found_from_the_trace(tx, expected):
    owners = elementwise.leaf_owners(tx.init, PARAMS)
    found = owners is not None and elementwise.update_is_elementwise(
        tx.update, PARAMS, jax.eval_shape(tx.init, PARAMS), PARAMS, owners
    )
    assert found == expected


def run(tx, steps=4, nan_at=None):
    state, params = tx.init(PARAMS), PARAMS
    for k in range(steps):
        g = grads(k)
        if k == nan_at:
            g = {**g, "w": g["w"].at[3, 5].set(jnp.nan)}
        u, state = tx.update(g, state, params)
        params = dlopt.apply_updates(params, u)
    return params, state


@pytest.mark.parametrize("bits", [8, 4])
def test_chunked_path_matches_the_whole_leaf_path(bits):
    # a global-norm clip that never clips makes the rule non-elementwise: the whole-leaf path
    lean = dlopt.quantized(dlopt.adam(1e-2), bits=bits, min_size=100)
    whole = dlopt.quantized(
        dlopt.chain(dlopt.adam(1e-2), dlopt.clip_by_global_norm(1e9)), bits=bits, min_size=100
    )
    got, _ = run(lean)
    want, _ = run(whole)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_one_nan_gradient_element_spoils_one_parameter_like_float32_adam(bits):
    tx = dlopt.quantized(dlopt.adam(1e-2), bits=bits, block_size=64, min_size=100)
    params, state = run(tx, steps=5, nan_at=1)
    reference, _ = run(dlopt.adam(1e-2), steps=5, nan_at=1)
    assert int(jnp.isnan(params["w"]).sum()) == int(jnp.isnan(reference["w"]).sum()) == 1
    for x in jax.tree.leaves(state, is_leaf=is_stored):  # the stored state stays finite
        leaves = [x.scale] if isinstance(x, QuantizedArray) else jax.tree.leaves(x)
        assert all(bool(jnp.all(jnp.isfinite(y))) for y in leaves if y.dtype != jnp.uint8)


def decode(x):
    return dequantize4(x) if isinstance(x, Quantized4Array) else dequantize(x)


@pytest.mark.parametrize("bits", [8, 4])
def test_zero_initial_state_is_codes_of_zero_and_non_zero_state_is_encoded(bits):
    state = dlopt.quantized(dlopt.adam(1e-2), bits=bits, min_size=100).init(PARAMS)
    mu = state.inner_state[0].mu["w"]
    assert is_stored(mu) and not np.any(np.asarray(mu.codes))
    tx = dlopt.quantized(
        dlopt.adagrad(0.1, initial_accumulator_value=0.25), bits=bits, min_size=100
    )
    for init in (tx.init, jax.jit(tx.init)):
        acc = init(PARAMS).inner_state[0].sum_of_squares["w"]
        assert is_stored(acc)
        np.testing.assert_allclose(decode(acc), 0.25, rtol=1e-6)


def test_four_bit_kinds_follow_the_field_names_and_the_override():
    state = dlopt.quantized(dlopt.adam(1e-2), bits=4, min_size=100).init(PARAMS)
    adam = state.inner_state[0]
    assert adam.mu["w"].kind == "de" and adam.nu["w"].kind == "rank1"
    assert adam.mu["w"].codes.shape == (53, 64)  # 6720 elements in blocks of 128, 2 a byte
    assert [s.shape for s in adam.nu["w"].stats] == [(96,), (70,)]
    flat = dlopt.quantized(dlopt.adam(1e-2), bits=4, min_size=1).init({"v": jnp.zeros(300)})
    assert flat.inner_state[0].nu["v"].kind == "linear"  # one axis: blocks of 128
    signed = dlopt.quantized(dlopt.adam(1e-2), bits=4, min_size=100, second_moments=())
    assert signed.init(PARAMS).inner_state[0].nu["w"].kind == "de"


def test_bits_and_second_moments_are_validated():
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        dlopt.quantized(dlopt.adam(1e-3), bits=5)
    with pytest.raises(ValueError, match="block_size must be even"):
        dlopt.quantized(dlopt.adam(1e-3), bits=4, block_size=9)
    with pytest.raises(TypeError, match="second_moments"):
        dlopt.quantized(dlopt.adam(1e-3), bits=4, second_moments="nu")
