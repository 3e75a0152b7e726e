"""dlopt.data.preprocess: splits against scikit-learn, scalers, image helpers."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import MinMaxScaler as SkMinMax
from sklearn.preprocessing import StandardScaler

import dlopt.data as data


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


@given(
    counts=st.lists(st.integers(8, 60), min_size=2, max_size=5),
    val=st.sampled_from([0.0, 0.1, 0.15, 0.2]),
    test=st.sampled_from([0.1, 0.15, 0.25]),
    seed=st.integers(0, 3),
)
def test_split_sizes_classes_and_disjointness(counts, val, test, seed):
    y = _labels(counts)
    x = np.arange(len(y))  # each sample is its own id
    (xt, yt), (xv, yv), (xs, ys) = data.train_val_test_split(x, y, val=val, test=test, seed=seed)
    n = len(y)
    assert len(ys) == math.ceil(test * n) and len(yv) == math.ceil(val * n)
    assert len(yt) == n - len(ys) - len(yv)
    ids = np.concatenate([xt, xv, xs])
    np.testing.assert_array_equal(np.sort(ids), np.arange(n))  # each sample once
    np.testing.assert_array_equal(y[xt], yt)  # pairs stay together
    # Class counts of the test split match sklearn's stratified split within one per class.
    _, sk_test = train_test_split(y, test_size=len(ys), stratify=y, random_state=seed)
    mine, theirs = (
        np.bincount(ys, minlength=len(counts)),
        np.bincount(sk_test, minlength=len(counts)),
    )
    assert np.abs(mine - theirs).max() <= 1
    for part in (yt, yv, ys):  # proportions kept within one sample per class
        if len(part):
            expected = np.asarray(counts) * len(part) / n
            assert np.abs(np.bincount(part, minlength=len(counts)) - expected).max() < 1 + 1e-9


def test_split_is_seeded_and_shuffled():
    x, y = np.arange(100), _labels([50, 50])
    a = data.train_val_test_split(x, y, seed=1)
    b = data.train_val_test_split(x, y, seed=1)
    c = data.train_val_test_split(x, y, seed=2)
    np.testing.assert_array_equal(a[0][0], b[0][0])
    assert not np.array_equal(np.sort(a[2][0]), np.sort(c[2][0]))
    assert not np.array_equal(a[0][0], np.sort(a[0][0]))  # shuffled, not sorted by class


def test_split_unstratified_and_multidim_x():
    x = np.arange(40.0).reshape(20, 2)
    y = np.arange(20)
    (xt, yt), (xv, yv), (xs, ys) = data.train_val_test_split(x, y, 0.25, 0.25, stratify=False)
    assert (len(yt), len(yv), len(ys)) == (10, 5, 5)
    np.testing.assert_array_equal(xs[:, 0], 2 * ys)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"val": 0.5, "test": 0.5}, "val \\+ test"),
        ({"val": -0.1}, "val="),
        ({"test": 1.2}, "test="),
    ],
)
def test_split_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.train_val_test_split(np.zeros(10), np.zeros(10, int), **kwargs)


SCALERS = [(data.Standardizer, StandardScaler), (data.MinMaxScaler, SkMinMax)]


@pytest.mark.parametrize("ours,theirs", SCALERS)
def test_scaler_matches_sklearn_fit_on_train_only(ours, theirs):
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, (50, 4)).astype(np.float32)
    train[:, 2] = 7.0  # constant feature
    val = rng.normal(3.0, 2.0, (10, 4)).astype(np.float32)
    fitted = ours().fit(train)
    ref = theirs().fit(train)
    for x in (train, val):  # val is transformed with the train statistics, unchanged
        chex.assert_trees_all_close(fitted.transform(x), ref.transform(x), atol=2e-5, rtol=2e-5)
        chex.assert_trees_all_close(fitted.inverse_transform(fitted.transform(x)), x, atol=1e-4)
    assert np.isfinite(np.asarray(fitted.transform(val))).all()


def test_standardizer_moments_and_pytree():
    x = jnp.asarray(np.random.default_rng(1).normal(5, 3, (64, 3)), jnp.float32)
    s, z = data.Standardizer().fit_transform(x)
    chex.assert_trees_all_close(z.mean(0), jnp.zeros(3), atol=1e-5)
    chex.assert_trees_all_close(z.std(0), jnp.ones(3), atol=1e-5)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 2
    f = jax.jit(lambda scaler, v: scaler.transform(v))  # the fitted scaler passes through jit
    chex.assert_trees_all_close(f(s, x), z, atol=1e-6)
    s2 = jax.tree.map(lambda a: a * 0 + 1, s)
    assert isinstance(s2, data.Standardizer)
    chex.assert_trees_all_close(s2.transform(x), x - 1)


def test_minmax_range_and_unfitted_error():
    x = jnp.asarray([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    m = data.MinMaxScaler().fit(x)
    chex.assert_trees_all_close(
        m.transform(x), jnp.asarray([[0, 0], [0.5, 0], [1, 0]], jnp.float32)
    )
    with pytest.raises(ValueError, match="not fitted.*fit\\(x_train\\)"):
        data.MinMaxScaler().transform(x)


def test_scaler_on_uint8_images_per_channel():
    imgs = np.random.default_rng(2).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    s = data.Standardizer().fit(imgs, axis=(0, 1, 2))
    assert s.mean.shape == (3,)
    z = s.transform(imgs)
    assert z.dtype == jnp.float32
    chex.assert_trees_all_close(z.mean((0, 1, 2)), jnp.zeros(3), atol=1e-5)


def test_image_normalization_per_channel():
    imgs = np.random.default_rng(3).integers(0, 256, (8, 5, 5, 3), dtype=np.uint8)
    mean, std = data.channel_stats(imgs)
    ref = imgs.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, ref.std((0, 1, 2)), rtol=1e-4)
    z = data.normalize_images(imgs, mean, std)
    chex.assert_trees_all_close(z.mean((0, 1, 2)), jnp.zeros(3), atol=1e-5)
    chex.assert_trees_all_close(z.std((0, 1, 2)), jnp.ones(3), atol=1e-4)
    with pytest.raises(ValueError, match="one value per channel"):
        data.normalize_images(imgs, mean[:2], std[:2])


def test_grayscale():
    rgb = jnp.asarray([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1, 1, 1]]]])
    g = data.to_grayscale(rgb)
    assert g.shape == (1, 1, 4, 1)
    chex.assert_trees_all_close(g[0, 0, :, 0], jnp.asarray([0.299, 0.587, 0.114, 1.0]))
    one = jnp.ones((2, 3, 3, 1))
    assert data.to_grayscale(one) is one or bool(jnp.all(data.to_grayscale(one) == one))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        data.to_grayscale(jnp.ones((1, 2, 2, 4)))


def test_resize():
    x = jnp.asarray(np.random.default_rng(4).random((2, 8, 8, 1)), jnp.float32)
    chex.assert_trees_all_close(data.resize(x, 8, 8), x, atol=1e-6)  # same size: identity
    small = data.resize(x, 4, 4)
    assert small.shape == (2, 4, 4, 1)
    # Antialiased 2x bilinear downscale averages the image: the mean is kept.
    chex.assert_trees_all_close(small.mean((1, 2)), x.mean((1, 2)), atol=0.05)
    const = data.resize(jnp.full((1, 5, 5, 3), 0.25), 11, 7)
    chex.assert_trees_all_close(const, jnp.full((1, 11, 7, 3), 0.25), atol=1e-6)
    assert data.to_float(np.full((1, 1, 1, 1), 255, np.uint8)).item() == 1.0
