"""Regularizers: penalties against their closed forms, penalty gradients == the transforms,
coupled (loss penalty) vs decoupled (AdamW) decay, masks, and `weights_only` on real Flax
parameter trees (linen and nnx).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import random_tree
from hypothesis import given
from hypothesis import strategies as st

import dlopt
from dlopt.testing import check_transformation

SHAPES = {"dense": {"kernel": (5, 3), "bias": (3,)}, "norm": {"scale": (3,)}, "w": (2, 2, 2)}
PARAMS = random_tree(0, SHAPES)
WEIGHTS = [PARAMS["dense"]["kernel"], PARAMS["w"]]  # what weights_only selects


class Penalty(NamedTuple):
    name: str
    fn: Callable  # (params, rate, mask=...) -> scalar
    closed_form: Callable  # (list of np arrays, rate) -> float


PENALTIES = [
    Penalty("l1", dlopt.l1_penalty, lambda ws, r: r * sum(np.abs(w).sum() for w in ws)),
    Penalty("l2", dlopt.l2_penalty, lambda ws, r: 0.5 * r * sum(np.square(w).sum() for w in ws)),
    Penalty(
        "elastic_net",
        lambda p, r, mask=None: dlopt.elastic_net_penalty(p, r, 0.3, mask=mask),
        lambda ws, r: r * sum(0.3 * np.abs(w).sum() + 0.7 * 0.5 * np.square(w).sum() for w in ws),
    ),
]
PENALTY_IDS = [p.name for p in PENALTIES]

MASKS = {
    "none": (None, jax.tree.leaves(PARAMS)),
    "callable": (dlopt.weights_only, WEIGHTS),
    "tree": (
        {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}, "w": True},
        WEIGHTS,
    ),
    "prefix": ({"dense": True, "norm": False, "w": False}, jax.tree.leaves(PARAMS["dense"])),
}


@pytest.mark.parametrize("penalty", PENALTIES, ids=PENALTY_IDS)
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_penalty_closed_form(penalty, mask_name):
    mask, selected = MASKS[mask_name]
    value = penalty.fn(PARAMS, 0.37, mask=mask)
    expected = penalty.closed_form([np.asarray(w, np.float64) for w in selected], 0.37)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)


@given(rate=st.floats(0.0, 10.0), seed=st.integers(0, 100))
def test_elastic_net_endpoints_are_l1_and_l2(rate, seed):
    params = random_tree(seed, SHAPES)
    np.testing.assert_allclose(
        dlopt.elastic_net_penalty(params, rate, 1.0), dlopt.l1_penalty(params, rate), rtol=1e-6
    )
    np.testing.assert_allclose(
        dlopt.elastic_net_penalty(params, rate, 0.0), dlopt.l2_penalty(params, rate), rtol=1e-6
    )


def test_penalty_of_bf16_params_is_accumulated_in_float32():
    params = {"w": jnp.full((4096,), 1.0, jnp.bfloat16)}
    value = dlopt.l1_penalty(params, 1.0)
    assert value.dtype == jnp.float32 and float(value) == 4096.0  # bf16 would stall at 256


def test_penalties_jit_with_traced_rate():
    value = jax.jit(dlopt.l2_penalty, static_argnames="mask")(PARAMS, 2.0, mask=dlopt.weights_only)
    np.testing.assert_allclose(value, dlopt.l2_penalty(PARAMS, 2.0, mask=dlopt.weights_only))


# -------------------------------------------------- penalty gradients == the transforms


def _transform_updates(tx, params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return tx.update(zeros, tx.init(params), params)[0]


@pytest.mark.parametrize("mask_name", ["none", "callable"])
@pytest.mark.parametrize(
    ("penalty", "transform"),
    [(dlopt.l2_penalty, dlopt.add_decayed_weights), (dlopt.l1_penalty, dlopt.add_l1_subgradient)],
    ids=["l2_decay", "l1_subgradient"],
)
def test_penalty_gradient_equals_transform_updates(penalty, transform, mask_name):
    mask = MASKS[mask_name][0]
    params = dict(PARAMS, zero=jnp.zeros(3))  # sign(0) = 0 in both
    grads = jax.grad(lambda p: penalty(p, 0.3, mask=mask))(params)
    updates = _transform_updates(transform(0.3, mask=mask), params)
    chex.assert_trees_all_close(grads, updates, rtol=1e-6, atol=1e-7)


def test_add_decayed_weights_matches_optax_with_mask():
    grads = random_tree(1, SHAPES)
    ours = dlopt.add_decayed_weights(0.1, mask=dlopt.weights_only)
    theirs = optax.add_decayed_weights(0.1, mask=dlopt.weights_only)
    a = ours.update(grads, ours.init(PARAMS), PARAMS)[0]
    with jax.numpy_dtype_promotion("standard"):
        b = theirs.update(grads, theirs.init(PARAMS), PARAMS)[0]
    chex.assert_trees_all_close(a, b, rtol=1e-6)


@pytest.mark.parametrize("transform", [dlopt.add_decayed_weights, dlopt.add_l1_subgradient])
def test_masks_leave_excluded_leaves_untouched(transform):
    grads = random_tree(1, SHAPES)
    tx = transform(0.5, mask=dlopt.weights_only)
    updates = tx.update(grads, tx.init(PARAMS), PARAMS)[0]
    chex.assert_trees_all_equal(updates["dense"]["bias"], grads["dense"]["bias"])
    chex.assert_trees_all_equal(updates["norm"], grads["norm"])
    assert not np.allclose(updates["dense"]["kernel"], grads["dense"]["kernel"])
    assert not np.allclose(updates["w"], grads["w"])


def test_l1_subgradient_schedule_and_conformance():
    tx = dlopt.add_l1_subgradient(lambda t: 0.1 * (t + 1).astype(jnp.float32))
    state = tx.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    u0, state = tx.update(zeros, state, PARAMS)
    u1, _ = tx.update(zeros, state, PARAMS)
    chex.assert_trees_all_close(u1, jax.tree.map(lambda u: 2 * u, u0))  # rate 0.1 then 0.2
    check_transformation(dlopt.add_l1_subgradient(1e-2), decays_weights=True, random_examples=2)


# --------------------------------------- coupled (penalty in the loss) vs decoupled decay

TARGET = {"w": jnp.array([2.0, -1.0, 0.5, 3.0]), "b": jnp.array([0.1, -0.2])}


def _data_loss(p):
    return 0.5 * jnp.sum(jnp.square(p["w"] - TARGET["w"])) + jnp.sum(
        jnp.array([1.0, 100.0]) * jnp.square(p["b"] - TARGET["b"])
    )


def _train(tx, loss, steps=40):
    params = {"w": jnp.ones(4), "b": jnp.zeros(2)}

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return (dlopt.apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, tx.init(params)), None, length=steps)[0][0]


WD = 0.1


def _l2_loss(p):
    return _data_loss(p) + dlopt.l2_penalty(p, WD)


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_sgd_on_l2_loss_equals_sgd_after_add_decayed_weights(momentum):
    penalized = _train(dlopt.sgd(0.005, momentum=momentum), _l2_loss)
    decayed = _train(
        dlopt.chain(dlopt.add_decayed_weights(WD), dlopt.sgd(0.005, momentum=momentum)),
        _data_loss,
    )
    chex.assert_trees_all_close(penalized, decayed, rtol=1e-5, atol=1e-6)


def test_adam_with_l2_is_not_adamw():
    """Adam on loss + L2 == adam chained after add_decayed_weights (coupled: the decay goes
    through 1/sqrt(v)); AdamW adds the decay after the scaling, and ends elsewhere."""
    lr = 0.05
    coupled = _train(dlopt.adam(lr), _l2_loss)
    coupled_by_transform = _train(
        dlopt.chain(dlopt.add_decayed_weights(WD), dlopt.adam(lr)), _data_loss
    )
    chex.assert_trees_all_close(coupled, coupled_by_transform, rtol=1e-5, atol=1e-6)

    decoupled = _train(dlopt.adamw(lr, weight_decay=WD), _data_loss)
    by_hand = _train(
        dlopt.chain(
            dlopt.scale_by_adam(), dlopt.add_decayed_weights(WD), dlopt.scale_by_learning_rate(lr)
        ),
        _data_loss,
    )
    chex.assert_trees_all_close(decoupled, by_hand, rtol=1e-5, atol=1e-6)
    gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), coupled, decoupled)
    assert max(jax.tree.leaves(gap)) > 1e-2, gap  # the decoupling changes the result


# ------------------------------------------------------------------------ weights_only


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Embed(10, 4)(x)
        x = nn.Conv(3, (3,))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.LayerNorm()(x)
        return nn.Dense(2)(x)


LINEN_WEIGHTS = {
    "Embed_0": {"embedding": True},
    "Conv_0": {"kernel": True, "bias": False},
    "BatchNorm_0": {"scale": False, "bias": False},
    "LayerNorm_0": {"scale": False, "bias": False},
    "Dense_0": {"kernel": True, "bias": False},
}


def test_weights_only_on_linen_variables():
    variables = LinenNet().init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
    mask = dlopt.weights_only(variables)
    assert mask["params"] == LINEN_WEIGHTS
    assert mask["batch_stats"]["BatchNorm_0"] == {"mean": False, "var": False}


class NnxNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(10, 4, rngs=rngs)
        self.conv = nnx.Conv(4, 3, (3,), rngs=rngs)
        self.bn = nnx.BatchNorm(3, rngs=rngs)
        self.ln = nnx.LayerNorm(3, rngs=rngs)
        self.out = nnx.Linear(3, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.ln(self.bn(self.conv(self.embed(x)))))


NNX_WEIGHTS = {
    "embed": {"embedding": True},
    "conv": {"kernel": True, "bias": False},
    "bn": {"scale": False, "bias": False},
    "ln": {"scale": False, "bias": False},
    "out": {"kernel": True, "bias": False},
}


def test_weights_only_on_nnx_state():
    state = nnx.state(NnxNet(nnx.Rngs(0)), nnx.Param)
    mask = dlopt.weights_only(state)
    assert jax.tree.structure(mask) == jax.tree.structure(state)
    plain = jax.tree.map(bool, nnx.to_pure_dict(mask))
    assert plain == NNX_WEIGHTS


def test_weights_only_mask_in_nnx_optimizer():
    """Decay through nnx.Optimizer: kernels and embeddings shrink, biases and norms do not."""
    model = NnxNet(nnx.Rngs(0))
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param) and path[-1] in ("bias", "scale"):
            var[...] = jnp.full(var[...].shape, 0.5)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    tx = dlopt.chain(dlopt.add_decayed_weights(0.5, mask=dlopt.weights_only), dlopt.sgd(1.0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for module, leaves in NNX_WEIGHTS.items():
        for name, decayed in leaves.items():
            expected = 0.5 * before[module][name] if decayed else before[module][name]
            np.testing.assert_allclose(after[module][name], expected, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, {"w": True, "b": False}),  # haiku-style
        ({"offset": jnp.ones((2, 2)), "scale": jnp.ones((2, 2))}, dict(offset=False, scale=False)),
        ([jnp.ones((2, 2)), jnp.ones(2), jnp.ones(())], [True, False, False]),  # unnamed: rank
        ({"kernel": None, "k": jnp.ones((2, 2))}, {"kernel": None, "k": True}),
    ],
    ids=["haiku", "norm_by_name", "unnamed", "none_leaf"],
)
def test_weights_only_rules(params, expected):
    assert dlopt.weights_only(params) == expected


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: dlopt.l1_penalty(PARAMS, -1.0), "rate"),
        (lambda: dlopt.l2_penalty(PARAMS, float("inf")), "rate"),
        (lambda: dlopt.elastic_net_penalty(PARAMS, 0.1, 1.5), "l1_ratio"),
        (lambda: dlopt.add_l1_subgradient(-0.1), "rate"),
        (lambda: dlopt.add_decayed_weights(-0.1), "weight_decay"),
    ],
)
def test_bad_hyperparameters_name_themselves(call, arg):
    with pytest.raises(ValueError, match=f"{arg}="):
        call()


def test_transforms_need_params():
    tx = dlopt.add_l1_subgradient(0.1)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": jnp.ones(2)}, tx.init(None))
