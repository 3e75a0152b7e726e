"""dlopt.data.augment: shapes, ranges, identities, exact areas, key behaviour, jit at scale."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlopt.data as data

KEY = jax.random.key(0)
IMAGES = jnp.asarray(np.random.default_rng(0).random((6, 9, 11, 3)), jnp.float32)
ONES = jnp.ones((16, 10, 10, 2), jnp.float32)

# name, transform at some strength, the same transform at strength 0 / p=0
P = partial
CONTRAST_ID = P(data.random_contrast, lower=1.0, upper=1.0)
AUGMENTS = [
    ("flip", P(data.random_flip, p=0.5, vertical=True), P(data.random_flip, p=0.0)),
    ("rotation", P(data.random_rotation, max_degrees=30), P(data.random_rotation, max_degrees=0)),
    ("zoom", P(data.random_zoom, max_zoom=0.3), P(data.random_zoom, max_zoom=0.0)),
    (
        "translation",
        P(data.random_translation, max_shift=3),
        P(data.random_translation, max_shift=0),
    ),
    ("crop", P(data.random_crop, padding=3), P(data.random_crop, padding=0)),
    (
        "brightness",
        P(data.random_brightness, max_delta=0.3),
        P(data.random_brightness, max_delta=0),
    ),
    (
        "contrast",
        P(data.random_contrast, lower=0.2, upper=1.8),
        P(data.random_contrast, lower=1, upper=1),
    ),
    ("cutout", P(data.cutout, size=4), None),
    ("erasing", P(data.random_erasing, p=1.0), P(data.random_erasing, p=0.0)),
    ("erasing_const", P(data.random_erasing, p=1.0, value=0.5), None),
]
IDS = [a[0] for a in AUGMENTS]


@pytest.mark.parametrize("name,fn,identity", AUGMENTS, ids=IDS)
def test_shape_dtype_range_and_keys(name, fn, identity):
    f = jax.jit(fn)
    out = f(KEY, IMAGES)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, IMAGES)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # value range kept
    chex.assert_trees_all_equal(f(KEY, IMAGES), out)  # same key, same result
    assert not np.array_equal(out, f(jax.random.key(1), IMAGES))  # another key, another result
    assert not np.array_equal(out, IMAGES)
    # Per-example randomness: identical inputs get different outputs across the batch.
    same = jnp.broadcast_to(IMAGES[:1], IMAGES.shape)
    outs = np.asarray(f(KEY, same)).reshape(len(same), -1)
    assert len({row.tobytes() for row in outs}) > 1
    if identity is not None:
        chex.assert_trees_all_close(jax.jit(identity)(KEY, IMAGES), IMAGES, atol=1e-6)


@pytest.mark.parametrize("index", [1, 7, 8])  # rotation (warp), cutout, erasing
def test_bf16_images_keep_dtype(index):
    x = IMAGES.astype(jnp.bfloat16)
    assert jax.jit(AUGMENTS[index][1])(KEY, x).dtype == jnp.bfloat16


def test_flip_twice_is_identity_and_flips_are_exact():
    f = partial(data.random_flip, p=0.5, vertical=True)
    chex.assert_trees_all_equal(f(KEY, f(KEY, IMAGES)), IMAGES)
    out = data.random_flip(KEY, IMAGES, p=1.0)
    chex.assert_trees_all_equal(out, IMAGES[:, :, ::-1])
    out = data.random_flip(KEY, IMAGES, p=1.0, horizontal=False, vertical=True)
    chex.assert_trees_all_equal(out, IMAGES[:, ::-1])


def test_warps_fix_the_centre_and_translation_moves_exactly():
    # Rotation and zoom act about the centre: the centre pixel of an odd-sized image stays.
    for fn in (P(data.random_rotation, max_degrees=90), P(data.random_zoom, max_zoom=0.5)):
        out = fn(KEY, IMAGES[:, :9, :9])
        chex.assert_trees_all_close(out[:, 4, 4], IMAGES[:, 4, 4], atol=1e-5)
    # Translation: each output is a whole-pixel shifted copy with zero fill.
    x = jnp.asarray(np.random.default_rng(1).random((8, 7, 7, 1)) + 1, jnp.float32)
    out = np.asarray(data.random_translation(KEY, x, max_shift=2))
    for o, i in zip(out, np.asarray(x), strict=True):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = np.zeros_like(i)
                src = i[max(0, -dy) : 7 - max(0, dy), max(0, -dx) : 7 - max(0, dx)]
                ref[
                    max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]
                ] = src
                found |= np.array_equal(o, ref)
        assert found


@pytest.mark.parametrize("size", [1, 3, 4, 10])
def test_cutout_zeroes_exactly_the_clipped_square(size):
    out = np.asarray(data.cutout(KEY, ONES, size=size))
    full = 0
    for image in out:
        zero = image[..., 0] == 0
        assert np.array_equal(zero, image[..., 1] == 0)  # all channels
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert len(rows) and len(cols)
        assert zero.sum() == len(rows) * len(cols)  # one rectangle
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        for idx, n in ((rows, 10), (cols, 10)):
            # A side is the full size unless the square was clipped at that border.
            assert len(idx) == size or (len(idx) < size and (idx[0] == 0 or idx[-1] == n - 1))
        full += zero.sum() == size * size
    assert full > 0 or size == 10  # a 10-square fits a 10x10 image at one centre only


def test_erasing_area_within_scale():
    erase = jax.jit(P(data.random_erasing, p=1.0, scale=(0.1, 0.2), value=0.0))
    out = np.asarray(erase(KEY, ONES * 2))
    areas = (out[..., 0] == 0).mean((1, 2))
    assert np.all(areas > 0.03) and np.all(areas < 0.35)


def test_mixup_weight_matches_image_mix():
    n = 8
    x = jnp.concatenate([jnp.zeros((n // 2, 3, 3, 1)), jnp.ones((n // 2, 3, 3, 1))])
    labels = jnp.concatenate([jnp.zeros(n // 2, jnp.int32), jnp.ones(n // 2, jnp.int32)])
    mixed, soft = jax.jit(P(data.mixup, alpha=0.4, num_classes=2))(KEY, x, labels)
    chex.assert_shape(soft, (n, 2))
    chex.assert_trees_all_close(soft.sum(1), jnp.ones(n), atol=1e-6)
    assert float(soft.min()) >= 0
    assert bool(jnp.any(soft.max(1) < 0.9))  # some labels are really mixed
    # Image value = share of class 1 in the mix = label weight on class 1.
    chex.assert_trees_all_close(mixed[:, 0, 0, 0], soft[:, 1], atol=1e-6)


def test_cutmix_label_weight_is_the_pasted_area():
    n = 32
    x = jnp.concatenate([jnp.zeros((n // 2, 10, 12, 1)), jnp.ones((n // 2, 10, 12, 1))])
    labels = jax.nn.one_hot(jnp.repeat(jnp.arange(2), n // 2), 2)
    mixed, soft = jax.jit(partial(data.cutmix, alpha=1.0))(KEY, x, labels)
    chex.assert_trees_all_close(soft.sum(1), jnp.ones(n), atol=1e-6)
    # Pixels with value 1 are class-1 pixels: their share is the label weight of class 1.
    chex.assert_trees_all_close(mixed.mean((1, 2, 3)), soft[:, 1], atol=1e-6)
    assert set(np.unique(np.asarray(mixed)).tolist()) <= {0.0, 1.0}
    assert 0 < float(jnp.mean((soft[:, 1] > 0) & (soft[:, 1] < 1)))  # some real mixing


def test_compose_and_validation():
    aug = data.compose(
        partial(data.random_crop, padding=2),
        data.random_flip,
        partial(data.cutmix, alpha=1.0, num_classes=3),
    )
    labels = jnp.arange(6) % 3
    images, soft = jax.jit(aug)(KEY, IMAGES, labels)
    chex.assert_trees_all_equal_shapes_and_dtypes(images, IMAGES)
    chex.assert_trees_all_close(soft.sum(1), jnp.ones(6), atol=1e-6)
    only = data.compose(data.random_flip)
    k = jax.random.split(KEY, 1)[0]
    chex.assert_trees_all_equal(only(KEY, IMAGES), data.random_flip(k, IMAGES))
    with pytest.raises(ValueError, match="needs labels"):
        aug(KEY, IMAGES)
    with pytest.raises(ValueError, match="p must be in"):
        data.random_flip(KEY, IMAGES, p=1.5)
    with pytest.raises(ValueError, match="NHWC"):
        data.cutout(KEY, IMAGES[0], size=2)
    with pytest.raises(TypeError, match="to_float"):
        data.random_flip(KEY, jnp.zeros((1, 2, 2, 1), jnp.uint8))
    with pytest.raises(ValueError, match="num_classes"):
        data.mixup(KEY, IMAGES, labels)


def test_jit_on_mnist_sized_batch():
    x = jnp.asarray(np.random.default_rng(2).random((256, 28, 28, 1)), jnp.float32)
    y = jnp.arange(256) % 10
    raw = data.compose(
        partial(data.random_rotation, max_degrees=15),
        partial(data.random_zoom, max_zoom=0.1),
        partial(data.random_crop, padding=2),
        partial(data.random_brightness, max_delta=0.1),
        partial(data.random_contrast, lower=0.8, upper=1.2),
        partial(data.cutout, size=8),
        partial(data.random_erasing, p=0.5),
        partial(data.mixup, alpha=0.2, num_classes=10),
    )
    aug = jax.jit(chex.assert_max_traces(raw, n=1))
    images, labels = aug(KEY, x, y)
    chex.assert_shape(images, (256, 28, 28, 1))
    chex.assert_shape(labels, (256, 10))
    chex.assert_tree_all_finite((images, labels))
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    aug(jax.random.key(3), x, y)  # new keys, same shapes: no retrace
    aug(jax.random.key(4), x, y)
