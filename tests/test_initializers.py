"""Initializers: same draws as jax.nn.initializers, sample statistics, torch's gains and fans,
orthogonality, dirac/identity maps, Flax drop-in use, and the classic activation experiment.
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from dlopt import initializers as I  # noqa: N812

KEY = jax.random.key(0)
JNI = jax.nn.initializers

# (ours, jax's) for the same distribution; jax's zeros/ones are the init functions themselves.
PARITY = {
    "zeros": (I.zeros(), JNI.zeros),
    "ones": (I.ones(), JNI.ones),
    "constant": (I.constant(-0.3), JNI.constant(-0.3)),
    "uniform": (I.uniform(0.5), JNI.uniform(0.5)),
    "normal": (I.normal(0.2), JNI.normal(0.2)),
    "truncated_normal": (
        I.truncated_normal(0.2, -1.0, 3.0),
        JNI.truncated_normal(0.2, None, -1.0, 3.0),
    ),
    "glorot_uniform": (I.glorot_uniform(), JNI.glorot_uniform()),
    "glorot_normal": (I.glorot_normal(), JNI.glorot_normal()),
    "he_uniform": (I.he_uniform(), JNI.he_uniform()),
    "he_normal": (I.he_normal(), JNI.he_normal()),
    "lecun_uniform": (I.lecun_uniform(), JNI.lecun_uniform()),
    "lecun_normal": (I.lecun_normal(), JNI.lecun_normal()),
    "fan_geo_normal": (
        I.variance_scaling(0.7, "fan_geo_avg", "normal"),
        JNI.variance_scaling(0.7, "fan_geo_avg", "normal"),
    ),
    "fan_out_batch_axis": (
        I.variance_scaling(1.3, "fan_out", "uniform", batch_axis=0),
        JNI.variance_scaling(1.3, "fan_out", "uniform", batch_axis=0),
    ),
    "orthogonal": (I.orthogonal(1.5), JNI.orthogonal(1.5)),
    "orthogonal_axis0": (I.orthogonal(column_axis=0), JNI.orthogonal(column_axis=0)),
}


DENSE, CONV = (512, 384), (3, 3, 64, 96)  # fan_in 512 / 576, fan_out 384 / 864


@pytest.mark.parametrize("name", list(PARITY))
def test_same_draws_as_jax(name):
    """Bit-for-bit (to rounding) jax's draws; the shapes are the statistics tests' (cached),
    smaller for orthogonal (a QR per shape)."""
    ours, theirs = PARITY[name]
    shapes = [(48, 32), (3, 3, 4, 8)] if name.startswith("orthogonal") else [DENSE, CONV]
    for shape in shapes:
        a = ours(KEY, shape)
        with jax.numpy_dtype_promotion("standard"):
            b = theirs(KEY, shape)
        assert a.dtype == jnp.float32 and a.shape == shape
        chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["he_normal", "glorot_uniform", "orthogonal"])
def test_bf16_kernels(name):
    ours = PARITY[name][0]
    a = ours(KEY, (6, 4), jnp.bfloat16)
    assert a.dtype == jnp.bfloat16
    reference = ours(KEY, (6, 4), jnp.float32)
    if name != "orthogonal":  # drawn in bf16 directly, as jax does
        with jax.numpy_dtype_promotion("standard"):
            reference = PARITY[name][1](KEY, (6, 4), jnp.bfloat16)
    chex.assert_trees_all_close(a.astype(jnp.float32), reference.astype(jnp.float32), rtol=1e-2)


def test_aliases():
    assert I.xavier_uniform is I.glorot_uniform and I.xavier_normal is I.glorot_normal
    assert I.kaiming_uniform is I.he_uniform and I.kaiming_normal is I.he_normal


# ----------------------------------------------------------------------- statistics


def _std(name: str, shape) -> float:
    fan_in, fan_out = I.compute_fans(shape)
    n = {"glorot": (fan_in + fan_out) / 2, "he": fan_in / 2, "lecun": fan_in}[name]
    return math.sqrt(1.0 / n)


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv"])
@pytest.mark.parametrize("family", ["glorot", "he", "lecun"])
@pytest.mark.parametrize("distribution", ["uniform", "normal"])
def test_sample_std_and_bounds(shape, family, distribution):
    w = np.asarray(getattr(I, f"{family}_{distribution}")()(KEY, shape), np.float64)
    std = _std(family, shape)
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    assert abs(w.mean()) < 0.02 * std
    bound = math.sqrt(3) * std if distribution == "uniform" else 2 * std / I.TRUNCATED_NORMAL_STD
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    assert np.abs(w).max() >= 0.98 * bound  # the support is filled up to the bound


@pytest.mark.parametrize(
    ("init", "std"),
    [(I.normal(0.3), 0.3), (I.truncated_normal(0.3), 0.3 * I.TRUNCATED_NORMAL_STD),
     (I.uniform(2.0), 2.0 / math.sqrt(12))],
)  # fmt: skip
def test_plain_distribution_std(init, std):
    np.testing.assert_allclose(np.std(np.asarray(init(KEY, DENSE))), std, rtol=0.02)


NONLINEARITIES = [("linear", None), ("sigmoid", None), ("tanh", None), ("relu", None),
                  ("leaky_relu", None), ("leaky_relu", 0.2), ("selu", None)]  # fmt: skip


@pytest.mark.parametrize(("nonlinearity", "param"), NONLINEARITIES)
def test_gain_matches_torch(nonlinearity, param):
    expected = torch.nn.init.calculate_gain(nonlinearity, param)
    assert I.calculate_gain(nonlinearity, param) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("nonlinearity", "param"), [("tanh", None), ("leaky_relu", 0.2)])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_kaiming_std_matches_torch(nonlinearity, param, mode):
    ours = np.asarray(
        I.kaiming_normal(nonlinearity=nonlinearity, negative_slope=param, mode=mode)(KEY, CONV)
    )
    theirs = torch.empty(CONV[3], CONV[2], CONV[0], CONV[1])  # torch's (out, in, H, W)
    torch.manual_seed(0)
    torch.nn.init.kaiming_normal_(theirs, a=param or 0.0, mode=mode, nonlinearity=nonlinearity)
    fan = CONV[0] * CONV[1] * (CONV[2] if mode == "fan_in" else CONV[3])
    std = torch.nn.init.calculate_gain(nonlinearity, param) / math.sqrt(fan)
    np.testing.assert_allclose(ours.std(), std, rtol=0.02)
    np.testing.assert_allclose(theirs.std().item(), std, rtol=0.02)


@pytest.mark.parametrize("shape", [(7, 5), (3, 7, 5), (3, 3, 7, 5), (2, 3, 3, 7, 5)])
def test_fans_match_torch(shape):
    torch_layout = (shape[-1], shape[-2], *shape[:-2])  # (out, in, *spatial)
    fans = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(torch_layout))
    assert I.compute_fans(shape) == fans


# ---------------------------------------------------------------------- orthogonal


@pytest.mark.parametrize("shape", [(32, 16), (16, 32), (12, 12), (3, 3, 4, 16), (2, 3, 40)])
def test_orthogonal(shape):
    w = I.orthogonal(scale=2.0)(KEY, shape)
    m = np.asarray(w, np.float64).reshape(-1, shape[-1])  # rows: all axes but the last
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram / 4.0, np.eye(gram.shape[0]), atol=1e-5)


def test_orthogonal_rejects_vectors():
    with pytest.raises(ValueError, match="rank >= 2"):
        I.orthogonal()(KEY, (4,))


# ------------------------------------------------------------------ dirac, identity


def _conv(x, w):
    spatial = "DHW"[3 - (w.ndim - 2) :]
    dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    return jax.lax.conv_general_dilated(x, w, (1,) * (w.ndim - 2), "SAME", dimension_numbers=dims)


@pytest.mark.parametrize(
    "kernel", [(3, 4, 4), (3, 3, 4, 4), (4, 4, 4, 4), (2, 5, 4, 4), (3, 3, 3, 4, 4)]
)
def test_dirac_conv_returns_its_input(kernel):
    x = jax.random.normal(jax.random.key(1), (2, *([5] * (len(kernel) - 2)), kernel[-2]))
    np.testing.assert_allclose(_conv(x, I.dirac()(KEY, kernel)), x, atol=1e-6)


def test_dirac_more_outputs_copies_the_inputs_then_zeros():
    x = jax.random.normal(jax.random.key(1), (1, 5, 5, 2))
    y = _conv(x, I.dirac()(KEY, (3, 3, 2, 3)))
    np.testing.assert_allclose(y[..., :2], x, atol=1e-6)
    np.testing.assert_array_equal(y[..., 2], 0.0)


def test_dirac_in_flax_conv_is_identity():
    layer = nnx.Conv(3, 3, (3, 3), kernel_init=I.dirac(), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (1, 6, 6, 3))
    np.testing.assert_allclose(layer(x), x, atol=1e-6)


def test_identity():
    np.testing.assert_array_equal(I.identity(2.0)(KEY, (3, 4)), 2.0 * np.eye(3, 4))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: I.dirac()(KEY, (3, 3)), "rank 3 to 5"),
        (lambda: I.identity()(KEY, (3, 3, 3)), "2-D"),
        (lambda: I.variance_scaling(1.0, "fan_sum", "normal"), "mode="),
        (lambda: I.variance_scaling(1.0, "fan_in", "cauchy"), "distribution="),
        (lambda: I.variance_scaling(0.0, "fan_in", "normal"), "scale="),
        (lambda: I.normal(-1.0), "stddev="),
        (lambda: I.he_normal(nonlinearity="gelu"), "nonlinearity="),
        (lambda: I.he_normal()(KEY, (4,)), "rank >= 2"),
        (lambda: I.normal()(KEY, (4,), jnp.int32), "dtype="),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------- Flax drop-in


def test_drop_in_for_flax_kernel_init():
    x = jnp.ones((1, 6))
    ours = nn.Dense(5, kernel_init=I.he_normal()).init(KEY, x)
    theirs = nn.Dense(5, kernel_init=JNI.he_normal()).init(KEY, x)
    chex.assert_trees_all_equal(ours, theirs)
    layer = nnx.Linear(6, 5, kernel_init=I.glorot_uniform(), rngs=nnx.Rngs(0))
    assert np.abs(np.asarray(layer.kernel[...])).max() <= math.sqrt(6 / 11)


# --------------------------------------------------------- the activation experiment

WIDTH, DEPTH, BATCH = 256, 10, 128


@jax.jit
def _activation_stds(kernels, x, use_relu):
    """Std of each layer's activations in a bias-free MLP (tanh or ReLU)."""

    def layer(h, w):
        h = h @ w
        h = jnp.where(use_relu, jax.nn.relu(h), jnp.tanh(h))
        return h, (jnp.std(h), jnp.max(jnp.std(h, axis=1)))

    return jax.lax.scan(layer, x, kernels)[1]


def _kernels(init):
    keys = jax.random.split(jax.random.key(3), DEPTH)
    return jnp.stack([init(k, (WIDTH, WIDTH)) for k in keys])


X = jax.random.normal(jax.random.key(4), (BATCH, WIDTH))


@pytest.mark.parametrize(
    ("init", "relu"),
    [(I.he_normal(), True), (I.glorot_uniform(), False)],
    ids=["he_relu", "glorot_tanh"],
)
def test_good_init_keeps_activation_scale_through_depth(init, relu):
    stds = np.asarray(_activation_stds(_kernels(init), X, relu)[0])
    # He/ReLU stays at ~0.8 over 10 layers; Glorot/tanh decays slowly (0.63 -> 0.23 here,
    # the ~1/sqrt(depth) of tanh's saturating regime), far from the vanishing contrast below.
    assert np.all(stds > 0.15) and np.all(stds < 2.0), stds
    assert 0.25 < stds[-1] / stds[0] < 1.5, stds
    # The contrast: too small a scale vanishes, too large explodes (ReLU) or saturates (tanh).
    small = np.asarray(_activation_stds(_kernels(I.normal(0.01)), X, relu)[0])
    assert small[-1] < 1e-4 * small[0], small
    if relu:
        big = np.asarray(_activation_stds(_kernels(I.normal(1.0)), X, relu)[0])
        assert big[-1] > 1e4 * big[0], big


def test_zeros_keep_every_unit_identical():
    """With zero (or any constant) weights every unit of a layer computes the same thing, in
    the forward pass and after gradient steps: symmetry is never broken."""
    x, y = X[:16], jnp.sin(X[:16, :1])

    def loss(ws):
        h = x
        for w in ws[:-1]:
            h = jnp.tanh(h @ w + 0.1)
        return jnp.mean(jnp.square(h @ ws[-1] - y))

    for init in (I.zeros(), I.constant(0.05)):
        ws = [init(KEY, (WIDTH, 8)), init(KEY, (8, 8)), init(KEY, (8, 1))]
        for _ in range(3):
            ws = [w - 0.5 * g for w, g in zip(ws, jax.grad(loss)(ws), strict=True)]
        h = x
        for w in ws[:-1]:
            h = jnp.tanh(h @ w + 0.1)
            np.testing.assert_allclose(h, jnp.broadcast_to(h[:, :1], h.shape), rtol=1e-6, atol=1e-6)
    stds = _activation_stds(_kernels(I.zeros()), X, False)[1]  # std across units, per example
    np.testing.assert_array_equal(stds, 0.0)
