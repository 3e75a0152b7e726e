"""dlopt.core.numerics: compute dtypes, moments, bias correction and stochastic-rounding storage."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt.core import numerics

N = 200_000


def test_compute_dtype_is_float32_or_wider():
    assert numerics.compute_dtype(jnp.bfloat16) == jnp.float32
    assert numerics.compute_dtype(jnp.float16, jnp.bfloat16) == jnp.float32
    assert numerics.compute_dtype(jnp.float32) == jnp.float32
    assert numerics.compute_dtype(jnp.complex64, jnp.float32) == jnp.complex64


def test_ema_bias_correction_and_abs_sq():
    m = numerics.ema(jnp.zeros(3, jnp.float32), jnp.ones(3, jnp.bfloat16), 0.9)
    assert m.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(m), 0.1, rtol=1e-6)
    c = numerics.bias_correction(0.9, jnp.asarray(3, jnp.int32))
    assert c.dtype == jnp.float32
    np.testing.assert_allclose(float(c), 1 - 0.9**3, rtol=1e-6)
    z = jnp.array([3 + 4j, 1j], jnp.complex64)
    sq = numerics.abs_sq(z)
    assert sq.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sq), [25.0, 1.0])


def _seed(step, leaf=0, salt=1):
    return numerics.state_seed(jnp.asarray(step, jnp.int32), leaf, salt)


def _neighbours(value: float, dtype) -> tuple[float, float]:
    """The two ``dtype`` values bracketing ``value``."""
    nearest = jnp.asarray(value, jnp.float32).astype(dtype)
    toward = jnp.asarray(-jnp.inf if float(nearest) > value else jnp.inf, dtype)
    other = jnp.nextafter(nearest, toward)
    return tuple(sorted((float(nearest), float(other))))


@pytest.mark.parametrize(
    "dtype, value",
    [
        (jnp.bfloat16, 1.0 + 2**-10),  # 1/8 of the way up
        (jnp.bfloat16, -3.0 - 3 * 2**-8),  # 3/4 of the way down
        (jnp.float16, 1.0 + 2**-13),
        (jnp.float16, 1e-6),  # the subnormal range
    ],
)
def test_stochastic_rounding_is_unbiased_between_the_two_neighbours(dtype, value):
    x = jnp.full((N,), value, jnp.float32)
    y = jax.jit(lambda x, s: numerics.store(x, dtype, s))(x, _seed(7))
    got = np.asarray(y.astype(jnp.float32))
    lo, hi = _neighbours(value, dtype)
    assert lo < value < hi and set(np.unique(got)) <= {lo, hi}
    p_up = (value - lo) / (hi - lo)
    assert abs(float(np.mean(got == hi)) - p_up) < 5 * np.sqrt(p_up * (1 - p_up) / N)
    assert abs(float(np.mean(got)) - value) < 5 * (hi - lo) * np.sqrt(0.25 / N)


def test_stochastic_rounding_is_deterministic_and_seeded():
    x = jnp.linspace(-1.0, 1.0, 4096, dtype=jnp.float32) * jnp.float32(1.0 + 2**-10)
    a = numerics.store(x, jnp.bfloat16, _seed(3))
    b = jax.jit(numerics.store, static_argnums=1)(x, jnp.bfloat16, _seed(3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for other in (_seed(4), _seed(3, leaf=1), _seed(3, salt=2)):
        assert np.any(np.asarray(numerics.store(x, jnp.bfloat16, other)) != np.asarray(a))


def test_a_decaying_bf16_moment_keeps_decaying_only_with_stochastic_rounding():
    # 0.999 * v rounds back to v in bfloat16 with round-to-nearest: the moment sticks.
    v = jnp.ones((20_000,), jnp.float32)
    stochastic, nearest = v.astype(jnp.bfloat16), v.astype(jnp.bfloat16)
    decay = jax.jit(
        lambda v, s, mode: numerics.store(0.999 * v.astype(jnp.float32), jnp.bfloat16, s, mode),
        static_argnums=2,
    )
    for t in range(1000):
        stochastic = decay(stochastic, _seed(t), "stochastic")
        nearest = decay(nearest, _seed(t), "nearest")
    truth = 0.999**1000
    assert abs(float(jnp.mean(stochastic.astype(jnp.float32))) / truth - 1) < 0.01
    assert float(nearest[0]) == 1.0


def test_store_passes_non_finite_values_and_is_a_plain_cast_otherwise():
    special = jnp.array([jnp.inf, -jnp.inf, jnp.nan, 0.0, -0.0], jnp.float32)
    for dtype in (jnp.bfloat16, jnp.float16):
        out = np.asarray(numerics.store(special, dtype, _seed(1)).astype(jnp.float32))
        np.testing.assert_array_equal(out, np.asarray(special))
    x = jnp.linspace(-2.0, 2.0, 33, dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(numerics.store(x, jnp.float32, _seed(1))), x)
    np.testing.assert_array_equal(
        np.asarray(numerics.store(x, jnp.bfloat16, _seed(1), "nearest")),
        np.asarray(x.astype(jnp.bfloat16)),
    )


def test_store_under_vmap_matches_the_unbatched_rows():
    x = jnp.full((3, 1000), 1.0 + 2**-9, jnp.float32)
    seeds = jnp.stack([_seed(t) for t in range(3)])
    batched = jax.vmap(lambda row, s: numerics.store(row, jnp.bfloat16, s))(x, seeds)
    for t in range(3):
        np.testing.assert_array_equal(
            np.asarray(batched[t]), np.asarray(numerics.store(x[t], jnp.bfloat16, seeds[t]))
        )


def test_check_rounding_names_the_argument():
    with pytest.raises(ValueError, match="state_rounding"):
        numerics.check_rounding("up")


def test_out_dtypes_follow_params_then_state_then_grads():
    g = {"a": jnp.ones(2, jnp.bfloat16), "b": None}
    p = {"a": jnp.ones(2, jnp.float32), "b": None}
    assert numerics.out_dtypes(g, p) == {"a": jnp.float32, "b": None}
    assert numerics.out_dtypes(g, None, p) == {"a": jnp.float32, "b": None}
    assert numerics.out_dtypes(g, None) == {"a": jnp.bfloat16, "b": None}
