"""`dlopt.fused` and the flat layout: the same numbers as the unfused rule, one buffer per
dtype; masks and per-leaf transforms keep their meaning over the buffers."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from jax.tree_util import keystr, tree_flatten_with_path

import dlopt
from dlopt.core.flat import Buffers, flatten, layout_of, pack, unpack
from dlopt.testing import check_transformation
from dlopt.wrappers.fused import FusedState, plan_layout

STEPS = 50
# A matrix, a vector, a scalar, a conv kernel, a None leaf; nested dicts and lists.
SHAPES = {"dense": {"kernel": (5, 3), "bias": (3,)}, "scalar": (), "conv": [(3, 3, 2, 4), (4,)]}


def tree_of(shapes, seed, dtype=jnp.float32, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.standard_normal(s), dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple) and all(isinstance(i, int) for i in x),
    )


PARAMS = {**tree_of(SHAPES, 0), "frozen": None}
GRADS = jax.tree.map(lambda *xs: jnp.stack(xs), *[tree_of(SHAPES, 1 + t) for t in range(STEPS)])
GRADS = {**GRADS, "frozen": None}


def run(tx, params, grads):
    """``STEPS`` updates of ``tx`` in one scan; returns (params, state, last updates)."""

    def body(carry, g):
        p, s = carry
        u, s = tx.update(g, s, p)
        return (dlopt.apply_updates(p, u), s), u

    (p, s), us = jax.lax.scan(body, (params, tx.init(params)), grads)
    return p, s, jax.tree.map(lambda u: u[-1], us)


def schedule(count):
    return 0.05 / (1.0 + 0.1 * count.astype(jnp.float32))


class Case(NamedTuple):
    name: str
    make: Callable[[], Any]
    pack_below: int | None = None  # 16: the conv kernel (72) and dense kernel keep own buffers


CASES = [
    Case("sgd", lambda: dlopt.sgd(0.05)),
    Case("sgd_momentum", lambda: dlopt.sgd(0.05, momentum=0.9), 16),
    Case("sgd_nesterov", lambda: dlopt.sgd(0.05, momentum=0.9, nesterov=True)),
    Case("adagrad", lambda: dlopt.adagrad(0.05)),
    Case("rmsprop", lambda: dlopt.rmsprop(0.01)),
    Case("rmsprop_centered_momentum", lambda: dlopt.rmsprop(0.01, centered=True, momentum=0.9)),
    Case("adadelta", lambda: dlopt.adadelta(1.0, weight_decay=1e-3)),
    Case("adam", lambda: dlopt.adam(1e-2), 16),
    Case(  # nearest: stochastic rounding draws per buffer position, so it depends on layout
        "adam_schedule_bf16_mu",
        lambda: dlopt.adam(schedule, mu_dtype=jnp.bfloat16, state_rounding="nearest"),
    ),
    Case("adamw", lambda: dlopt.adamw(1e-2, weight_decay=1e-2)),
    Case("nadam", lambda: dlopt.nadam(1e-2)),
    Case("nadamw", lambda: dlopt.nadamw(1e-2, weight_decay=1e-2)),
    Case("adamax", lambda: dlopt.adamax(1e-2)),
    Case("lion", lambda: dlopt.lion(1e-3, weight_decay=1e-2), 16),
    Case("clip_norm_adam", lambda: dlopt.chain(dlopt.clip_by_global_norm(1.0), dlopt.adam(1e-2))),
    Case("clip_sgd_sched", lambda: dlopt.chain(dlopt.clip(0.5), dlopt.sgd(schedule, momentum=0.5))),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fused_matches_unfused_over_50_steps(case):
    plain, fast = case.make(), dlopt.fused(case.make(), pack_below=case.pack_below)
    (p1, _, u1), (p2, s2, u2) = jax.jit(lambda p, g: (run(plain, p, g), run(fast, p, g)))(
        PARAMS, GRADS
    )
    chex.assert_trees_all_close(p2, p1, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(u2, u1, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal_shapes_and_dtypes(u2, u1)
    assert not jnp.allclose(p1["dense"]["kernel"], PARAMS["dense"]["kernel"])  # it moved
    assert isinstance(s2, FusedState)


def state_buffers(state):
    return [x for x in jax.tree.leaves(state) if jnp.ndim(x) > 0]


def test_state_is_one_buffer_per_dtype():
    params = {"a": jnp.ones((4, 4)), "b": [jnp.ones(3)] * 5, "h": jnp.ones(7, jnp.bfloat16)}
    state = dlopt.fused(dlopt.adam(1e-3)).init(params)
    mu = state.inner[0].mu
    assert jax.tree.map(jnp.shape, mu.buffers) == {"params": {"bfloat16": (7,), "float32": (31,)}}
    assert len(state_buffers(state)) == 4  # mu and nu, one per dtype
    assert len(state_buffers(dlopt.adam(1e-3).init(params))) == 14  # one per leaf


def test_mixed_dtypes_and_none_leaves_keep_their_dtypes():
    params = {
        "w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3).astype(jnp.bfloat16),
        "b": [jnp.linspace(0.5, 1.0, 3, dtype=jnp.float32), None],
    }
    grads = jax.tree.map(lambda p: (p * 0.5).astype(p.dtype), params)
    tx = dlopt.adamw(1e-2, state_rounding="nearest")  # bf16 moments: no layout-dependent noise
    plain, fast = tx, dlopt.fused(tx)
    u1, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    u2, _ = jax.jit(fast.update)(grads, fast.init(params), params)
    chex.assert_trees_all_equal_shapes_and_dtypes(u2, u1)
    chex.assert_trees_all_close(u2, u1, rtol=1e-6)
    assert u2["b"][1] is None


def test_params_held_flat_give_the_same_training():
    """Params kept as `Buffers`: flat gradients from jax.grad, ``tx`` run on them as it is,
    the same result as the tree."""

    def loss(tree):
        leaves = [x for x in jax.tree.leaves(tree)]
        return sum(jnp.sum(jnp.square(x - 0.5) * (i + 1)) for i, x in enumerate(leaves))

    tx = dlopt.adam(0.05)

    def train(p, flat: bool):
        def body(carry, _):
            p, s = carry
            g = jax.grad(lambda q: loss(q.unflatten() if flat else q))(p)
            u, s = tx.update(g, s, p)
            return (dlopt.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, tx.init(p)), None, length=STEPS)[0][0]

    params = tree_of(SHAPES, 0)
    tree_result, flat_result = jax.jit(lambda p: (train(p, False), train(flatten(p), True)))(params)
    assert isinstance(flat_result, Buffers)
    chex.assert_trees_all_close(flat_result.unflatten(), tree_result, rtol=1e-6, atol=1e-7)
    assert float(loss(tree_result)) < 0.5 * float(loss(params))


def test_masks_over_the_params_tree_mean_the_same_inside_fused():
    """weights_only, no group_by: the planner gives decayed and kept leaves separate buffers."""
    make = lambda: dlopt.adamw(1e-2, weight_decay=0.5, mask=dlopt.weights_only)  # noqa: E731
    (p1, _, _), (p2, s2, _) = jax.jit(
        lambda p, g: (run(make(), p, g), run(dlopt.fused(make()), p, g))
    )(PARAMS, GRADS)
    chex.assert_trees_all_close(p2, p1, rtol=1e-6, atol=1e-7)
    assert len(jax.tree.leaves(s2.inner[0].mu)) == 2  # kernels, the rest


def test_a_buffer_mixing_mask_values_is_a_clear_error():
    """A layout not planned for the mask (plain `flatten`) is refused, not silently wrong."""
    flat = flatten(tree_of(SHAPES, 0))
    tx = dlopt.adamw(1e-2, mask=dlopt.weights_only)
    with pytest.raises(ValueError, match="different mask values"):
        tx.init(flat)
    planned = plan_layout(tree_of(SHAPES, 0), tx).layout
    assert len(planned.groups) == 2


def test_group_by_labels_carry_a_mask():
    """Decay only the weights: labels from weights_only, a prefix mask over the labels."""
    labels = lambda p: jax.tree.map(lambda w: "decay" if w else "keep", dlopt.weights_only(p))  # noqa: E731
    inner = dlopt.adamw(1e-2, weight_decay=0.5, mask={"decay": True, "keep": False})
    fast = dlopt.fused(inner, group_by=labels)
    plain = dlopt.adamw(1e-2, weight_decay=0.5, mask=dlopt.weights_only)
    unmasked = dlopt.adamw(1e-2, weight_decay=0.5)
    (p1, _, _), (p2, s2, _), (no_mask, _, _) = jax.jit(
        lambda p, g: (run(plain, p, g), run(fast, p, g), run(unmasked, p, g))
    )(PARAMS, GRADS)
    chex.assert_trees_all_close(p2, p1, rtol=1e-6, atol=1e-7)
    assert set(s2.inner[0].mu.buffers) == {"decay", "keep"}
    assert not jnp.allclose(no_mask["dense"]["bias"], p1["dense"]["bias"])  # the mask matters


def test_extra_args_reach_the_inner_chain():
    tx = dlopt.fused(dlopt.chain(dlopt.sgd(1.0), dlopt.reduce_on_plateau(patience=0, factor=0.5)))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for value in (1.0, 2.0, 3.0):  # the loss never improves after the first step
        updates, state = tx.update(params, state, params, value=value)
    chex.assert_trees_all_close(updates["w"], -0.25 * jnp.ones(3))


def test_state_checkpoints_and_resumes():
    tx = dlopt.fused(dlopt.adam(schedule))
    half = jax.tree.map(lambda g: g[: STEPS // 2], GRADS)
    rest = jax.tree.map(lambda g: g[STEPS // 2 :], GRADS)
    step = jax.jit(tx.update)
    p, s = PARAMS, tx.init(PARAMS)
    for t in range(3):
        u, s = step(jax.tree.map(lambda g, t=t: g[t], half), s, p)
        p = dlopt.apply_updates(p, u)
    buffer = io.BytesIO()
    pickle.dump(jax.tree.map(np.asarray, s), buffer)
    restored = jax.tree.map(jnp.asarray, pickle.loads(buffer.getvalue()))
    chex.assert_trees_all_equal_structs(restored, s)
    g = jax.tree.map(lambda x: x[0], rest)
    chex.assert_trees_all_equal(step(g, restored, p), step(g, s, p))


def test_conformance_kit():
    check_transformation(
        dlopt.fused(dlopt.adam(1e-2)), steps=2, random_examples=0, check_pmap=False
    )


def test_bad_group_by_names_itself():
    with pytest.raises(ValueError, match="group_by"):
        tx = dlopt.fused(dlopt.sgd(0.1), group_by={"only": "one"})
        tx.init({"a": jnp.ones(2), "b": jnp.ones(2)})


def test_per_leaf_transforms_clip_each_leaf_inside_fused():
    """clip_by_block_rms carries the per_leaf marker: inside fused it still clips each leaf."""
    params = {"small": jnp.full(4, 0.1), "big": jnp.full(4, 10.0)}
    plain = dlopt.clip_by_block_rms(1.0)
    u1, _ = plain.update(params, plain.init(params))
    u2, _ = dlopt.fused(plain).update(params, dlopt.fused(plain).init(params))
    chex.assert_trees_all_close(u2, u1)
    chex.assert_trees_all_close(u2["small"], params["small"])


leaf_shapes = st.lists(st.lists(st.integers(0, 4), max_size=3).map(tuple), max_size=6)
dtypes = st.sampled_from([jnp.float32, jnp.bfloat16, jnp.float16])


@given(leaf_shapes, st.lists(dtypes, min_size=6, max_size=6), st.integers(0, 99))
def test_flatten_round_trips_any_tree(shapes, dtype_choice, seed):
    rng = np.random.default_rng(seed)
    tree = {
        f"leaf{i}": jnp.asarray(rng.standard_normal(s), dtype_choice[i])
        for i, s in enumerate(shapes)
    }
    flat = flatten(tree)
    chex.assert_trees_all_equal(flat.unflatten(), tree)
    chex.assert_trees_all_equal_shapes_and_dtypes(flat.unflatten(), tree)
    sizes = {dtype: size for _, dtype, size in flat.layout.groups}
    for dtype in {jnp.dtype(x.dtype).name for x in tree.values()}:
        assert sizes[dtype] == sum(x.size for x in tree.values() if x.dtype == dtype)
    assert layout_of(tree) == flat.layout  # static and hashable: jit keys on it
    hash(flat.layout)


def test_flat_params_paths_and_apply_updates():
    flat = flatten(PARAMS)
    paths = [keystr(p) for p, _ in tree_flatten_with_path(flat)[0]]
    assert paths == [".buffers['params']['float32']"]
    moved = dlopt.apply_updates(flat, jax.tree.map(jnp.ones_like, flat))
    chex.assert_trees_all_close(moved.unflatten(), jax.tree.map(lambda x: x + 1, PARAMS))
    layout = flat.layout
    chex.assert_trees_all_equal(unpack(pack(PARAMS, layout), layout), PARAMS)


def test_large_leaves_keep_their_own_buffers():
    params = {"big": jnp.ones((8, 8)), "small": [jnp.ones(3), jnp.ones(5)], "half": None}
    layout = flatten(params, pack_below=64).layout
    assert [(key, size) for _, key, size in layout.groups] == [
        ("float32", 8),
        ("float32:000000", 64),
    ]
    tx = dlopt.fused(dlopt.sgd(0.1, momentum=0.9), pack_below=64)
    assert jax.tree.map(jnp.shape, tx.init(params).inner[0].trace.buffers) == {
        "params": {"float32": (8,), "float32:000000": (8, 8)}  # a tree: the leaf's own shape
    }
    flat = flatten(params, pack_below=64)  # the flat layout: every buffer 1-D
    assert jax.tree.map(jnp.shape, dlopt.sgd(0.1, momentum=0.9).init(flat)[0].trace.buffers) == {
        "params": {"float32": (8,), "float32:000000": (64,)}
    }
    assert len(flatten(params, pack_below=None).layout.groups) == 1


def big_leaf_hlo_lines(tx, params):
    """The compiled HLO lines of a donated ``update + apply_updates`` step on ``params["big"]``
    (16x8, also seen raveled as 128)."""

    def step(carry, grads):
        p, s = carry
        u, s = tx.update(grads, s, p)
        return dlopt.apply_updates(p, u), s

    lowered = jax.jit(step, donate_argnums=0).lower((params, tx.init(params)), params)
    return [
        line
        for line in lowered.compile().as_text().splitlines()
        if "f32[16,8]" in line or "f32[128]" in line
    ]


@pytest.mark.parametrize("make", [lambda: dlopt.adamw(1e-2), lambda: dlopt.lion(1e-3)])
def test_pytree_mode_updates_a_large_leaf_in_place(make):
    """A donated pytree-mode step copies the large leaf no more than the plain rule does and
    never concatenates it (a raveled parameter read by weight decay made XLA copy the whole
    leaf every step; lion's copy of ``mu``, read after it is overwritten, is the rule's own)."""
    params = {"big": jnp.ones((16, 8)), "small": jnp.ones(3)}
    fused_lines = big_leaf_hlo_lines(dlopt.fused(make(), pack_below=64), params)
    plain_lines = big_leaf_hlo_lines(make(), params)
    assert not [line for line in fused_lines if " concatenate(" in line]
    copies = [sum(" copy(" in line for line in lines) for lines in (fused_lines, plain_lines)]
    assert copies[0] <= copies[1]
