"""Muon's next steps (issue 22): Polar Express and NorMuon against their papers' reference
code transcribed in numpy, batched expert (3-D) weights, the stacked Newton-Schulz iteration
against the per-leaf one, and bitwise checkpoint resume of muon, normuon and soap."""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlopt
import dlopt.optimizers.muon as muon_module
from dlopt.linalg.newton_schulz import (
    POLAR_EXPRESS_COEFFS,
    orthogonalize_stacked,
    polar_express_coeffs,
)

RNG = np.random.default_rng(0)

# --- Polar Express: Algorithm 1 of Amsel et al. (2025), transcribed in numpy (float64)

PAPER_COEFFS = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
PAPER_COEFFS = [(a / 1.01, b / 1.01**3, c / 1.01**5) for (a, b, c) in PAPER_COEFFS[:-1]] + [
    PAPER_COEFFS[-1]
]


def polar_express_reference(g, steps):
    x = np.asarray(g, np.float64)
    tall = x.shape[-2] > x.shape[-1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) * 1.01 + 1e-7)
    hs = PAPER_COEFFS[:steps] + [PAPER_COEFFS[-1]] * max(0, steps - len(PAPER_COEFFS))
    for a, b, c in hs:
        a_ = x @ x.T
        x = a * x + (b * a_ + c * a_ @ a_) @ x
    return x.T if tall else x


def test_polar_express_coefficients_are_the_papers():
    np.testing.assert_allclose(np.asarray(POLAR_EXPRESS_COEFFS), np.asarray(PAPER_COEFFS))
    assert len(polar_express_coeffs(12)) == 12


@pytest.mark.parametrize("shape,steps", [((8, 12), 5), ((20, 6), 8), ((7, 7), 10)])
def test_polar_express_matches_the_papers_algorithm(shape, steps):
    g = RNG.standard_normal(shape)
    ours = dlopt.orthogonalize_via_newton_schulz(
        jnp.asarray(g, jnp.float32), jnp.asarray(polar_express_coeffs(steps)), steps
    )
    np.testing.assert_allclose(ours, polar_express_reference(g, steps), atol=2e-5)


def test_polar_express_in_muon_converges_where_jordans_plateaus():
    g = RNG.standard_normal((16, 32))
    tx = dlopt.scale_by_muon(ns_coeffs="polar_express", ns_steps=8, nesterov=False)
    update, state = tx.update(
        {"w": jnp.asarray(g, jnp.float32)}, tx.init({"w": jnp.zeros(g.shape)})
    )
    assert state.ns_coeffs.shape == (8, 3)
    singular = np.linalg.svd(np.asarray(update["w"]), compute_uv=False)
    jordan = np.linalg.svd(
        np.asarray(dlopt.orthogonalize_via_newton_schulz(jnp.asarray(g, jnp.float32),
                                                         jnp.asarray((3.4445, -4.775, 2.0315)))),
        compute_uv=False,
    )  # fmt: skip
    assert np.max(np.abs(singular - 1)) < 0.05 < np.max(np.abs(jordan - 1))


def test_polar_express_needs_a_step():
    with pytest.raises(ValueError, match="ns_steps"):
        dlopt.muon(0.02, ns_coeffs="polar_express", ns_steps=0)


# --- NorMuon: the authors' normuon_update (normuon.py) transcribed in numpy


def _ns5(g):
    a, b, c = (3.4445, -4.7750, 2.0315)
    x = np.asarray(g, np.float64)
    tall = x.shape[-2] > x.shape[-1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(5):
        a_ = x @ x.T
        x = a * x + (b * a_ + c * a_ @ a_) @ x
    return x.T if tall else x


def normuon_reference(params, grads, *, lr, wd, beta, beta2):
    """torch weights are (out, in): each dlopt kernel (in, out) is used transposed."""
    w = {k: np.asarray(v, np.float64).T for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros((v.shape[0], 1)) for k, v in w.items()}
    for g_tree in grads:
        for k in w:
            g = np.asarray(g_tree[k], np.float64).T
            m[k] = m[k] + (1 - beta) * (g - m[k])  # momentum.lerp_(grad, 1 - beta)
            update = _ns5(m[k])  # nesterov=False: update = momentum
            vnorm = np.linalg.norm(update)
            v_mean = np.mean(update * update, axis=-1, keepdims=True)
            v2[k] = v2[k] + (1 - beta2) * (v_mean - v2[k])
            update = update * (1 / (np.sqrt(v2[k]) + 1e-10))
            update = update * (vnorm / (np.linalg.norm(update) + 1e-10))
            update = update * max(1, g.shape[-2] / g.shape[-1]) ** 0.5
            w[k] = w[k] * (1 - lr * wd) - lr * update
    return {k: v.T for k, v in w.items()}


def test_normuon_matches_the_authors_code():
    shapes = {"wide": (6, 10), "tall": (12, 5)}
    params = {k: jnp.asarray(RNG.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    grads = [
        {k: jnp.asarray(RNG.standard_normal(s) * (1 + np.arange(s[1])), jnp.float32)
         for k, s in shapes.items()}
        for _ in range(6)
    ]  # fmt: skip
    tx = dlopt.normuon(0.02, weight_decay=0.1, beta2=0.9, nesterov=False)
    state, p = tx.init(params), params
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for g in grads:
        updates, state = step(g, state, p)
        p = dlopt.apply_updates(p, updates)
    expected = normuon_reference(params, grads, lr=0.02, wd=0.1, beta=0.95, beta2=0.9)
    for k in shapes:
        np.testing.assert_allclose(p[k], expected[k], atol=2e-5)
    nu = state.inner_states["muon"].inner_state[1].nu
    assert nu["wide"].shape == (1, 10) and nu["tall"].shape == (1, 5)


def test_normuon_is_muon_with_neuron_normalization():
    assert dlopt.normuon.func is dlopt.muon and dlopt.normuon.keywords == {"normalize": "neuron"}
    with pytest.raises(ValueError, match="normalize"):
        dlopt.muon(0.02, normalize="rows")


# --- 3-D (mixture-of-experts) weights


@pytest.mark.parametrize(
    "params,expected",
    [
        ({"kernel": (4, 8, 16), "bias": (4, 16)}, dlopt.MuonDimensionNumbers(1, 2)),  # nn.vmap
        ({"kernel": (8, 4, 16), "bias": (4, 16)}, dlopt.MuonDimensionNumbers((0,), (1, 2))),
        ({"kernel": (3, 8, 16), "bias": (16,)}, dlopt.MuonDimensionNumbers((0, 1), (2,))),
    ],
    ids=["vmapped_dense", "dense_general", "conv1d"],
)
def test_expert_kernels_are_told_from_dense_general_and_conv(params, expected):
    tree = jax.tree.map(jnp.zeros, params, is_leaf=lambda x: isinstance(x, tuple))
    assert dlopt.infer_muon_dimension_numbers(tree)["kernel"] == expected


def test_expert_weights_are_orthogonalized_one_expert_at_a_time():
    experts = jnp.asarray(RNG.standard_normal((3, 4, 6)), jnp.float32)
    bias = jnp.asarray(RNG.standard_normal((3, 6)), jnp.float32)
    moe = {"moe": {"experts": {"wi": experts}}, "dense": {"kernel": experts[0], "bias": bias[0]}}
    split = {f"e{i}": {"kernel": experts[i], "bias": bias[i]} for i in range(3)}
    vmapped = {"kernel": experts, "bias": bias}
    tx = dlopt.muon(0.02)
    ours = tx.update(moe, tx.init(moe), moe)[0]["moe"]["experts"]["wi"]
    by_bias = tx.update(vmapped, tx.init(vmapped), vmapped)[0]
    each = tx.update(split, tx.init(split), split)[0]
    for i in range(3):
        np.testing.assert_allclose(ours[i], each[f"e{i}"]["kernel"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(by_bias["kernel"][i], each[f"e{i}"]["kernel"], atol=1e-7)
        np.testing.assert_allclose(by_bias["bias"][i], each[f"e{i}"]["bias"], atol=1e-7)


# --- stacking: one vmapped iteration per matrix shape, the same numbers as one per leaf


def test_stacked_newton_schulz_equals_the_per_leaf_iteration():
    shapes = [(6, 4), (6, 4), (4, 6), (2, 6, 4), (3, 2, 4, 6), (9, 5)]
    dims = [dlopt.MuonDimensionNumbers()] * 3 + [dlopt.MuonDimensionNumbers(1, 2),
                                                 dlopt.MuonDimensionNumbers((0, 2), 3),
                                                 dlopt.MuonDimensionNumbers()]  # fmt: skip
    xs = [jnp.asarray(RNG.standard_normal(s), jnp.float32) for s in shapes]
    coeffs = jnp.asarray(polar_express_coeffs(5))
    stacked = jax.jit(lambda xs: orthogonalize_stacked(xs, dims, coeffs, 5))(xs)
    one = jax.jit(
        lambda x, i: dlopt.orthogonalize_via_newton_schulz(x, coeffs, 5, dimension_numbers=dims[i]),
        static_argnums=1,
    )
    for i, x in enumerate(xs):
        np.testing.assert_allclose(stacked[i], one(x, i), rtol=1e-6, atol=1e-7)


def test_muon_tree_stacked_equals_per_leaf(monkeypatch):
    params = {f"l{i}": {"kernel": jnp.asarray(RNG.standard_normal((5, 3)), jnp.float32)}
              for i in range(4)}  # fmt: skip
    params["conv"] = {"kernel": jnp.asarray(RNG.standard_normal((3, 3, 2, 4)), jnp.float32)}

    def run():
        tx = dlopt.muon(0.02)
        return jax.jit(tx.update)(params, tx.init(params), params)[0]

    stacked = run()
    monkeypatch.setattr(
        muon_module,
        "orthogonalize_stacked",
        lambda xs, ds, **kw: [
            orthogonalize_stacked([x], [d], **kw)[0] for x, d in zip(xs, ds, strict=True)
        ],
    )
    chex.assert_trees_all_close(stacked, run(), rtol=1e-6, atol=1e-7)


# --- bitwise checkpoint resume

RESUME = {
    "muon_polar_express": lambda: dlopt.muon(0.02, ns_coeffs="polar_express", weight_decay=0.01),
    "normuon": lambda: dlopt.normuon(0.02, weight_decay=0.01),
    "soap": lambda: dlopt.soap(3e-3, precondition_frequency=2),
}


@pytest.mark.parametrize("name", RESUME)
def test_checkpoint_resume_is_bitwise(name):
    params = {"experts": {"wi": jnp.asarray(RNG.standard_normal((2, 4, 3)), jnp.float32)},
              "dense": {"kernel": jnp.asarray(RNG.standard_normal((4, 5)), jnp.float32),
                        "bias": jnp.zeros(5, jnp.float32)}}  # fmt: skip
    tx = RESUME[name]()

    @jax.jit
    def run(params, state):
        for t in range(3):
            grads = jax.tree.map(lambda p, t=t: jnp.cos(3 * p + t), params)
            updates, state = tx.update(grads, state, params)
            params = dlopt.apply_updates(params, updates)
        return params, state

    half = run(params, tx.init(params))
    straight = run(*half)
    restored = flax.serialization.from_bytes(tx.init(params), flax.serialization.to_bytes(half[1]))
    chex.assert_trees_all_equal(run(half[0], restored), straight)
