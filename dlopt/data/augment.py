"""Image augmentation as pure JAX functions of ``(key, images[, labels])`` on NHWC batches.

Every function is written for ONE image and lifted once: the key is split into one key per
example (``jax.random.split(key, batch)``) and the per-image function is ``jax.vmap``-ed, so
every example draws its own randomness. Sizes and probabilities are static Python numbers, so
each function jit-compiles once per input shape.

Common arguments and results:
  key: a ``jax.random`` key; the same key gives the same result, another key another one.
  images: a float NHWC batch ``(batch, height, width, channels)``, values in [0, 1] where a
    function clips or fills (uint8 data: ``dlopt.data.to_float`` first).
  labels (mixup, cutmix): one-hot/soft ``(batch, classes)``, or int ``(batch,)`` with
    ``num_classes``.
  Returns: images of the input's shape and dtype (and float soft labels for mixup/cutmix).

Example:
  >>> from functools import partial
  >>> import jax, jax.numpy as jnp
  >>> from dlopt.data import compose, random_crop, random_flip
  >>> augment = jax.jit(compose(partial(random_crop, padding=4), random_flip))
  >>> images = jnp.linspace(0, 1, 8 * 32 * 32 * 3).reshape(8, 32, 32, 3)
  >>> augment(jax.random.key(0), images).shape
  (8, 32, 32, 3)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from dlopt.core.validation import check_in_range, check_non_negative, check_positive

Transform = Callable[..., Any]


def _per_example(fn: Callable[..., jax.Array], key: chex.PRNGKey, images: chex.Array, *rest):
    """Applies ``fn(key_i, image_i, *rest_i)`` to every example with its own key."""
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be an NHWC batch (4-d), got shape {images.shape}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"images must be floating point, got {images.dtype}; convert with "
            "dlopt.data.to_float first."
        )
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(fn)(keys, images, *rest)


def _grid(h: int, w: int) -> tuple[jax.Array, jax.Array]:
    return jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")


def _warp(image: jax.Array, inverse: jax.Array, fill: float) -> jax.Array:
    """Output pixel p samples the input at ``inverse @ (p - c) + c`` (bilinear, else ``fill``)."""
    h, w, _ = image.shape
    yy, xx = _grid(h, w)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y = yy.astype(jnp.float32) - cy
    x = xx.astype(jnp.float32) - cx
    src_y = inverse[0, 0] * y + inverse[0, 1] * x + cy
    src_x = inverse[1, 0] * y + inverse[1, 1] * x + cx
    sample = lambda channel: map_coordinates(  # noqa: E731
        channel, [src_y, src_x], order=1, mode="constant", cval=fill
    )
    image32 = image.astype(jnp.float32)
    return jax.vmap(sample, in_axes=2, out_axes=2)(image32).astype(image.dtype)


def _pad_crop(k: chex.PRNGKey, image: jax.Array, m: int, mode: str = "constant", **kw):
    """Pads ``m`` pixels on each side, then takes the original size at a random offset."""
    h, w, c = image.shape
    padded = jnp.pad(image, ((m, m), (m, m), (0, 0)), mode=mode, **kw)
    dy, dx = jax.random.randint(k, (2,), 0, 2 * m + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, jnp.zeros((), dy.dtype)), (h, w, c))


def random_flip(
    key: chex.PRNGKey,
    images: chex.Array,
    p: float = 0.5,
    horizontal: bool = True,
    vertical: bool = False,
) -> jax.Array:
    """Flips each image left-right (and/or up-down) with probability ``p``, independently.

    The same key gives the same flips, so applying it twice with one key is the identity.
    """
    check_in_range("p", p, 0.0, 1.0, high_closed=True)

    def one(k, image):
        kh, kv = jax.random.split(k)
        if horizontal:
            image = jnp.where(jax.random.bernoulli(kh, p), image[:, ::-1], image)
        if vertical:
            image = jnp.where(jax.random.bernoulli(kv, p), image[::-1], image)
        return image

    return _per_example(one, key, images)


def random_rotation(
    key: chex.PRNGKey, images: chex.Array, max_degrees: float, fill: float = 0.0
) -> jax.Array:
    """Rotates each image about its centre by an angle drawn from U(-max_degrees, max_degrees).

    Bilinear sampling; pixels that come from outside the image are ``fill``.
    """
    check_non_negative("max_degrees", max_degrees)

    def one(k, image):
        theta = jnp.deg2rad(jax.random.uniform(k, (), jnp.float32, -max_degrees, max_degrees))
        c, s = jnp.cos(theta), jnp.sin(theta)
        return _warp(image, jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])]), fill)

    return _per_example(one, key, images)


def random_zoom(
    key: chex.PRNGKey, images: chex.Array, max_zoom: float, fill: float = 0.0
) -> jax.Array:
    """Zooms each image about its centre by a factor from U(1 - max_zoom, 1 + max_zoom).

    Factors above 1 enlarge (crop into) the image; below 1 shrink it with a ``fill`` border.
    """
    check_in_range("max_zoom", max_zoom, 0.0, 1.0)

    def one(k, image):
        zoom = jax.random.uniform(k, (), jnp.float32, 1 - max_zoom, 1 + max_zoom)
        return _warp(image, jnp.eye(2, dtype=jnp.float32) / zoom, fill)

    return _per_example(one, key, images)


def random_translation(
    key: chex.PRNGKey, images: chex.Array, max_shift: int, fill: float = 0.0
) -> jax.Array:
    """Shifts each image by whole pixels, dy and dx from U{-max_shift..max_shift}; ``fill``
    enters at the border. Values are moved exactly (no interpolation)."""
    check_non_negative("max_shift", max_shift)
    return _per_example(
        lambda k, image: _pad_crop(k, image, int(max_shift), constant_values=fill), key, images
    )


def random_crop(
    key: chex.PRNGKey, images: chex.Array, padding: int, mode: str = "constant"
) -> jax.Array:
    """Pads each image by ``padding`` pixels (``mode`` as in ``jnp.pad``: zeros by default,
    ``"reflect"``, ``"edge"``) and crops a random window of the original size (the CIFAR recipe)."""
    check_non_negative("padding", padding)
    return _per_example(lambda k, image: _pad_crop(k, image, int(padding), mode), key, images)


def random_brightness(
    key: chex.PRNGKey,
    images: chex.Array,
    max_delta: float,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Adds ``delta ~ U(-max_delta, max_delta)`` to each image, clipped to ``value_range``."""
    check_non_negative("max_delta", max_delta)

    def one(k, image):
        delta = jax.random.uniform(k, (), jnp.float32, -max_delta, max_delta).astype(image.dtype)
        return jnp.clip(image + delta, value_range[0], value_range[1]).astype(image.dtype)

    return _per_example(one, key, images)


def random_contrast(
    key: chex.PRNGKey,
    images: chex.Array,
    lower: float,
    upper: float,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Scales each image's deviation from its per-channel mean by ``f ~ U(lower, upper)``:
    ``(x - mean) * f + mean``, clipped to ``value_range`` (as ``tf.image.random_contrast``)."""
    check_non_negative("lower", lower)
    if upper < lower:
        raise ValueError(f"upper must be >= lower, got {lower=}, {upper=}.")

    def one(k, image):
        factor = jax.random.uniform(k, (), jnp.float32, lower, upper).astype(image.dtype)
        mean = jnp.mean(image, axis=(0, 1), keepdims=True)
        out = (image - mean) * factor + mean
        return jnp.clip(out, value_range[0], value_range[1]).astype(image.dtype)

    return _per_example(one, key, images)


def _box_mask(h: int, w: int, top: jax.Array, left: jax.Array, bh: Any, bw: Any) -> jax.Array:
    """(h, w, 1) boolean mask of rows [top, top + bh) x cols [left, left + bw), clipped."""
    yy, xx = _grid(h, w)
    inside = (yy >= top) & (yy < top + bh) & (xx >= left) & (xx < left + bw)
    return inside[..., None]


def cutout(key: chex.PRNGKey, images: chex.Array, size: int, fill: float = 0.0) -> jax.Array:
    """Sets a ``size`` x ``size`` square to ``fill`` (zero) in each image.

    The square's centre is uniform over the image, so near a border the square is clipped
    and a smaller area is erased, as in the paper.

    References:
      DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout",
      2017.
    """
    check_positive("size", size)

    def one(k, image):
        h, w, _ = image.shape
        cy, cx = jax.random.randint(k, (2,), 0, jnp.asarray([h, w]))
        mask = _box_mask(h, w, cy - size // 2, cx - size // 2, size, size)
        return jnp.where(mask, jnp.asarray(fill, image.dtype), image)

    return _per_example(one, key, images)


def random_erasing(
    key: chex.PRNGKey,
    images: chex.Array,
    p: float = 0.5,
    scale: tuple[float, float] = (0.02, 0.33),
    ratio: tuple[float, float] = (0.3, 3.3),
    value: float | str = "random",
) -> jax.Array:
    """With probability ``p``, erases a random rectangle of each image.

    Area fraction ``s ~ U(scale)``, aspect ``r``: ``log r ~ U(log ratio)``; the box is
    ``round(sqrt(s H W r))`` x ``round(sqrt(s H W / r))`` (clipped to the image), placed
    uniformly inside it. ``value="random"`` fills with U(0, 1) noise per pixel and channel,
    a number fills with that constant.

    References:
      Zhong et al., "Random Erasing Data Augmentation", AAAI 2020.
    """
    check_in_range("p", p, 0.0, 1.0, high_closed=True)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < scale[0] <= scale[1] <= 1, got {scale=}.")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < ratio[0] <= ratio[1], got {ratio=}.")
    if isinstance(value, str) and value != "random":
        raise ValueError(f"value must be 'random' or a number, got {value=}.")

    def one(k, image):
        h, w, _ = image.shape
        k_apply, k_s, k_r, k_y, k_x, k_v = jax.random.split(k, 6)
        area = h * w * jax.random.uniform(k_s, (), jnp.float32, scale[0], scale[1])
        log_r = jax.random.uniform(k_r, (), jnp.float32, math.log(ratio[0]), math.log(ratio[1]))
        r = jnp.exp(log_r)
        bh = jnp.clip(jnp.round(jnp.sqrt(area * r)), 1, h).astype(jnp.int32)
        bw = jnp.clip(jnp.round(jnp.sqrt(area / r)), 1, w).astype(jnp.int32)
        top = jax.random.randint(k_y, (), 0, h - bh + 1)
        left = jax.random.randint(k_x, (), 0, w - bw + 1)
        mask = _box_mask(h, w, top, left, bh, bw) & jax.random.bernoulli(k_apply, p)
        if value == "random":
            fill = jax.random.uniform(k_v, image.shape, jnp.float32).astype(image.dtype)
        else:
            fill = jnp.full(image.shape, value, image.dtype)
        return jnp.where(mask, fill, image)

    return _per_example(one, key, images)


def _soft_labels(labels: chex.Array, num_classes: int | None) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.ndim == 1:
        if num_classes is None:
            raise ValueError("integer labels need num_classes (or pass one-hot labels).")
        return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return labels if jnp.issubdtype(labels.dtype, jnp.floating) else labels.astype(jnp.float32)


def _partners(key: chex.PRNGKey, n: int) -> jax.Array:
    return jax.random.permutation(key, n)


def mixup(
    key: chex.PRNGKey,
    images: chex.Array,
    labels: chex.Array,
    alpha: float = 0.2,
    *,
    num_classes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mixes each example with a random partner of the batch: ``lam x_i + (1 - lam) x_j``.

    ``lam ~ Beta(alpha, alpha)`` per example; labels (one-hot/soft, or integers with
    ``num_classes``) mix with the same ``lam``, so each mixed label still sums to 1.

    Returns:
      ``(images, labels)``, labels as float soft labels ``(batch, classes)``.

    References:
      Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
    """
    check_positive("alpha", alpha)
    images = jnp.asarray(images)
    labels = _soft_labels(labels, num_classes)
    k_perm, k_lam = jax.random.split(key)
    j = _partners(k_perm, images.shape[0])
    lam = jax.random.beta(k_lam, alpha, alpha, (images.shape[0],), jnp.float32)
    li = lam.astype(images.dtype)[:, None, None, None]
    mixed = li * images + (1 - li) * images[j]
    ll = lam.astype(labels.dtype)[:, None]
    return mixed, ll * labels + (1 - ll) * labels[j]


mixup.mixes_labels = True  # type: ignore[attr-defined]


def cutmix(
    key: chex.PRNGKey,
    images: chex.Array,
    labels: chex.Array,
    alpha: float = 1.0,
    *,
    num_classes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Pastes a box from a random partner into each example; labels mix by the pasted area.

    ``lam ~ Beta(alpha, alpha)``; the box is ``H sqrt(1 - lam)`` x ``W sqrt(1 - lam)`` around
    a uniform centre, clipped at the borders. The label weight is recomputed from the area
    actually pasted: ``y = (1 - a) y_i + a y_j`` with ``a = pasted pixels / (H W)``.

    Returns:
      ``(images, labels)``, labels as float soft labels ``(batch, classes)``.

    References:
      Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
      Features", ICCV 2019.
    """
    check_positive("alpha", alpha)
    images = jnp.asarray(images)
    labels = _soft_labels(labels, num_classes)
    n, h, w, _ = images.shape
    k_perm, k_box = jax.random.split(key)
    j = _partners(k_perm, n)

    def one(k, image, other):
        k_lam, k_y, k_x = jax.random.split(k, 3)
        cut = jnp.sqrt(1 - jax.random.beta(k_lam, alpha, alpha, (), jnp.float32))
        bh = jnp.round(h * cut).astype(jnp.int32)
        bw = jnp.round(w * cut).astype(jnp.int32)
        cy = jax.random.randint(k_y, (), 0, h)
        cx = jax.random.randint(k_x, (), 0, w)
        mask = _box_mask(h, w, cy - bh // 2, cx - bw // 2, bh, bw)
        area = jnp.mean(mask.astype(jnp.float32))
        return jnp.where(mask, other, image), area

    mixed, area = _per_example(one, k_box, images, images[j])
    a = area.astype(labels.dtype)[:, None]
    return mixed, (1 - a) * labels + a * labels[j]


cutmix.mixes_labels = True  # type: ignore[attr-defined]


def compose(*transforms: Transform) -> Transform:
    """Chains augmentations into one ``fn(key, images, labels=None)``, each with its own key.

    Image-only transforms take ``(key, images)``; ``mixup``/``cutmix`` (and partials of them)
    also take and return labels. Bind hyperparameters with ``functools.partial``.

    Example:
      >>> from functools import partial
      >>> import jax, jax.numpy as jnp
      >>> from dlopt.data import compose, cutmix, random_flip
      >>> augment = compose(random_flip, partial(cutmix, alpha=1.0, num_classes=10))
      >>> images, labels = jnp.zeros((8, 32, 32, 3)), jnp.arange(8) % 10
      >>> images, labels = jax.jit(augment)(jax.random.key(0), images, labels)
      >>> images.shape, labels.shape
      ((8, 32, 32, 3), (8, 10))
    """

    def mixes(t: Transform) -> bool:
        return bool(getattr(getattr(t, "func", t), "mixes_labels", False))

    def apply(key: chex.PRNGKey, images: chex.Array, labels: chex.Array | None = None):
        if labels is None and any(mixes(t) for t in transforms):
            raise ValueError("compose: a label-mixing transform (mixup, cutmix) needs labels.")
        keys = jax.random.split(key, max(len(transforms), 1))
        for k, t in zip(keys, transforms, strict=False):
            if mixes(t):
                images, labels = t(k, images, labels)
            else:
                images = t(k, images)
        return images if labels is None else (images, labels)

    return apply
