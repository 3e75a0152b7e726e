"""The optax.contrib optimizers acprop, cocob, dog, dowg, madgrad, mechanize, momo, momo_adam.

One table (`CASES`: name, builder for either library, whether ``update`` needs the loss)
drives parity with optax.contrib (params, updates and every state leaf after `STEPS` jitted
steps on a small non-convex problem), bitwise checkpoint resume (state serialized halfway and
restored), dtype preservation for bfloat16 params, and the ``dlopt.contrib`` namespace,
signatures and state fields against optax.
"""

from __future__ import annotations

import functools
import inspect

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from support.optimizers import optax_signature_prefix

import dlopt

STEPS = 30
HALF = STEPS // 2  # every loop runs HALF steps per call: one compile per case and library


def _sched(lib):
    return lib.linear_schedule(0.2, 0.02, 20)


# name -> (lambda lib: transform, needs value=)
CASES = {
    "acprop": (lambda c, lib: c.acprop(0.05, weight_decay=1e-3), False),
    "acprop_schedule": (lambda c, lib: c.acprop(_sched(lib), b1=0.8, b2=0.99), False),
    "cocob": (lambda c, lib: c.cocob(), False),
    "cocob_decay": (lambda c, lib: c.cocob(0.5, alpha=10.0, weight_decay=1e-3), False),
    "dog": (lambda c, lib: c.dog(), False),
    "dog_lr_decay": (lambda c, lib: c.dog(0.5, ("learning_rate", 0.1), weight_decay=1e-3), False),
    "dog_distance": (lambda c, lib: c.dog(init_step=("distance", 0.1)), False),
    "dowg": (lambda c, lib: c.dowg(), False),
    "dowg_init_decay": (lambda c, lib: c.dowg(0.5, 0.5, weight_decay=1e-3), False),
    "madgrad": (lambda c, lib: c.madgrad(0.05), False),
    "madgrad_schedule": (
        lambda c, lib: c.madgrad(_sched(lib), momentum=0.5, weight_decay=1e-3),
        False,
    ),
    "mechanize_adam": (lambda c, lib: c.mechanize(lib.adam(1.0)), False),
    "mechanize_sgd": (lambda c, lib: c.mechanize(lib.sgd(1.0, 0.9), 0.0, num_betas=3), False),
    "momo": (lambda c, lib: c.momo(), True),
    "momo_adapt": (
        lambda c, lib: c.momo(0.5, 0.8, weight_decay=1e-2, adapt_lower_bound=True),
        True,
    ),
    "momo_schedule": (lambda c, lib: c.momo(_sched(lib), lower_bound=1.0), True),
    "momo_adam": (lambda c, lib: c.momo_adam(), True),
    "momo_adam_adapt": (
        lambda c, lib: c.momo_adam(0.1, weight_decay=1e-2, adapt_lower_bound=True),
        True,
    ),
}


def build(name: str, lib) -> object:
    return CASES[name][0](lib.contrib, lib)


def loss(params):
    """A non-convex loss, bounded below by 0 (for MoMo's lower bound): sin bumps on a bowl."""
    return sum(jnp.sum(0.5 * x**2 + jnp.sin(3 * x) + 1.0) for x in jax.tree.leaves(params))


def initial_params(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3), "b": (3,), "s": ()}
    return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


@functools.cache
def runner(name: str, library: str):
    """A jitted ``(params, state) -> (params, state, last updates)`` of `HALF` steps."""
    lib = {"dlopt": dlopt, "optax": optax}[library]
    tx, needs_value = build(name, lib), CASES[name][1]

    def one(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params)
        extra = {"value": value} if needs_value else {}
        updates, state = tx.update(grads, state, params, **extra)
        return (dlopt.apply_updates(params, updates), state), updates

    @jax.jit
    def run(params, state):
        (params, state), updates = jax.lax.scan(one, (params, state), None, length=HALF)
        return params, state, jax.tree.map(lambda u: u[-1], updates)

    return tx, run


def run_lib(name: str, library: str):
    """`STEPS` steps from `initial_params`: (params, state, last updates)."""
    tx, run = runner(name, library)
    params = initial_params()
    with jax.numpy_dtype_promotion("standard"):  # optax is not clean under strict promotion
        params, state, _ = run(params, tx.init(params))
        return run(params, state)


def _own_state(state):
    """The state without mechanize's base optimizer's (dlopt's sgd keeps other buffers)."""
    if hasattr(state, "base_optimizer_state"):
        return state._replace(base_optimizer_state=None)
    return state


@pytest.mark.parametrize("name", CASES)
def test_matches_optax_contrib(name):
    ours = run_lib(name, "dlopt")
    theirs = run_lib(name, "optax")
    chex.assert_trees_all_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)  # params
    chex.assert_trees_all_close(ours[2], theirs[2], rtol=1e-4, atol=1e-6)  # last updates
    # the state classes are dlopt's and optax's own (same fields): compare leaf by leaf
    ours_state = [np.asarray(x, np.float64) for x in jax.tree.leaves(_own_state(ours[1]))]
    theirs_state = [np.asarray(x, np.float64) for x in jax.tree.leaves(_own_state(theirs[1]))]
    chex.assert_trees_all_close(ours_state, theirs_state, rtol=1e-4, atol=1e-6)
    assert float(loss(ours[0])) < float(loss(initial_params()))  # and it does optimize


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_resume_is_bitwise(name):
    """Half the steps, the state through msgpack bytes, the other half: the same bits."""
    tx, run = runner(name, "dlopt")
    params = initial_params()
    half_params, half_state, _ = run(params, tx.init(params))
    straight = run(half_params, half_state)
    blob = flax.serialization.to_bytes(half_state)
    restored = flax.serialization.from_bytes(tx.init(params), blob)
    resumed = run(half_params, restored)
    chex.assert_trees_all_equal(resumed[0], straight[0])
    chex.assert_trees_all_equal(resumed[1], straight[1])


@pytest.mark.parametrize("name", ["acprop", "cocob", "dog", "dowg", "madgrad", "mechanize_adam",
                                  "momo", "momo_adam"])  # fmt: skip
def test_bfloat16_params_get_bfloat16_updates(name):
    tx, needs_value = build(name, dlopt), CASES[name][1]
    params = initial_params(jnp.bfloat16)
    grads = jax.tree.map(lambda p: (0.5 * p).astype(p.dtype), params)
    extra = {"value": jnp.asarray(2.0, jnp.float32)} if needs_value else {}
    updates, state = tx.update(grads, tx.init(params), params, **extra)
    chex.assert_trees_all_equal_dtypes(updates, params)
    chex.assert_tree_all_finite((updates, state))


NAMES = ("acprop", "scale_by_acprop", "cocob", "scale_by_cocob", "dog", "dowg", "madgrad",
         "scale_by_madgrad", "mechanize", "momo", "momo_adam")  # fmt: skip
STATES = ("COCOBState", "DoGState", "DoWGState", "MadgradState", "MechanicState", "MomoState",
          "MomoAdamState", "NormalizeState")  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_signature_matches_optax(name):
    optax_signature_prefix(getattr(dlopt.contrib, name), getattr(optax.contrib, name))
    assert getattr(dlopt, name) is getattr(dlopt.contrib, name)


def test_scale_by_dog_and_dowg_signatures_match_optax():
    from optax.contrib import _dog

    optax_signature_prefix(dlopt.scale_by_dog, _dog.scale_by_dog)
    optax_signature_prefix(dlopt.scale_by_dowg, _dog.scale_by_dowg)


@pytest.mark.parametrize("name", STATES)
def test_state_fields_match_optax(name):
    ours, theirs = getattr(dlopt.contrib, name), getattr(optax.contrib, name)
    assert ours._fields == theirs._fields


def test_contrib_namespace_holds_optax_contrib_names_dlopt_implements():
    """Every optax.contrib name outside contrib_b's part resolves at dlopt.contrib."""
    contrib_b = {"galore", "scale_by_galore", "GaLoreState", "GaLoreDimensionNumbers", "sophia",
                 "SophiaState", "hutchinson_estimator_diag_hessian", "HutchinsonState", "dpsgd",
                 "differentially_private_aggregate", "DifferentiallyPrivateAggregateState",
                 "split_real_and_imaginary", "SplitRealAndImaginaryState"}  # fmt: skip
    public = {n for n in dir(optax.contrib) if not n.startswith("_")}
    missing = sorted(n for n in public - contrib_b if not hasattr(dlopt.contrib, n))
    assert not missing, missing


@pytest.mark.parametrize("name", ["momo", "momo_adam"])
def test_momo_without_the_loss_says_how_to_pass_it(name):
    tx = getattr(dlopt, name)()
    params = initial_params()
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(params, tx.init(params), params, value=None)


@pytest.mark.parametrize("name", ["cocob", "dog", "dowg", "madgrad", "mechanize_adam", "momo"])
def test_update_without_params_says_so(name):
    tx, needs_value = build(name, dlopt), CASES[name][1]
    params = initial_params()
    extra = {"value": 1.0} if needs_value else {}
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params), None, **extra)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dlopt.dog(init_step=("bogus", 1.0)), "init_step"),
        (lambda: dlopt.dog(init_step=1e-6), "init_step"),
        (lambda: dlopt.dog(init_step=("distance", 0.0)), "init_step"),
        (lambda: dlopt.dowg(init_estim_sq_dist=-1.0), "init_estim_sq_dist"),
        (lambda: dlopt.mechanize(dlopt.adam(1.0), num_betas=0), "num_betas"),
        (lambda: dlopt.mechanize("adam"), "base_optimizer"),
        (lambda: dlopt.momo(beta=1.0), "beta"),
        (lambda: dlopt.momo_adam(b2=1.5), "b2"),
        (lambda: dlopt.madgrad(0.1, momentum=1.0), "momentum"),
        (lambda: dlopt.cocob(alpha=0.0), "alpha"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_dowg_reproduces_optax_docstring_numbers():
    """optax's docstring example for dowg prints these losses (its momo example assigns the
    updates to the params, so its numbers are not a trajectory)."""
    f = lambda x: jnp.sum(x**2)  # noqa: E731
    tx, params, seen = dlopt.dowg(), jnp.array([1.0, 2.0, 3.0]), []
    state = tx.init(params)
    for _ in range(5):
        updates, state = tx.update(jax.grad(f)(params), state, params)
        params = dlopt.apply_updates(params, updates)
        seen.append(float(f(params)))
    expected = [13.925367, 13.872763, 13.775433, 13.596172, 13.268837]
    np.testing.assert_allclose(seen, expected, rtol=1e-5)
    assert inspect.signature(dlopt.dog).parameters["init_step"].default == ("heuristic", 1e-6)
