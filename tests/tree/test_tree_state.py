"""dlopt.tree.get / set / get_all_with_path / map_params against optax's, on optimizer states
(chains, named tuples, dicts, masked transforms)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import dlopt

PARAMS = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}


def _state():
    """One state for both libraries: optax's chain of noise and adam (dicts, NamedTuples)."""
    opt = optax.chain(optax.add_noise(1.0, 0.9, key=0), optax.scale_by_adam())
    return {"opt": opt.init(PARAMS), "extra": {"count": jnp.asarray(7), "lr": 0.1}}


def _same_paths(ours, theirs):
    assert [jax.tree_util.keystr(p) for p, _ in ours] == [
        jax.tree_util.keystr(p) for p, _ in theirs
    ]
    assert [str(p) for p, _ in ours] == [str(p) for p, _ in theirs]  # NamedTupleKey's text
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
        assert jax.tree.structure(a) == jax.tree.structure(b)


@pytest.mark.parametrize("key", ["count", "mu", "AddNoiseState", "lr", "missing"])
def test_get_all_with_path_matches_optax(key):
    state = _state()
    _same_paths(dlopt.tree.get_all_with_path(state, key), optax.tree.get_all_with_path(state, key))


def test_filtering_sees_named_tuple_keys():
    state = _state()

    def in_adam(path, _):
        return any(getattr(k, "tuple_name", None) == "ScaleByAdamState" for k in path)

    ours = dlopt.tree.get(state, "count", filtering=in_adam)
    assert int(ours) == int(optax.tree.get(state, "count", filtering=in_adam))
    assert dlopt.tree.get(state, "missing", default=3) == 3
    with pytest.raises(KeyError, match="multiple"):
        dlopt.tree.get(state, "count")


def test_set_matches_optax_and_raises_for_missing_keys():
    state = _state()
    for kwargs in ({"lr": 0.5}, {"mu": {"b": jnp.ones(3), "w": jnp.ones((2, 3))}}):
        ours, theirs = dlopt.tree.set(state, **kwargs), optax.tree.set(state, **kwargs)
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), ours, theirs)))

    def only_extra(path, _):
        return jax.tree_util.keystr(path).startswith("['extra']")

    ours = dlopt.tree.set(state, only_extra, count=jnp.asarray(0))
    theirs = optax.tree.set(state, only_extra, count=jnp.asarray(0))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), ours, theirs))
    with pytest.raises(KeyError, match="no values matching 'nope'"):
        dlopt.tree.set(state, nope=1)
    with pytest.raises(KeyError, match="filtering"):
        dlopt.tree.set(state, lambda p, v: False, lr=1)


@pytest.mark.parametrize("lib", [optax, dlopt], ids=["optax_opt", "dlopt_opt"])
@pytest.mark.parametrize(
    "make",
    [
        lambda lib: lib.adam(1e-3),
        lambda lib: lib.chain(lib.clip_by_global_norm(1.0), lib.sgd(0.1, momentum=0.9)),
        lambda lib: lib.masked(lib.adam(1e-3), lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
    ],
    ids=["adam", "chain", "masked"],
)
def test_map_params_matches_optax(make, lib):
    """The same optimizer (optax's or dlopt's) mapped by both implementations; a masked
    state holds MaskedNode leaves where the mask is False: ``is_leaf`` stops ``f`` there."""
    opt = make(lib)
    state = opt.init(PARAMS)
    specs = {"w": "W", "b": "B"}

    def is_leaf(x):
        return isinstance(x, optax.MaskedNode | dlopt.MaskedNode)

    def f(p, s):
        return None if is_leaf(p) else s

    def run(tree_lib, init):
        return tree_lib.map_params(
            init, f, state, specs, transform_non_params=lambda _: None, is_leaf=is_leaf
        )

    ours, theirs = run(dlopt.tree, opt), run(optax.tree, opt)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    assert jax.tree.leaves(ours) == jax.tree.leaves(theirs)
    assert "W" in jax.tree.leaves(ours)
    assert jax.tree.structure(run(dlopt.tree, opt.init)) == jax.tree.structure(theirs)


def test_map_params_of_a_dict_masked_state_maps_the_inner_state_as_optax():
    """A mask given as a tree cannot be laid over the placeholder: masked passes it down."""
    results = []
    for lib in (optax, dlopt):
        opt = lib.masked(lib.adam(1e-3), {"w": True, "b": False})
        mapped = lib.tree.map_params(opt, lambda p: "P", opt.init(PARAMS))
        results.append(jax.tree.leaves(optax.tree.get(mapped, "mu")))
    assert results[0] == results[1] == ["P"]
