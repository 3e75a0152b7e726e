"""The conformance kit passes good transforms and names the property a broken one violates."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlopt
from dlopt import testing
from dlopt.core.base import EmptyState, GradientTransformation, GradientTransformationExtraArgs
from dlopt.testing import check_transformation

# --- deliberately broken transforms, one bug each


def _stateless(fn) -> GradientTransformation:
    """A transform with no state whose update is ``fn(updates, params)``."""
    return GradientTransformation(lambda p: EmptyState(), lambda u, s, p=None: (fn(u, p), s))


def impure_update() -> GradientTransformation:
    calls = [0]  # Python-side state: each eager call scales by a larger number

    def fn(updates, params):
        calls[0] += 1
        return jax.tree.map(lambda g: g * float(calls[0]), updates)

    return _stateless(fn)


def impure_init() -> GradientTransformation:
    calls = [0]

    def init(params):
        calls[0] += 1
        return {"count": jnp.full((), calls[0], jnp.int32)}

    return GradientTransformation(init, lambda u, s, p=None: (u, s))


def jit_dependent() -> GradientTransformation:
    # Branches on whether it is being traced, so jit and eager disagree.
    return _stateless(
        lambda u, p: jax.tree.map(lambda g: g * 2.0 if isinstance(g, jax.core.Tracer) else g, u)
    )


def retracing() -> GradientTransformation:
    # init makes a weakly typed count; update returns a strongly typed one: a second trace.
    def update(updates, state, params=None):
        return updates, {"count": state["count"] + jnp.int32(1)}

    return GradientTransformation(lambda p: {"count": jnp.asarray(0)}, update)


@jax.tree_util.register_pytree_node_class
class StaticCount:
    """A state whose step count lives in the tree structure (static): retraces every step."""

    def __init__(self, count: int):
        self.count = count

    def tree_flatten(self):
        return (), self.count

    @classmethod
    def tree_unflatten(cls, count, children):
        return cls(count)


def static_step_count() -> GradientTransformation:
    return GradientTransformation(
        lambda p: StaticCount(0), lambda u, s, p=None: (u, StaticCount(s.count + 1))
    )


def state_dtype_changes() -> GradientTransformation:
    def init(params):
        return {"mu": jax.tree.map(jnp.zeros_like, params)}

    def update(updates, state, params=None):
        mu = jax.tree.map(lambda m, g: (0.9 * m + g).astype(jnp.bfloat16), state["mu"], updates)
        return updates, {"mu": mu}

    return GradientTransformation(init, update)


def wrong_shape() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(lambda g: g.reshape(-1), u))


def wrong_dtype() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(lambda g: g.astype(jnp.bfloat16), u))


def produces_nan() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(jnp.log, u))  # log of negative grads


def nan_in_state() -> GradientTransformation:
    def update(updates, state, params=None):
        logs = jax.tree.map(lambda a, g: a + jnp.log(g), state["acc"], updates)
        return updates, {"acc": logs}

    return GradientTransformation(lambda p: {"acc": jax.tree.map(jnp.zeros_like, p)}, update)


def inf_sentinel() -> GradientTransformation:
    # Starts at inf, like reduce-on-plateau's best value: allowed while untouched.
    def init(params):
        return {"best": jnp.full((), jnp.inf, jnp.float32), "never": jnp.full((), -jnp.inf)}

    def update(updates, state, params=None):
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(updates)))
        return updates, {"best": jnp.minimum(state["best"], norm), "never": state["never"]}

    return GradientTransformation(init, update)


def overflows_on_large_grads() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(lambda g: jnp.exp(g) - jnp.exp(-g), u))


def breaks_on_none() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(lambda g: g * 2.0, u, is_leaf=lambda x: x is None))


def fills_none_leaves() -> GradientTransformation:
    def fill(g):
        return jnp.zeros(()) if g is None else g

    return _stateless(lambda u, p: jax.tree.map(fill, u, is_leaf=lambda x: x is None))


def moves_params() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(lambda g: g + 0.01, u))


def stateless_decay() -> GradientTransformation:
    return _stateless(lambda u, p: jax.tree.map(lambda g, w: g + 0.1 * w, u, p))


def host_callback_without_vmap_rule() -> GradientTransformation:
    def host(g):
        return jax.pure_callback(
            lambda x: np.asarray(x) * 0.5, jax.ShapeDtypeStruct(g.shape, g.dtype), g
        )

    return _stateless(lambda u, p: jax.tree.map(host, u))


BROKEN = [
    ("impure_update", impure_update, testing.UPDATE_PURE, "two eager update calls"),
    ("impure_init", impure_init, testing.INIT_PURE, r"two init\(params\) calls differ"),
    ("jit_dependent", jit_dependent, testing.JIT, r"jax\.jit\(update\) differs"),
    ("retracing", retracing, testing.NO_RETRACE, "traced 2 times.*weak"),
    ("static_count", static_step_count, testing.STATE_STABLE, "state has tree structure"),
    ("state_dtype", state_dtype_changes, testing.STATE_STABLE, r"state\['mu'\]\['matrix'\] is bf"),
    ("wrong_shape", wrong_shape, testing.UPDATES_MATCH, r"updates\['matrix'\] is float32\[6\]"),
    ("wrong_dtype", wrong_dtype, testing.UPDATES_MATCH, r"updates\['matrix'\] is bfloat16"),
    ("nan", produces_nan, testing.FINITE, r"step 1: updates\[.matrix.\] is not finite"),
    ("nan_state", nan_in_state, testing.FINITE, r"step 1: state\['acc'\]\['matrix'\] is not"),
    ("overflow", overflows_on_large_grads, testing.FINITE, "gradient scale"),
    ("none_leaves", breaks_on_none, testing.NONE_LEAVES, "TypeError"),
    ("none_filled", fills_none_leaves, testing.NONE_LEAVES, r"unexpected leaf updates\[1\]"),
    ("moves_params", moves_params, testing.ZERO_GRADS, "params would move"),
    ("stateless_decay", stateless_decay, testing.ZERO_GRADS, "params would move"),
    ("vmap", host_callback_without_vmap_rule, testing.VMAP, "vmap"),
]


@pytest.mark.parametrize("make, prop, detail", [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_catches_broken_transform(make, prop, detail):
    with pytest.raises(AssertionError) as info:
        check_transformation(make())
    message = str(info.value)
    assert message.startswith(f'check_transformation: property "{prop}" failed'), message
    assert re.search(detail, message, re.DOTALL), message


# --- good transforms pass

GOOD = [
    ("identity", dlopt.identity, {}),
    ("sgd_nesterov", lambda: dlopt.sgd(0.1, momentum=0.9, nesterov=True), {}),
    ("sgd_schedule", lambda: dlopt.sgd(lambda t: 0.1 / (1.0 + t.astype(jnp.float32))), {}),
    (
        "masked_decay",
        lambda: dlopt.masked(dlopt.add_decayed_weights(0.1), _matrices),
        {"decays_weights": True},
    ),
    ("decay", lambda: dlopt.add_decayed_weights(0.1), {"decays_weights": True}),
    ("stateless_decay", stateless_decay, {"decays_weights": True}),
    ("inf_sentinel", inf_sentinel, {}),
    ("vmap_off", host_callback_without_vmap_rule, {"check_vmap": False}),
]


def _matrices(params):
    return jax.tree.map(lambda p: p.ndim == 2, params)


@pytest.mark.parametrize("make, kwargs", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_passes_good_transform(make, kwargs):
    check_transformation(make(), **kwargs)


def test_masked_decay_moves_only_masked_params():
    # The zero-gradient property sees weight decay through a mask: only matrices move.
    with pytest.raises(AssertionError, match=r"updates\['matrix'\]"):
        check_transformation(dlopt.masked(dlopt.add_decayed_weights(0.1), _matrices))


def test_passes_optax_transform():
    with jax.numpy_dtype_promotion("standard"):
        check_transformation(optax.sgd(0.1, momentum=0.9, nesterov=True))


def test_custom_bf16_params_and_devices():
    params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": [jnp.zeros(3, jnp.float32)]}
    tx = dlopt.sgd(0.1, momentum=0.9)
    check_transformation(tx, params, steps=2, num_devices=4, rtol=1e-2, atol=1e-2)
    with pytest.raises(AssertionError, match=r"updates\['w'\] is float32\[2,3\], expected bf"):
        check_transformation(_stateless(lambda u, p: jax.tree.map(_f32, u)), params)


def _f32(x):
    return x.astype(jnp.float32)


def test_extra_args_reach_update():
    def update(updates, state, params=None, *, value):
        return jax.tree.map(lambda g: g * jnp.asarray(value, g.dtype), updates), state

    tx = GradientTransformationExtraArgs(lambda p: EmptyState(), update)
    check_transformation(tx, extra_args={"value": 0.5}, check_pmap=False)
    with pytest.raises(AssertionError, match="TypeError.*value"):
        check_transformation(tx)


def test_scan_and_pmap_comparisons_can_fail(monkeypatch):
    # No honest transform passes jit yet fails under scan or pmap, so perturb the harness.
    tx = dlopt.sgd(0.1, momentum=0.9)
    real_scan, real_pmap = jax.lax.scan, jax.pmap

    def shifted_scan(f, init, xs):
        carry, ys = real_scan(f, init, xs)
        return carry, jax.tree.map(lambda y: y + 1.0, ys)

    monkeypatch.setattr(jax.lax, "scan", shifted_scan)
    with pytest.raises(AssertionError, match=f'"{re.escape(testing.SCAN)}".*updates'):
        check_transformation(tx, check_vmap=False, check_pmap=False)
    monkeypatch.setattr(jax.lax, "scan", real_scan)

    def shifted_pmap(f, **kwargs):
        def doubled(x):
            return x * 2.0 if jnp.issubdtype(x.dtype, jnp.inexact) else x

        return real_pmap(lambda *a: jax.tree.map(doubled, f(*a)), **kwargs)

    monkeypatch.setattr(jax, "pmap", shifted_pmap)
    with pytest.raises(AssertionError, match=f'"{re.escape(testing.PMAP)}".*pmap device 0 of 2'):
        check_transformation(tx, check_vmap=False)


@pytest.mark.parametrize("kwargs", [{"steps": 1}, {"num_devices": 0}])
def test_rejects_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        check_transformation(dlopt.identity(), **kwargs)


def test_default_params_and_random_like():
    params = testing.default_params(0)
    shapes = [x.shape for x in jax.tree.leaves(params)]
    assert sorted(shapes) == sorted([(2, 3), (3,), (), (3,), (2, 3)])
    tree = {"a": params["matrix"], "none": None}
    g1, g2 = testing.random_like(tree, 1), testing.random_like(tree, 1, scale=2.0)
    assert g1["none"] is None
    np.testing.assert_allclose(2.0 * np.asarray(g1["a"]), np.asarray(g2["a"]), rtol=1e-6)
    assert not np.allclose(np.asarray(g1["a"]), np.asarray(testing.random_like(tree, 2)["a"]))
