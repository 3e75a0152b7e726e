"""clip_by_update_rms (per leaf and per stacked layer) and clip_by_norm_history (the global
update norm clipped to mean + k std of its recent history)."""

from __future__ import annotations

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dlopt

rng = np.random.default_rng(0)
UPDATES = {
    "layers": jnp.asarray(rng.standard_normal((3, 4, 5)) * np.array([0.1, 2.0, 5.0])[:, None, None],
                          jnp.float32),
    "head": jnp.asarray(3.0 * rng.standard_normal((5, 2)), jnp.float32),
    "bias": jnp.asarray([0.1, -0.2], jnp.float32),
}  # fmt: skip


def rms(x, axes=None):
    return np.sqrt(np.mean(np.square(np.asarray(x, np.float64)), axis=axes))


def test_update_rms_without_stacking_is_optax_clip_by_block_rms():
    ours = dlopt.clip_by_update_rms(1.0)
    theirs = optax.clip_by_block_rms(1.0)
    got = ours.update(UPDATES, ours.init(UPDATES))[0]
    want = theirs.update(UPDATES, theirs.init(UPDATES))[0]
    chex.assert_trees_all_close(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    "stacked", [{"layers": 1, "head": 0, "bias": 0}, lambda u: {"layers": 1, "head": 0, "bias": 0}]
)
def test_each_stacked_layer_is_clipped_on_its_own(stacked):
    tx = dlopt.clip_by_update_rms(1.0, stacked_axes=stacked)
    got = jax.jit(tx.update)(UPDATES, tx.init(UPDATES))[0]
    layer_rms = rms(UPDATES["layers"], axes=(1, 2))
    want = np.asarray(UPDATES["layers"]) / np.maximum(1.0, layer_rms)[:, None, None]
    np.testing.assert_allclose(got["layers"], want, rtol=1e-6)
    assert layer_rms[0] < 1.0 and np.allclose(got["layers"][0], UPDATES["layers"][0])
    np.testing.assert_allclose(rms(got["layers"], axes=(1, 2))[1:], 1.0, rtol=1e-5)
    np.testing.assert_allclose(rms(got["head"]), 1.0, rtol=1e-5)
    chex.assert_trees_all_equal(got["bias"], UPDATES["bias"])


def test_low_precision_updates_keep_their_dtype():
    tx = dlopt.clip_by_update_rms(0.5)
    u = {"w": jnp.full((4, 4), 3.0, jnp.bfloat16)}
    out = tx.update(u, tx.init(u))[0]["w"]
    assert out.dtype == jnp.bfloat16 and np.allclose(np.asarray(out, np.float32), 0.5)


def test_bad_stacked_axes_name_themselves():
    with pytest.raises((TypeError, ValueError), match="stacked_axes"):
        dlopt.clip_by_update_rms(1.0, stacked_axes=-1)
    with pytest.raises(ValueError, match="stacked_axes=3"):
        tx = dlopt.clip_by_update_rms(1.0, stacked_axes=3)
        tx.update(UPDATES, tx.init(UPDATES))


# --- clip_by_norm_history ---------------------------------------------------------------------


def norm_history_reference(norms, interval, k, min_history):
    """The clipped norms, step by step, in numpy (the window holds unclipped norms)."""
    history, out = [], []
    for n in norms:
        window = np.asarray(history[-interval:], np.float64)
        limit = np.inf
        if len(window) >= min_history:
            std = max(window.std(ddof=1), 1e-3 * abs(window.mean()))
            limit = window.mean() + k * std
        out.append(min(n, limit))
        history.append(n)
    return np.asarray(out)


def test_norm_history_clips_to_mean_plus_k_std_of_the_unclipped_norms():
    norms = np.abs(1.0 + 0.2 * rng.standard_normal(20))
    norms[[9, 10, 15]] = [8.0, 6.0, 30.0]  # spikes, the second right after the first
    direction = {"w": jnp.asarray([0.6, 0.8], jnp.float32)}
    tx = dlopt.clip_by_norm_history(interval=6, scaling_factor=2.0)
    update, state = jax.jit(tx.update), tx.init(None)
    got = []
    for n in norms:
        out, state = update(jax.tree.map(lambda d, n=n: jnp.float32(n) * d, direction), state)
        got.append(float(jnp.linalg.norm(out["w"])))
        np.testing.assert_allclose(out["w"] / got[-1], direction["w"], rtol=1e-5)  # direction kept
    want = norm_history_reference(norms, 6, 2.0, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[9] < 3.0 and got[15] < 30.0  # the spikes were clipped


def test_norm_history_passes_non_finite_updates_unrecorded():
    tx = dlopt.clip_by_norm_history(interval=4)
    state = tx.init(None)
    for n in (1.0, 1.1, 0.9):
        _, state = tx.update({"w": jnp.full(2, n, jnp.float32)}, state)
    out, after = tx.update({"w": jnp.array([jnp.nan, 1.0], jnp.float32)}, state)
    assert np.isnan(out["w"][0]) and out["w"][1] == 1.0
    chex.assert_trees_all_equal(after, state)


def test_norm_history_resumes_bitwise():
    tx = dlopt.clip_by_norm_history(interval=4)
    updates = [{"w": jnp.asarray(rng.standard_normal(3), jnp.float32)} for _ in range(8)]
    update = jax.jit(tx.update)

    def run(state, us):
        outs = []
        for u in us:
            o, state = update(u, state)
            outs.append(o)
        return outs, state

    _, half = run(tx.init(None), updates[:4])
    restored = flax.serialization.from_bytes(tx.init(None), flax.serialization.to_bytes(half))
    chex.assert_trees_all_equal(run(restored, updates[4:]), run(half, updates[4:]))
