"""Every transform on the shelf means the same in the tree and the flat layout.

The whole conformance table (`cases_conformance.TRANSFORMS`, one or more entries per exported
factory) runs a few steps of random gradients on a Flax-like params tree in both layouts of
`dlopt.training.TrainState`; the parameters must agree (float summation order aside). Then the
cases from the issue that first showed the layouts disagreeing.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from cases_conformance import TRANSFORMS
from helpers import Entry, gradient_sequence, random_tree

import dlopt
from dlopt.training import TrainState

STEPS = 3
# kernels, biases, norm scales, an embedding, a 3-D leaf; small, so one buffer packs them all
SHAPES = {
    "Dense_0": {"kernel": (6, 5), "bias": (5,)},
    "Conv_0": {"kernel": (3, 3, 2, 4), "bias": (4,)},
    "LayerNorm_0": {"scale": (5,), "bias": (5,)},
    "Embed_0": {"embedding": (7, 3)},
    "cube": (2, 3, 4),
}
PARAMS = random_tree(0, SHAPES)
GRADS = jax.tree.map(lambda *g: jnp.stack(g), *gradient_sequence(1, STEPS, SHAPES))


def train(tx, *, flat: bool, extra_args=None, grads=GRADS, params=PARAMS):
    """``STEPS`` updates through `TrainState.apply_gradients` in one jitted scan."""
    state = TrainState.create(apply_fn=None, params=params, tx=tx, rng=0, flat=flat)
    assert state.is_flat == flat

    def body(s, g):
        return s.apply_gradients(g, **(extra_args or {})), None

    state, _ = jax.jit(lambda s, gs: jax.lax.scan(body, s, gs))(state, grads)
    return state.params


def narrow_state(tx) -> bool:
    state = jax.eval_shape(tx.init, PARAMS)
    return any(jnp.dtype(x.dtype).itemsize < 4 for x in jax.tree.leaves(state) if x.ndim)


def _id(entry: Entry) -> str:
    return f"{entry.name}-{entry.variant}" if entry.variant else entry.name


# entries wrapped for the kit's own params (lookahead's `LookaheadParams` view, an objective
# written for the kit's default params): not transforms of a plain params tree
KIT_ADAPTERS = {"lookahead-reset", "lbfgs-zoom"}


@pytest.mark.parametrize("entry", [e for e in TRANSFORMS if _id(e) not in KIT_ADAPTERS], ids=_id)
def test_flat_and_tree_give_the_same_parameters(entry):
    extra_args = entry.kwargs.get("extra_args")
    tree = train(entry.make(), flat=False, extra_args=extra_args)
    flat = train(entry.make(), flat=True, extra_args=extra_args)
    # narrow (bf16) moments round stochastically by element index, which the layout changes
    tol = 3e-2 if narrow_state(entry.make()) else 1e-5
    chex.assert_trees_all_close(flat, tree, rtol=tol, atol=tol / 10)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), tree, PARAMS)
    still = {"identity", "set_to_zero", "chain", "freeze"}
    assert max(jax.tree.leaves(moved)) > 0 or entry.name in still


ZERO = jax.tree.map(jnp.zeros_like, GRADS)


def test_weights_only_decay_decays_kernels_in_both_layouts():
    tx = dlopt.adamw(0.1, weight_decay=0.5, mask=dlopt.weights_only)
    tree, flat = (train(tx, flat=f, grads=ZERO) for f in (False, True))
    chex.assert_trees_all_close(flat, tree, rtol=1e-5, atol=1e-6)
    kernel = PARAMS["Dense_0"]["kernel"]
    assert float(jnp.max(jnp.abs(flat["Dense_0"]["kernel"] - kernel))) > 1e-3  # decayed
    chex.assert_trees_all_equal(flat["Dense_0"]["bias"], PARAMS["Dense_0"]["bias"])  # not


@pytest.mark.parametrize(
    "make",
    [lambda: dlopt.muon(0.02), lambda: dlopt.chain(dlopt.clip_by_block_rms(0.01), dlopt.sgd(1.0))],
    ids=["muon", "clip_by_block_rms"],
)
def test_shape_reading_transforms_match(make):
    chex.assert_trees_all_close(
        train(make(), flat=True), train(make(), flat=False), rtol=1e-5, atol=1e-6
    )


def test_a_tree_shaped_mask_dict_works_flat():
    mask = jax.tree.map(lambda p: p.ndim > 1, PARAMS)
    tx = dlopt.adamw(0.1, weight_decay=0.5, mask=mask)
    tree, flat = (train(tx, flat=f, grads=ZERO) for f in (False, True))
    chex.assert_trees_all_close(flat, tree, rtol=1e-5, atol=1e-6)


def test_default_layout_is_flat_for_elementwise_chains_and_tree_otherwise():
    def layout(tx):
        return TrainState.create(apply_fn=None, params=PARAMS, tx=tx, rng=0).is_flat

    assert layout(dlopt.adam(1e-3))
    assert layout(dlopt.adamw(1e-3, mask=dlopt.weights_only))  # masks map exactly
    assert not layout(dlopt.muon(0.02))  # a per-leaf part: exact flat, but not one pass
    assert not layout(optax.adam(1e-3))  # foreign: the layout cannot vouch for it
    assert not TrainState.create(
        apply_fn=None, params={"w": jnp.ones((4, 4))}, tx=dlopt.adam(1e-3), rng=0
    ).is_flat  # one leaf: nothing to pack


def test_flat_true_with_an_optax_transform_is_refused():
    with pytest.raises(ValueError, match="flat=False"):
        TrainState.create(apply_fn=None, params=PARAMS, tx=optax.adam(1e-3), rng=0, flat=True)


def test_own_transform_marked_per_leaf_runs_on_leaves():
    @dlopt.per_leaf
    def scale_by_leaf_size():
        return dlopt.stateless(lambda u, p: jax.tree.map(lambda x: x / x.size, u))

    tree, flat = (train(scale_by_leaf_size(), flat=f) for f in (False, True))
    chex.assert_trees_all_close(flat, tree, rtol=1e-5, atol=1e-6)
