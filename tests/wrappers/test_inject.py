"""inject_hyperparams with stateful schedules (optax's StatefulSchedule protocol)."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

import dlopt


class TotalState(NamedTuple):
    total: jax.Array


class RunningTotal:
    """A stateful schedule: the value is the running total of the ``addendum`` extra arg."""

    def init(self):
        return TotalState(jnp.zeros([], jnp.float32))

    def update(self, state, **extra_args):
        return TotalState(state.total + extra_args["addendum"])

    def __call__(self, state, **extra_args):
        return state.total + extra_args.get("addendum", 0.0)


PARAMS = (jnp.ones(3), jnp.ones(2))


def test_a_stateful_schedule_is_recognized_by_the_protocol():
    assert isinstance(RunningTotal(), dlopt.StatefulSchedule)
    assert not isinstance(lambda count: count, dlopt.StatefulSchedule)


def test_stateful_schedule_sees_the_extra_args_and_keeps_its_state():
    tx = dlopt.inject_hyperparams(dlopt.scale)(step_size=RunningTotal())
    state = jax.jit(tx.init)(PARAMS)
    extra = {"addendum": 0.3 * jnp.ones((), jnp.float32)}
    update = jax.jit(tx.update)
    for _ in range(2):
        updates, state = update(PARAMS, state, PARAMS, **extra)
    # the value used by the second step: total after one step (0.3) plus this step's 0.3
    chex.assert_trees_all_close(state.hyperparams["step_size"], 0.6)
    chex.assert_trees_all_close(state.hyperparams_states["step_size"].total, 0.6)
    chex.assert_trees_all_close(updates, jax.tree.map(lambda p: 0.6 * p, PARAMS))


def test_stateful_schedule_matches_optax():
    ours = dlopt.inject_stateful_hyperparams(dlopt.sgd)(learning_rate=RunningTotal())
    theirs = optax.inject_hyperparams(optax.sgd)(learning_rate=RunningTotal())
    s1, s2 = ours.init(PARAMS), theirs.init(PARAMS)
    extra = {"addendum": jnp.asarray(0.05, jnp.float32)}
    for _ in range(3):
        u1, s1 = ours.update(PARAMS, s1, PARAMS, **extra)
        u2, s2 = theirs.update(PARAMS, s2, PARAMS, **extra)
    chex.assert_trees_all_close(u1, u2)
    chex.assert_trees_all_close(s1.hyperparams_states, s2.hyperparams_states)


def test_a_stateful_schedule_can_be_scaled_like_a_schedule():
    tx = dlopt.inject_hyperparams(dlopt.scale)(step_size=RunningTotal())
    state = dlopt.set_schedule_scale(tx.init(PARAMS), "step_size", 0.5)
    updates, _ = tx.update(PARAMS, state, PARAMS, addendum=jnp.asarray(1.0, jnp.float32))
    chex.assert_trees_all_close(updates, jax.tree.map(lambda p: 0.5 * p, PARAMS))


def test_inject_hyperparams_passes_dtype_arguments_as_they_are():
    """A dtype class is callable but no schedule (adafactor's dtype_momentum=jnp.float32)."""
    params = {"w": jnp.ones((2, 3))}
    tx = dlopt.inject_hyperparams(dlopt.adafactor, static_args=("min_dim_size_to_factor",))(
        learning_rate=0.1, dtype_momentum=jnp.float32
    )
    state = tx.init(params)
    assert "dtype_momentum" not in state.hyperparams
    assert "decay_offset" in state.hyperparams  # an int, injected as an int32 array
    updates, _ = jax.jit(tx.update)(params, state, params)
    chex.assert_tree_all_finite(updates)


def test_inject_hyperparams_novograd_weight_decay_traced():
    params = {"w": jnp.ones((2, 3))}
    tx = dlopt.inject_hyperparams(dlopt.novograd)(learning_rate=0.1, weight_decay=0.1)
    plain = dlopt.novograd(learning_rate=0.1, weight_decay=0.1)
    updates, _ = jax.jit(tx.update)(params, tx.init(params), params)
    expected, _ = plain.update(params, plain.init(params), params)
    chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_a_schedule_that_starts_at_an_int_keeps_its_fractional_values():
    def schedule(count):  # an int at step 0, then 0.3 (called eagerly: count is concrete)
        return 1 if int(count) == 0 else 0.3

    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=schedule)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    assert jnp.issubdtype(state.hyperparams["learning_rate"].dtype, jnp.floating)
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
    assert float(state.hyperparams["learning_rate"]) == float(jnp.float32(0.3))


def test_optax_tree_get_finds_a_scheduled_hyperparameter_once():
    """optax's recipe for the current learning rate reads one value from dlopt's state: the
    schedule's scale is stored under "learning_rate_scale", not a second "learning_rate"."""

    def schedule(t):
        return 1.0 / (t.astype(jnp.float32) + 1)

    tx = dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=schedule)
    state = tx.init(jnp.zeros(3))
    for step in range(3):
        lr = optax.tree_utils.tree_get(
            state, "learning_rate", filtering=lambda _, value: isinstance(value, jnp.ndarray)
        )
        assert abs(float(lr) - 1.0 / max(step, 1)) < 1e-6  # the rate of the last step
        _, state = tx.update(jnp.ones(3), state)
    assert dlopt.wrappers.inject.is_scheduled(state, "learning_rate")
    halved = dlopt.set_schedule_scale(state, "learning_rate", 0.5)
    assert float(halved.schedule_scales["learning_rate_scale"]) == 0.5
