"""TrainState: creation, RNG forms, variables (the shared models live in support/training.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support.training import make_state

import dlopt
from dlopt.training import TrainState, make_train_step

# --- TrainState tests


def test_create_fields():
    state = make_state()
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert state.skipped_steps.dtype == jnp.int32 and int(state.skipped_steps) == 0
    assert state.rng.dtype == jnp.uint32
    assert set(state.model_state) == {"batch_stats"}
    assert set(state.variables) == {"params", "batch_stats"}
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(a, b),
        state.opt_state,
        state.tx.init(state.stored_params),  # the default layout: flat here
    )


@pytest.mark.parametrize(
    "rng",
    [3, jax.random.key(3), jax.random.key_data(jax.random.key(3))],
    ids=["int", "typed-key", "raw"],
)
def test_rng_forms_agree(rng):
    state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=rng)
    np.testing.assert_array_equal(state.rng, jax.random.key_data(jax.random.key(3)))
    np.testing.assert_array_equal(jax.random.key_data(state.key), state.rng)


def test_bad_rng_raises():
    with pytest.raises(ValueError, match="rng"):
        TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=1.5)


def test_is_pytree_with_static_tx():
    state = make_state()
    leaves, treedef = jax.tree.flatten(state)
    # step, rng, skipped_steps and every params/opt/model leaf; tx and apply_fn are static
    expected = 3 + sum(
        len(jax.tree.leaves(t)) for t in (state.stored_params, state.opt_state, state.model_state)
    )
    assert len(leaves) == expected
    back = jax.tree.unflatten(treedef, leaves)
    assert back.tx is state.tx and back.apply_fn is state.apply_fn


def test_apply_gradients_is_one_sgd_step():
    params = {"w": jnp.array([1.0, -2.0])}
    state = TrainState.create(apply_fn=None, params=params, tx=dlopt.sgd(0.5), rng=0)
    state = state.apply_gradients({"w": jnp.array([2.0, 4.0])})
    np.testing.assert_allclose(state.params["w"], [0.0, -4.0])
    assert int(state.step) == 1


def test_create_with_a_string_tx_names_tx():
    with pytest.raises(TypeError, match=r"tx must be a GradientTransformation .* got tx='adam'"):
        TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx="adam", rng=0)


def test_apply_gradients_with_a_list_for_dict_params_names_both_containers():
    state = TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=dlopt.sgd(0.1), rng=0)
    with pytest.raises(ValueError, match="params is a dict and updates a list"):
        state.apply_gradients(grads=[jnp.ones(2)])


def test_every_state_leaf_has_a_buffer_of_its_own():
    """apply_if_finite's init puts one zero in two fields, dog's state holds the params: a
    donating step would donate one buffer twice; create gives each leaf its own."""
    step = make_train_step(
        lambda p, b, **_: jnp.mean(jnp.square(b["x"] * p["w"][None, None] - 1.0))
    )
    for tx in (dlopt.apply_if_finite(dlopt.sgd(0.1), 3), dlopt.dog()):
        state = TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)}, tx=tx, rng=0)
        buffers = [id(x) for x in jax.tree.leaves(state)]
        assert len(buffers) == len(set(buffers))
        for _ in range(2):
            state, _ = step(state, {"x": jnp.ones((4, 1, 3))})  # donates the state
