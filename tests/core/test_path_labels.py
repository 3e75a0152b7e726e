"""path_labels (regular expressions over parameter paths) and set_to_zero: freezing and
per-group learning rates for transfer learning, with partition, masked, fused and optax."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import dlopt
from dlopt.core.combine import leaf_path

PARAMS = {
    "backbone": {
        "Conv_0": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.zeros(4)},
        "Conv_1": {"kernel": jnp.ones((3, 3, 4, 4)), "bias": jnp.zeros(4)},
    },
    "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)},
    "blocks": [{"scale": jnp.ones(4)}],
}
GRADS = jax.tree.map(lambda p: jnp.full_like(p, 0.5), PARAMS)


def test_paths_are_keys_joined_by_slashes():
    leaves = jax.tree_util.tree_flatten_with_path(PARAMS)[0]
    assert sorted(leaf_path(p) for p, _ in leaves) == [
        "backbone/Conv_0/bias",
        "backbone/Conv_0/kernel",
        "backbone/Conv_1/bias",
        "backbone/Conv_1/kernel",
        "blocks/0/scale",
        "head/bias",
        "head/kernel",
    ]


def test_first_matching_pattern_wins_and_default_fills_the_rest():
    labels = dlopt.path_labels(
        PARAMS,
        {"Conv_1/kernel$": "late", "^backbone/": "early", "kernel": "never-first"},
        default="rest",
    )
    assert labels["backbone"]["Conv_1"]["kernel"] == "late"  # listed before "^backbone/"
    assert labels["backbone"]["Conv_1"]["bias"] == "early"
    assert labels["backbone"]["Conv_0"]["kernel"] == "early"  # not "never-first"
    assert labels["head"]["kernel"] == "never-first"  # re.search: matches anywhere
    assert labels["head"]["bias"] == labels["blocks"][0]["scale"] == "rest"
    assert jax.tree.structure(labels) == jax.tree.structure(PARAMS)


def test_unmatched_leaves_without_a_default_are_named():
    with pytest.raises(ValueError, match=r"'head/bias'.*'head/kernel'.*default="):
        dlopt.path_labels(PARAMS, {"^backbone/": "frozen", "^blocks/": "train"})
    many = {f"w{i}": jnp.ones(()) for i in range(8)}
    with pytest.raises(ValueError, match="and 3 more"):
        dlopt.path_labels(many, {"^none$": "x"})


@pytest.mark.parametrize(
    "rules, default, error, match",
    [
        ({"(": "x"}, "y", ValueError, "not a regular expression"),
        ({"^head/": None}, "y", TypeError, "None"),
        ({"^head/": ["a"]}, "y", TypeError, "hashable"),
        ({"^head/": "x"}, ["y"], TypeError, "default must be hashable"),
        ({1: "x"}, "y", TypeError, "strings"),
        ("^head/", "y", TypeError, "mapping"),
    ],
)
def test_bad_rules_are_rejected_at_once(rules, default, error, match):
    with pytest.raises(error, match=match):
        dlopt.path_labels(PARAMS, rules, default=default)


def test_freeze_a_backbone_with_set_to_zero():
    tx = dlopt.partition(
        {"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-1)},
        dlopt.path_labels(PARAMS, {"^backbone/": "frozen"}, default="train"),
    )
    state = tx.init(PARAMS)
    updates, state = jax.jit(tx.update)(GRADS, state, PARAMS)
    chex.assert_trees_all_equal(
        updates["backbone"], jax.tree.map(jnp.zeros_like, GRADS["backbone"])
    )
    chex.assert_trees_all_close(
        updates["head"], jax.tree.map(lambda g: -0.1 * jnp.ones_like(g), GRADS["head"]), rtol=1e-4
    )
    # Adam keeps moments only for the trained leaves (the frozen ones are masked out).
    adam_state = state.inner_states["train"].inner_state
    mu = adam_state[0].mu
    assert isinstance(mu["backbone"]["Conv_0"]["kernel"], dlopt.MaskedNode)
    assert mu["head"]["kernel"].shape == (4, 2)


def test_fine_tune_the_backbone_ten_times_slower():
    tx = dlopt.partition(
        {"backbone": dlopt.sgd(0.01), "head": dlopt.sgd(0.1)},
        lambda p: dlopt.path_labels(p, {"^backbone/": "backbone"}, default="head"),
    )
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(
        updates["backbone"]["Conv_0"]["kernel"], jnp.full((3, 3, 1, 4), -0.005)
    )
    chex.assert_trees_all_close(updates["head"]["kernel"], jnp.full((4, 2), -0.05))


def test_boolean_labels_are_a_mask():
    mask = dlopt.path_labels(PARAMS, {"kernel$": True}, default=False)
    tx = dlopt.masked(dlopt.set_to_zero(), mask)  # zero the kernels' updates only
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    assert float(jnp.abs(updates["head"]["kernel"]).max()) == 0.0
    chex.assert_trees_all_equal(updates["head"]["bias"], GRADS["head"]["bias"])


def test_labels_drive_fused_groups_and_optax_partition():
    labels = lambda p: dlopt.path_labels(p, {"^backbone/": "frozen"}, default="train")  # noqa: E731
    plain = dlopt.partition({"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-2)}, labels)
    fused = dlopt.fused(
        # the same labels inside: fused evaluates them on the params tree, as partition does
        dlopt.partition({"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-2)}, labels),
        group_by=labels,
    )
    reference = optax.partition({"frozen": optax.set_to_zero(), "train": optax.adam(1e-2)}, labels)
    with jax.numpy_dtype_promotion("standard"):
        want, _ = reference.update(GRADS, reference.init(PARAMS), PARAMS)
    for tx in (plain, fused):
        got, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
        chex.assert_trees_all_close(got, want, rtol=1e-6)


def test_set_to_zero_matches_optax():
    tx, ref = dlopt.set_to_zero(), optax.set_to_zero()
    params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.ones(3), "none": None}
    assert tx.init(params) == dlopt.EmptyState() and len(ref.init(params)) == 0
    got, state = tx.update(params, tx.init(params), params)
    want, _ = ref.update(params, ref.init(params))
    chex.assert_trees_all_equal(got, want)
    assert got["w"].dtype == jnp.bfloat16 and got["none"] is None and state == dlopt.EmptyState()


def test_nnx_state_paths_drop_the_value_wrapper():
    from flax import nnx

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.backbone = nnx.Linear(2, 3, rngs=rngs)
            self.head = nnx.Linear(3, 1, rngs=rngs)

    state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
    labels = dlopt.path_labels(state, {"^backbone/kernel$": "frozen"}, default="train")
    flat = {leaf_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert flat == {
        "backbone/bias": "train",
        "backbone/kernel": "frozen",
        "head/bias": "train",
        "head/kernel": "train",
    }
