"""Refused up front: storage dtypes, Python-number leaves, a state from another transform."""

from __future__ import annotations

import cases_conformance
import jax
import jax.numpy as jnp
import pytest

import dlopt
from dlopt.core import numerics, validation

# every optimizer argument that names a state buffer's storage dtype, with a factory using it
STORAGE_DTYPES = [
    ("mu_dtype", lambda d: dlopt.adam(1e-3, mu_dtype=d)),
    ("nu_dtype", lambda d: dlopt.adam(1e-3, nu_dtype=d)),
    ("accumulator_dtype", lambda d: dlopt.sgd(1e-3, momentum=0.9, accumulator_dtype=d)),
    ("accumulator_dtype", lambda d: dlopt.sgd(1e-3, accumulator_dtype=d)),  # even unused
    ("mu_dtype", lambda d: dlopt.rmsprop(1e-3, mu_dtype=d)),  # even without momentum
    ("nu_dtype", lambda d: dlopt.adagrad(1e-3, nu_dtype=d)),
    ("mu_dtype", lambda d: dlopt.sm3(1e-3, mu_dtype=d)),
    ("nu_dtype", lambda d: dlopt.sm3(1e-3, nu_dtype=d)),
    ("dtype_momentum", lambda d: dlopt.adafactor(1e-3, momentum=0.9, dtype_momentum=d)),
    ("accumulator_dtype", lambda d: dlopt.ema(0.9, accumulator_dtype=d)),
    ("state_dtype", lambda d: dlopt.schedule_free_sgd(1e-3, state_dtype=d)),
    ("accumulator_dtype", lambda d: dlopt.multi_steps(dlopt.sgd(0.1), 2, accumulator_dtype=d)),
    ("mu_dtype", lambda d: dlopt.lion(1e-3, mu_dtype=d)),
    ("factor_dtype", lambda d: dlopt.soap(1e-3, factor_dtype=d)),
    ("nu_dtype", lambda d: dlopt.ftrl(1e-3, nu_dtype=d)),
]


@pytest.mark.parametrize("bad", [jnp.int8, jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize(("name", "make"), STORAGE_DTYPES)
def test_integer_storage_dtypes_are_refused_naming_the_argument(name, make, bad):
    with pytest.raises(ValueError, match=f"{name}.*must be a floating dtype"):
        make(bad)


def test_non_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="mu_dtype must be a dtype or None"):
        dlopt.adam(1e-3, mu_dtype="fast")


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_narrow_float_moments_train(dtype, rounding):
    # float8_e4m3fn has no infinity: stochastic rounding stepped towards +-inf (NaN there)
    tx = dlopt.adam(0.1, mu_dtype=dtype, state_rounding=rounding)
    params = {"w": jnp.linspace(-1.0, 1.0, 8)}
    state, update = tx.init(params), jax.jit(tx.update)  # one compile, not one per op
    for _ in range(3):
        updates, state = update(params, state, params)  # grad of |w|^2 / 2
        params = dlopt.apply_updates(params, updates)
    assert state[0].mu["w"].dtype == dtype
    assert bool(jnp.all(jnp.isfinite(params["w"])))
    assert float(jnp.max(jnp.abs(params["w"]))) < 0.8  # moved towards 0


@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e4m3fnuz, jnp.float8_e5m2])
def test_float8_stochastic_rounding_is_finite_and_unbiased(dtype):
    x = jax.random.uniform(jax.random.key(0), (20000,), minval=-3.0, maxval=3.0)
    store = jax.jit(numerics.store, static_argnums=1)
    stored = store(x, dtype, numerics.state_seed(jnp.int32(1), 0, 1))
    assert stored.dtype == dtype
    y = stored.astype(jnp.float32)
    assert bool(jnp.all(jnp.isfinite(y)))
    assert abs(float(jnp.mean(y - x))) < 3e-3  # the spacing here is 0.125-0.5


def test_check_storage_dtype_canonicalizes():
    assert validation.check_storage_dtype("mu_dtype", None) is None
    assert validation.check_storage_dtype("mu_dtype", "bfloat16") == jnp.bfloat16
    assert validation.check_storage_dtype("mu_dtype", jnp.complex64) == jnp.complex64


# --- Python numbers as leaves (optax accepts them)

NEEDS_MORE = {
    "scale_by_polyak",
    "polyak_sgd",
    "reduce_on_plateau",
    "lookahead",
    "momo",
    "momo_adam",
}


def test_python_number_leaves_work_in_every_transform():
    failures, seen = [], set(NEEDS_MORE)  # those need value= or LookaheadParams
    for entry in cases_conformance.TRANSFORMS:
        if entry.name in seen:  # one entry per factory: one eager step each
            continue
        seen.add(entry.name)
        try:
            tx = entry.make()
            params = {"w": 1.0, "b": 2.0}
            updates, _ = tx.update({"w": 0.5, "b": -0.3}, tx.init(params), params)
            assert jnp.shape(updates["w"]) == ()
        except Exception as error:  # noqa: BLE001 - collected and reported together
            failures.append(f"{entry.name}[{entry.variant}]: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)


def test_adam_on_a_python_scalar_matches_an_array():
    tx = dlopt.adam(1e-3)
    updates, _ = tx.update({"w": 1.0}, tx.init({"w": 1.0}), {"w": 1.0})
    reference, _ = tx.update({"w": jnp.ones(())}, tx.init({"w": jnp.ones(())}))
    assert float(updates["w"]) == pytest.approx(float(reference["w"]))


# --- the wrong state


def test_a_state_from_another_transform_is_named():
    params = {"w": jnp.ones(3)}
    other = dlopt.sgd(0.1, momentum=0.9).init(params)
    with pytest.raises(TypeError, match="expected a ScaleByAdamState .* got a TraceState"):
        dlopt.adam(1e-3).update(params, other, params)


def test_grads_as_a_list_for_dict_params_name_both_containers():
    params = {"w": jnp.ones(3)}
    tx = dlopt.adam(1e-3)
    with pytest.raises(ValueError, match="same tree structure"):
        tx.update([jnp.ones(3)], tx.init(params), params)
