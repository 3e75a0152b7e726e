"""Splits, feature scalers and image helpers.

The split is numpy (it runs once, on the host); the scalers and image helpers are pure JAX,
jit-able, and a fitted scaler is a pytree, so it can be passed through ``jax.jit`` or saved
with the rest of a training state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core.validation import check_in_range, check_positive

# ITU-R BT.601 luma weights, as PIL, torchvision and tf.image use them.
_LUMA = (0.299, 0.587, 0.114)


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``weights`` (Hamilton's method)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def train_val_test_split(
    x: Any,
    y: Any,
    val: float = 0.15,
    test: float = 0.15,
    stratify: bool = True,
    seed: int = 0,
) -> tuple[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]]:
    """Splits ``(x, y)`` into shuffled train, validation and test parts, stratified by ``y``.

    ``n_test = ceil(test * n)`` and ``n_val = ceil(val * n)`` (scikit-learn's rounding);
    the rest is training data. With ``stratify``, each class ``c`` with ``n_c`` samples gives
    ``n_test * n_c / n`` test and ``n_val * n_c / n`` validation samples, rounded to integers
    that add up exactly (largest remainder), so every split keeps the class proportions to
    within one sample per class. Every sample lands in exactly one split.

    Args:
      x: features, an array (numpy or JAX) with samples on the first axis.
      y: labels, shape ``(n,)``; class ids when ``stratify``.
      val: validation fraction in [0, 1).
      test: test fraction in [0, 1); ``val + test < 1``.
      stratify: preserve the class proportions of ``y`` in every split.
      seed: seed of the shuffle; the same seed gives the same split.

    Returns:
      ``((x_train, y_train), (x_val, y_val), (x_test, y_test))``, numpy arrays, each split
      in shuffled order.

    Example:
      >>> import numpy as np
      >>> from dlopt.data import train_val_test_split
      >>> x, y = np.arange(20.0).reshape(10, 2), np.array([0, 1] * 5)
      >>> (xt, yt), (xv, yv), (xs, ys) = train_val_test_split(x, y, val=0.2, test=0.2)
      >>> len(yt), len(yv), len(ys)
      (6, 2, 2)

    References:
      scikit-learn ``train_test_split`` / ``StratifiedShuffleSplit``.
    """
    check_in_range("val", val, 0.0, 1.0)
    check_in_range("test", test, 0.0, 1.0)
    if val + test >= 1:
        raise ValueError(f"val + test must be < 1 to leave training data, got {val=}, {test=}.")
    x, y = np.asarray(x), np.asarray(y)
    n = len(y)
    if len(x) != n:
        raise ValueError(f"x and y must have the same length, got {len(x)} and {n}.")
    n_test, n_val = math.ceil(test * n), math.ceil(val * n)
    if n_test + n_val >= n:
        raise ValueError(f"{n} samples leave no training data with {val=} and {test=}.")
    rng = np.random.default_rng(seed)
    if stratify:
        classes, y_index = np.unique(y, return_inverse=True)
        class_counts = np.bincount(y_index)
        test_counts = _largest_remainder(n_test, class_counts.astype(np.float64))
        val_counts = _largest_remainder(n_val, class_counts.astype(np.float64))
        parts: list[list[np.ndarray]] = [[], [], []]
        for c in range(len(classes)):
            members = rng.permutation(np.flatnonzero(y_index == c))
            # Never take more than the class has (tiny classes): test first, then val.
            t = min(test_counts[c], len(members))
            v = min(val_counts[c], len(members) - t)
            parts[2].append(members[:t])
            parts[1].append(members[t : t + v])
            parts[0].append(members[t + v :])
        train_idx, val_idx, test_idx = (rng.permutation(np.concatenate(p)) for p in parts)
    else:
        perm = rng.permutation(n)
        test_idx, val_idx, train_idx = (
            perm[:n_test],
            perm[n_test : n_test + n_val],
            perm[n_test + n_val :],
        )
    return tuple((x[i], y[i]) for i in (train_idx, val_idx, test_idx))  # type: ignore[return-value]


def _lead(a: jax.Array, x: jax.Array) -> jax.Array:
    """``a`` cast to ``x``'s dtype with leading unit axes to ``x``'s rank (explicit broadcast)."""
    return a.astype(x.dtype).reshape((1,) * (x.ndim - a.ndim) + a.shape)


def _float(x: Any) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Scaler:
    """``transform(x) = (x - offset) / scale``; a pytree of its two arrays."""

    offset: jax.Array | None = None
    scale: jax.Array | None = None

    def _check_fitted(self) -> None:
        if self.offset is None or self.scale is None:
            raise ValueError(
                f"this {type(self).__name__} is not fitted; use "
                f"{type(self).__name__}().fit(x_train), which returns the fitted scaler."
            )

    def transform(self, x: chex.Array) -> jax.Array:
        """Scales ``x`` with the statistics fitted on the training data."""
        self._check_fitted()
        x = _float(x)
        return (x - _lead(self.offset, x)) / _lead(self.scale, x)

    def inverse_transform(self, x: chex.Array) -> jax.Array:
        """Undoes :meth:`transform`."""
        self._check_fitted()
        x = _float(x)
        return x * _lead(self.scale, x) + _lead(self.offset, x)

    def fit_transform(self, x: chex.Array) -> tuple[Any, jax.Array]:
        """``(fitted, fitted.transform(x))``."""
        fitted = self.fit(x)  # type: ignore[attr-defined]
        return fitted, fitted.transform(x)


def _safe_scale(scale: jax.Array) -> jax.Array:
    """Constant features get scale 1 (as scikit-learn does), so nothing divides by zero."""
    return jnp.where(scale > jnp.finfo(scale.dtype).eps * 10, scale, jnp.ones_like(scale))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Standardizer(_Scaler):
    """Scales features to mean 0 and standard deviation 1, with statistics of the train split.

    ``fit``: ``mean = mean(x, axis)``, ``std = sqrt(mean((x - mean)^2, axis))`` (ddof 0), and
    ``std = 1`` for constant features. ``transform(x) = (x - mean) / std``. The fitted scaler
    is a pytree (leaves ``offset`` = mean and ``scale`` = std).

    Example:
      >>> import numpy as np
      >>> from dlopt.data import Standardizer
      >>> scaler = Standardizer().fit(np.array([[0.0, 10.0], [4.0, 10.0]]))
      >>> print(scaler.mean, scaler.std)   # the second feature is constant: std 1
      [ 2. 10.] [2. 1.]
      >>> print(scaler.transform(np.array([[2.0, 11.0], [6.0, 10.0]])))  # train statistics
      [[0. 1.]
       [2. 0.]]

    References:
      scikit-learn ``StandardScaler``.
    """

    def fit(self, x: chex.Array, axis: int | tuple[int, ...] = 0) -> Standardizer:
        """Returns a scaler fitted to ``x``, reducing over ``axis`` (the sample axis)."""
        x = _float(x)
        mean = jnp.mean(x, axis=axis)
        std = jnp.sqrt(jnp.mean(jnp.square(x - jnp.expand_dims(mean, axis)), axis=axis))
        return Standardizer(offset=mean, scale=_safe_scale(std))

    @property
    def mean(self) -> jax.Array | None:
        return self.offset

    @property
    def std(self) -> jax.Array | None:
        return self.scale


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MinMaxScaler(_Scaler):
    """Scales features to [0, 1] with the minimum and maximum of the training split.

    ``transform(x) = (x - min) / (max - min)``, with ``max - min = 1`` for constant features.
    Validation and test values outside the training range land outside [0, 1].

    Example:
      >>> import numpy as np
      >>> from dlopt.data import MinMaxScaler
      >>> scaler = MinMaxScaler().fit(np.array([[0.0, 10.0], [4.0, 10.0]]))
      >>> print(scaler.transform(np.array([[1.0, 10.0], [8.0, 12.0]])))  # 8 is out of range
      [[0.25 0.  ]
       [2.   2.  ]]

    References:
      scikit-learn ``MinMaxScaler``.
    """

    def fit(self, x: chex.Array, axis: int | tuple[int, ...] = 0) -> MinMaxScaler:
        """Returns a scaler fitted to ``x``, reducing over ``axis`` (the sample axis)."""
        x = _float(x)
        low = jnp.min(x, axis=axis)
        return MinMaxScaler(offset=low, scale=_safe_scale(jnp.max(x, axis=axis) - low))


def to_float(images: chex.Array) -> jax.Array:
    """uint8 images in 0..255 -> float32 in [0, 1]; floating images pass through unchanged."""
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    return images.astype(jnp.float32) / jnp.float32(255.0)


def channel_stats(images: chex.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel ``(mean, std)`` of an NHWC batch (fit on the training images only)."""
    images = to_float(images)
    return jnp.mean(images, axis=(0, 1, 2)), jnp.std(images, axis=(0, 1, 2))


def normalize_images(images: chex.Array, mean: chex.Array, std: chex.Array) -> jax.Array:
    """Per-channel normalization of NHWC images: ``(image - mean[c]) / std[c]``.

    uint8 images are first scaled to [0, 1] by :func:`to_float`, so ``mean``/``std`` are in
    that unit (e.g. CIFAR-10's ``(0.491, 0.482, 0.447)``, ``(0.247, 0.243, 0.262)``).
    """
    images = to_float(images)
    mean = jnp.asarray(mean).astype(images.dtype).reshape(-1)
    std = jnp.asarray(std).astype(images.dtype).reshape(-1)
    if mean.shape[0] != images.shape[-1] or std.shape[0] != images.shape[-1]:
        raise ValueError(
            f"mean and std need one value per channel ({images.shape[-1]}), got "
            f"mean.shape={mean.shape}, std.shape={std.shape}."
        )
    return (images - _lead(mean, images)) / _lead(std, images)


def to_grayscale(images: chex.Array) -> jax.Array:
    """RGB NHWC images -> one luma channel ``0.299 R + 0.587 G + 0.114 B``, shape ``(..., 1)``.

    Single-channel input passes through. Integer images come back as floats in their own range.
    """
    images = jnp.asarray(images)
    if images.shape[-1] == 1:
        return images
    if images.shape[-1] != 3:
        raise ValueError(f"to_grayscale needs 1 or 3 channels, got shape {images.shape}.")
    x = _float(images)
    weights = jnp.asarray(_LUMA, x.dtype)
    return jnp.sum(x * _lead(weights, x), axis=-1, keepdims=True)


def resize(
    images: chex.Array, height: int, width: int, method: str = "bilinear", antialias: bool = True
) -> jax.Array:
    """Resizes NHWC images to ``(height, width)`` with ``jax.image.resize``."""
    check_positive("height", height)
    check_positive("width", width)
    x = _float(images)
    shape = (*x.shape[:-3], int(height), int(width), x.shape[-1])
    return jax.image.resize(x, shape, method=method, antialias=antialias)
