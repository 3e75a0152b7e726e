"""Composition (dlopt/combine.py): chain, named_chain, masked and partition."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import gradient_sequence, random_tree

import dlopt
from dlopt.core.base import EmptyState, GradientTransformation, GradientTransformationExtraArgs
from dlopt.core.combine import MaskedNode

SHAPES = {"dense": {"w": (3, 2), "b": (2,)}, "head": {"w": (2, 1), "b": (1,)}}
PARAMS = random_tree(0, SHAPES)
STEPS = 5
GRADS = gradient_sequence(1, STEPS, SHAPES)


def add(c: float) -> GradientTransformation:
    return dlopt.stateless(lambda u, p: jax.tree.map(lambda g: g + c, u))


def recorder(seen: list) -> GradientTransformationExtraArgs:
    """Scales updates by ``value=`` and records the keyword arguments it received."""

    def update(updates, state, params=None, **extra_args):
        seen.append(extra_args)
        value = extra_args.get("value", 1.0)
        return jax.tree.map(lambda g: g * jnp.asarray(value, g.dtype), updates), state

    return GradientTransformationExtraArgs(lambda p: EmptyState(), update)


def plain_double() -> GradientTransformation:
    # No **kwargs: passing it value= would raise a TypeError.
    return GradientTransformation(
        lambda p: EmptyState(), lambda u, s, p=None: (jax.tree.map(lambda g: 2.0 * g, u), s)
    )


def run(tx, params=PARAMS, grads=GRADS, **extra_args):
    """All updates and the final state of ``tx`` over ``grads``, in one jitted scan."""

    def body(state, g):
        updates, state = tx.update(g, state, params, **extra_args)
        return state, updates

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
    state, updates = jax.jit(lambda s, gs: jax.lax.scan(body, s, gs))(tx.init(params), stacked)
    return updates, state


def both(fn, tree):
    return jax.tree.map(fn, tree)


# --- chain


def test_chain_applies_in_order():
    g = GRADS[0]
    u1, _ = dlopt.chain(add(1.0), dlopt.scale(2.0)).update(g, (EmptyState(),) * 2)
    u2, _ = dlopt.chain(dlopt.scale(2.0), add(1.0)).update(g, (EmptyState(),) * 2)
    chex.assert_trees_all_close(u1, both(lambda x: (x + 1.0) * 2.0, g))
    chex.assert_trees_all_close(u2, both(lambda x: 2.0 * x + 1.0, g))


def test_empty_chain_is_identity_and_state_is_a_tuple():
    tx = dlopt.chain()
    assert tx.init(PARAMS) == ()
    updates, state = tx.update(GRADS[0], (), PARAMS)
    chex.assert_trees_all_equal(updates, GRADS[0])
    state = dlopt.chain(dlopt.sgd(0.1, momentum=0.9), add(1.0)).init(PARAMS)
    assert isinstance(state, tuple) and len(state) == 2 and state[1] == EmptyState()


def test_chain_rejects_a_state_of_the_wrong_length():
    tx = dlopt.chain(dlopt.sgd(0.1), add(1.0))
    with pytest.raises(ValueError, match="chain of 2 transforms got a state of 1 entries"):
        tx.update(GRADS[0], (EmptyState(),), PARAMS)


def test_chain_names_the_path_of_mismatched_params():
    tx = dlopt.chain(dlopt.sgd(0.1))
    bad = {"dense": PARAMS["dense"], "head": {"w": PARAMS["head"]["w"]}}
    with pytest.raises(ValueError, match=r"\['head'\]\['b'\]"):
        tx.update(GRADS[0], tx.init(PARAMS), bad)


def test_extra_args_reach_only_transforms_that_accept_them():
    seen_outer, seen_inner = [], []
    tx = dlopt.chain(
        recorder(seen_outer),
        plain_double(),
        optax.clip(100.0),  # optax's plain GradientTransformation: no keyword arguments
        dlopt.chain(recorder(seen_inner)),  # nested chains forward them too
        dlopt.sgd(1.0),
    )
    jitted = jax.jit(lambda g, s, v: tx.update(g, s, PARAMS, value=v))
    updates, _ = jitted(GRADS[0], tx.init(PARAMS), 3.0)
    assert list(seen_outer[0]) == ["value"] and list(seen_inner[0]) == ["value"]
    chex.assert_trees_all_close(updates, both(lambda g: -18.0 * g, GRADS[0]), rtol=1e-6)


def test_chain_without_extra_args_leaves_them_out():
    seen = []
    dlopt.chain(recorder(seen)).update(GRADS[0], (EmptyState(),))
    assert seen == [{}]


# --- named_chain


def test_named_chain_state_is_a_dict_and_matches_chain():
    named = dlopt.named_chain(("clip", optax.clip(0.5)), ("opt", dlopt.sgd(0.1, momentum=0.9)))
    plain = dlopt.chain(optax.clip(0.5), dlopt.sgd(0.1, momentum=0.9))
    state = named.init(PARAMS)
    assert list(state) == ["clip", "opt"]
    u_named, s_named = run(named)
    u_plain, s_plain = run(plain)
    chex.assert_trees_all_close(u_named, u_plain)
    chex.assert_trees_all_close(s_named["opt"], s_plain[1])


def test_named_chain_forwards_extra_args_and_rejects_duplicate_names():
    seen = []
    tx = dlopt.named_chain(("rec", recorder(seen)), ("double", plain_double()))
    updates, _ = tx.update(GRADS[0], tx.init(PARAMS), PARAMS, value=0.5)
    assert seen == [{"value": 0.5}]
    chex.assert_trees_all_close(updates, GRADS[0])
    with pytest.raises(ValueError, match="unique"):
        dlopt.named_chain(("a", add(1.0)), ("a", add(2.0)))


# --- masked


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim == 2, params)


MATRIX_MASK = {"dense": {"w": True, "b": False}, "head": {"w": True, "b": False}}


PREFIX_MASK = {"dense": True, "head": False}
PREFIX_FULL = {"dense": {"w": True, "b": True}, "head": {"w": False, "b": False}}


@pytest.mark.parametrize(
    "mask, full_mask",
    [(_matrices, MATRIX_MASK), (MATRIX_MASK, MATRIX_MASK), (PREFIX_MASK, PREFIX_FULL)],
    ids=["callable", "pytree", "prefix"],
)
def test_masked_leaves_masked_out_updates_untouched(mask, full_mask):
    inner = dlopt.sgd(0.1, momentum=0.9)
    updates, state = run(dlopt.masked(inner, mask))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *GRADS)
    reference, _ = run(inner)
    expected = jax.tree.map(lambda m, r, g: r if m else g, full_mask, reference, stacked)
    chex.assert_trees_all_close(updates, expected, rtol=1e-6)
    # masked-out leaves hold no state: a MaskedNode instead of a momentum buffer
    trace = state.inner_state[0].trace
    for group in ("dense", "head"):
        for leaf in ("w", "b"):
            held = trace[group]  # a prefix mask hides a whole subtree behind one MaskedNode
            held = held if isinstance(held, MaskedNode) else held[leaf]
            assert isinstance(held, MaskedNode) != full_mask[group][leaf], (group, leaf)


@pytest.mark.parametrize("mask", [_matrices, PREFIX_MASK], ids=["callable", "prefix"])
def test_masked_equals_optax_masked(mask):
    with jax.numpy_dtype_promotion("standard"):
        inner = optax.adam(1e-2)
        u_ours, s_ours = run(dlopt.masked(inner, mask))
        u_ref, s_ref = run(optax.masked(inner, mask))
    chex.assert_trees_all_close(u_ours, u_ref, rtol=1e-6)
    chex.assert_trees_all_close(jax.tree.leaves(s_ours), jax.tree.leaves(s_ref), rtol=1e-6)


def test_masked_forwards_extra_args_and_needs_no_params():
    seen = []
    tx = dlopt.masked(recorder(seen), _matrices)
    updates, _ = tx.update(GRADS[0], tx.init(PARAMS), value=2.0)
    assert seen == [{"value": 2.0}]
    expected = jax.tree.map(lambda m, g: 2.0 * g if m else g, _matrices(PARAMS), GRADS[0])
    chex.assert_trees_all_close(updates, expected)


# --- partition


def _labels(params):
    return {"dense": jax.tree.map(lambda _: "body", params["dense"]), "head": "head"}


LABELS = {"dense": {"w": "body", "b": "body"}, "head": {"w": "head", "b": "head"}}


@pytest.mark.parametrize("labels", [_labels, LABELS], ids=["callable", "pytree"])
def test_partition_equals_optax_partition(labels):
    with jax.numpy_dtype_promotion("standard"):
        groups = {"body": optax.sgd(0.1, momentum=0.9), "head": optax.adam(1e-2)}
        u_ours, s_ours = run(dlopt.partition(groups, labels))
        u_ref, s_ref = run(optax.partition(groups, labels))
    chex.assert_trees_all_close(u_ours, u_ref, rtol=1e-6)
    chex.assert_trees_all_close(jax.tree.leaves(s_ours), jax.tree.leaves(s_ref), rtol=1e-6)


def test_partition_groups_hold_state_only_for_their_leaves():
    tx = dlopt.partition({"body": dlopt.sgd(0.1, momentum=0.9), "head": dlopt.sgd(0.01)}, LABELS)
    state = tx.init(PARAMS)
    body_trace = state.inner_states["body"].inner_state[0].trace
    assert isinstance(body_trace["head"]["w"], MaskedNode)
    assert body_trace["dense"]["w"].shape == (3, 2)
    assert jax.tree.leaves(state.inner_states["head"]) == []
    updates, _ = tx.update(GRADS[0], state, PARAMS)
    chex.assert_trees_all_close(updates["head"], both(lambda g: -0.01 * g, GRADS[0]["head"]))
    chex.assert_trees_all_close(updates["dense"], both(lambda g: -0.1 * g, GRADS[0]["dense"]))


def test_partition_rejects_unknown_labels():
    labels = {"dense": "body", "head": "classifier"}
    tx = dlopt.partition({"body": dlopt.sgd(0.1), "head": dlopt.sgd(0.01)}, labels)
    with pytest.raises(ValueError, match=r"\['classifier'\] that transforms lacks"):
        tx.init(PARAMS)


class _CallableBoolTree(dict):
    """A pytree that is also callable, like an equinox module (params and mask alike)."""

    def __call__(self, *args):
        raise AssertionError("a callable pytree mask must be used as a tree, not called")


jax.tree_util.register_pytree_node(
    _CallableBoolTree,
    lambda d: (list(d.values()), list(d.keys())),
    lambda keys, values: _CallableBoolTree(zip(keys, values, strict=True)),
)


def test_masked_uses_a_callable_pytree_as_a_tree():
    params = _CallableBoolTree(a=jnp.ones(2), b=jnp.ones(3))
    mask = _CallableBoolTree(a=True, b=False)
    tx = dlopt.masked(dlopt.scale(2.0), mask)
    updates, _ = tx.update(params, tx.init(params), params)
    chex.assert_trees_all_close(dict(updates), {"a": 2 * jnp.ones(2), "b": jnp.ones(3)})


def test_mismatch_at_the_root_is_named():
    with pytest.raises(ValueError, match="a leaf at the root"):
        dlopt.core.tree.check_matching_trees(jnp.ones(2), {"w": jnp.ones(2)}, "updates", "params")


def test_partition_label_no_leaf_carries():
    """A transform whose label no leaf carries (optax's test_labels_mismatch): untouched."""
    params = {"a": jnp.ones(2), "b": [jnp.ones(3), jnp.ones(1)]}
    tx = dlopt.partition(
        {0: dlopt.sgd(1.0), 1: dlopt.adam(1.0), 2: dlopt.trace(0.9)}, {"a": 0, "b": 1}
    )
    state = jax.jit(tx.init)(params)
    updates, new_state = jax.jit(tx.update)(params, state)
    chex.assert_trees_all_close(updates["a"], -params["a"])
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
