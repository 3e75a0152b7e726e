"""Weight initializers: factories returning ``init(key, shape, dtype=jnp.float32) -> Array``.

Every initializer here is a factory (call it, then pass the result), a drop-in for Flax's
``kernel_init=``: ``nn.Dense(128, kernel_init=dlopt.initializers.he_normal())``. The random
ones draw exactly what ``jax.nn.initializers`` draws for the same key (same distributions,
same calls), so switching between the two changes no number.

Fans follow the kernel layouts of Flax: dense ``(in, out)`` and conv ``(*spatial, in, out)``,
with ``fan_in = in * prod(spatial)`` and ``fan_out = out * prod(spatial)``.

References:
    Glorot & Bengio, 2010, "Understanding the difficulty of training deep feedforward neural
    networks"; He et al., 2015, "Delving Deep into Rectifiers"; LeCun et al., 1998,
    "Efficient BackProp"; Saxe et al., 2014, "Exact solutions to the nonlinear dynamics of
    learning in deep linear neural networks".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import validation

Initializer = Callable[..., jax.Array]  # init(key, shape, dtype=jnp.float32) -> Array
Axes = int | Sequence[int]

# The standard deviation of a standard normal truncated to [-2, 2].
TRUNCATED_NORMAL_STD = 0.87962566103423978


def _check_float(dtype: Any) -> None:
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"initializers need a real floating dtype, got dtype={dtype!r}.")


def zeros() -> Initializer:
    """All zeros. Every unit computes the same thing: symmetry is never broken.

    Example:
        >>> import jax, dlopt
        >>> dlopt.initializers.zeros()(jax.random.key(0), (2,))
        Array([0., 0.], dtype=float32)
    """
    return constant(0.0)


def ones() -> Initializer:
    """All ones (e.g. a normalization layer's scale)."""
    return constant(1.0)


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``.

    Example:
        >>> import jax, dlopt
        >>> dlopt.initializers.constant(0.1)(jax.random.key(0), (2,))
        Array([0.1, 0.1], dtype=float32)
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, value, dtype)

    return init


def uniform(scale: float = 1e-2) -> Initializer:
    """``U[0, scale)``, as ``jax.nn.initializers.uniform``."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        _check_float(dtype)
        return jax.random.uniform(key, shape, dtype) * jnp.asarray(scale, dtype)

    return init


def normal(stddev: float = 1e-2) -> Initializer:
    """``N(0, stddev^2)``, as ``jax.nn.initializers.normal``."""
    validation.check_non_negative("stddev", stddev)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        _check_float(dtype)
        return jax.random.normal(key, shape, dtype) * jnp.asarray(stddev, dtype)

    return init


def truncated_normal(stddev: float = 1e-2, lower: float = -2.0, upper: float = 2.0) -> Initializer:
    """``stddev * z`` with ``z`` a standard normal truncated to ``[lower, upper]``.

    As ``jax.nn.initializers.truncated_normal``: ``stddev`` is that of the *untruncated*
    normal (the samples' std is ``0.8796 * stddev`` for the default bounds); the
    variance-scaling initializers correct for this.
    """
    validation.check_non_negative("stddev", stddev)
    if not lower < upper:
        raise ValueError(f"truncated_normal needs lower < upper, got {lower=}, {upper=}.")

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        _check_float(dtype)
        z = jax.random.truncated_normal(key, lower, upper, shape, dtype)
        return z * jnp.asarray(stddev, dtype)

    return init


def compute_fans(
    shape: Sequence[int], in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()
) -> tuple[float, float]:
    """``(fan_in, fan_out)`` of a kernel; the axes in none of the arguments are its
    receptive field (a conv's spatial axes).

    .. math:: \\text{fan\\_in} = n_{in} \\prod \\text{spatial}, \\qquad
        \\text{fan\\_out} = n_{out} \\prod \\text{spatial}

    Example:
        >>> import dlopt
        >>> dlopt.initializers.compute_fans((3, 3, 16, 32))  # conv (H, W, in, out)
        (144.0, 288.0)
    """
    shape = tuple(shape)
    if len(shape) < 2 and in_axis == -2:
        raise ValueError(
            f"fans need a kernel of rank >= 2 (dense (in, out) or conv (..., in, out)), got "
            f"shape={shape}. Pass in_axis/out_axis for other layouts."
        )

    def size(axes: Axes) -> int:
        return shape[axes] if isinstance(axes, int) else math.prod(shape[a] for a in axes)

    in_size, out_size, batch_size = size(in_axis), size(out_axis), size(batch_axis)
    receptive_field = math.prod(shape) / in_size / out_size / batch_size
    return in_size * receptive_field, out_size * receptive_field


MODES = ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")
DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
) -> Initializer:
    """Samples with variance ``scale / n``, ``n`` a fan chosen by ``mode``.

    .. math:: \\operatorname{Var}(w) = \\frac{s}{n}, \\quad n \\in \\{\\text{fan\\_in},
        \\text{fan\\_out}, \\tfrac{\\text{fan\\_in} + \\text{fan\\_out}}{2},
        \\sqrt{\\text{fan\\_in} \\cdot \\text{fan\\_out}}\\}

    ``"uniform"`` draws from ``U[-sqrt(3 s / n), sqrt(3 s / n)]``; ``"normal"`` from
    ``N(0, s / n)``; ``"truncated_normal"`` truncates at two standard deviations and rescales
    so the *samples'* std is ``sqrt(s / n)``. Same numbers as
    ``jax.nn.initializers.variance_scaling`` for real dtypes.

    Args:
        scale: ``s`` > 0 (the squared gain: 2 for ReLU, 1 for linear).
        mode: ``"fan_in"``, ``"fan_out"``, ``"fan_avg"`` or ``"fan_geo_avg"``.
        distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.
        in_axis, out_axis: the kernel's input and output axes (see `compute_fans`).
        batch_axis: axes of stacked independent kernels, ignored by the fans.

    Returns:
        ``init(key, shape, dtype=jnp.float32) -> Array``.

    Example:
        >>> import jax, dlopt
        >>> init = dlopt.initializers.variance_scaling(2.0, "fan_in", "normal")
        >>> w = init(jax.random.key(0), (256, 128))
        >>> round(float(w.std()), 3)  # sqrt(2 / 256) = 0.088
        0.089
    """
    validation.check_positive("scale", scale)
    validation.check_choice("mode", mode, MODES)
    validation.check_choice("distribution", distribution, DISTRIBUTIONS)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        _check_float(dtype)
        shape = tuple(shape)
        fan_in, fan_out = compute_fans(shape, in_axis, out_axis, batch_axis)
        n = {
            "fan_in": fan_in,
            "fan_out": fan_out,
            "fan_avg": (fan_in + fan_out) / 2,
            "fan_geo_avg": (fan_in * fan_out) ** 0.5,
        }[mode]
        variance = jnp.asarray(scale / n, dtype)
        if distribution == "truncated_normal":
            std = jnp.sqrt(variance) / jnp.asarray(TRUNCATED_NORMAL_STD, dtype)
            return jax.random.truncated_normal(key, -2, 2, shape, dtype) * std
        if distribution == "normal":
            return jax.random.normal(key, shape, dtype) * jnp.sqrt(variance)
        bound = jnp.sqrt(jnp.asarray(3, dtype) * variance)
        return jax.random.uniform(key, shape, dtype, -1) * bound

    return init


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain ``g`` that keeps activations' scale through a nonlinearity (torch's table).

    linear/conv/sigmoid: 1; tanh: 5/3; relu: sqrt(2); leaky_relu with slope ``a`` (default
    0.01): sqrt(2 / (1 + a^2)); selu: 3/4. Equal to ``torch.nn.init.calculate_gain``.

    Example:
        >>> import dlopt
        >>> dlopt.initializers.calculate_gain("tanh")
        1.6666666666666667
    """
    linear = ("linear", "identity", "conv1d", "conv2d", "conv3d", "sigmoid")
    linear += ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        try:
            slope = float(slope)
        except (TypeError, ValueError):
            raise ValueError(f"negative_slope must be a number, got {slope!r}.") from None
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4.0
    raise ValueError(
        f"unknown nonlinearity={nonlinearity!r}; use one of linear, sigmoid, tanh, relu, "
        "leaky_relu, selu."
    )


def glorot_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()) -> Initializer:
    """Glorot/Xavier uniform: ``U[-a, a]``, ``a = sqrt(6 / (fan_in + fan_out))``.

    For tanh and linear layers. Same as ``jax.nn.initializers.glorot_uniform`` and (in
    distribution) ``torch.nn.init.xavier_uniform_``.
    """
    return variance_scaling(1.0, "fan_avg", "uniform", in_axis, out_axis, batch_axis)


def glorot_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()) -> Initializer:
    """Glorot/Xavier normal: std ``sqrt(2 / (fan_in + fan_out))``, truncated at 2 std as in
    ``jax.nn.initializers.glorot_normal`` (torch's ``xavier_normal_`` does not truncate)."""
    return variance_scaling(1.0, "fan_avg", "truncated_normal", in_axis, out_axis, batch_axis)


def lecun_uniform(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()) -> Initializer:
    """LeCun uniform: ``U[-a, a]``, ``a = sqrt(3 / fan_in)`` (variance ``1 / fan_in``)."""
    return variance_scaling(1.0, "fan_in", "uniform", in_axis, out_axis, batch_axis)


def lecun_normal(in_axis: Axes = -2, out_axis: Axes = -1, batch_axis: Axes = ()) -> Initializer:
    """LeCun normal: std ``sqrt(1 / fan_in)``, truncated at 2 std (for SELU networks)."""
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis)


def _he(distribution, in_axis, out_axis, batch_axis, nonlinearity, negative_slope, mode):
    gain = calculate_gain(nonlinearity, negative_slope)
    return variance_scaling(gain**2, mode, distribution, in_axis, out_axis, batch_axis)


def he_uniform(
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    *,
    nonlinearity: str = "relu",
    negative_slope: float | None = None,
    mode: str = "fan_in",
) -> Initializer:
    """He/Kaiming uniform: ``U[-a, a]``, ``a = g sqrt(3 / fan_in)``, ``g`` = `calculate_gain`.

    With the defaults (ReLU, ``g^2 = 2``) the same as ``jax.nn.initializers.he_uniform``;
    ``nonlinearity``/``negative_slope``/``mode`` mean what they mean in
    ``torch.nn.init.kaiming_uniform_``.
    """
    return _he("uniform", in_axis, out_axis, batch_axis, nonlinearity, negative_slope, mode)


def he_normal(
    in_axis: Axes = -2,
    out_axis: Axes = -1,
    batch_axis: Axes = (),
    *,
    nonlinearity: str = "relu",
    negative_slope: float | None = None,
    mode: str = "fan_in",
) -> Initializer:
    """He/Kaiming normal: std ``g / sqrt(fan_in)``, ``g`` = `calculate_gain`, truncated at 2 std.

    .. math:: w \\sim \\mathcal{N}_{[-2\\sigma, 2\\sigma]}(0, \\sigma^2), \\quad
        \\sigma = g / \\sqrt{\\text{fan\\_in}}, \\quad g_{\\text{relu}} = \\sqrt{2}

    With the defaults the same as ``jax.nn.initializers.he_normal`` (torch's
    ``kaiming_normal_`` does not truncate; the std is the same).

    Example:
        >>> import jax, jax.numpy as jnp, flax.linen as nn, dlopt
        >>> layer = nn.Dense(64, kernel_init=dlopt.initializers.he_normal())
        >>> kernel = layer.init(jax.random.key(0), jnp.ones((1, 32)))["params"]["kernel"]
        >>> kernel.shape, round(float(kernel.std()), 2)  # sqrt(2 / 32) = 0.25
        ((32, 64), 0.25)
    """
    return _he(
        "truncated_normal", in_axis, out_axis, batch_axis, nonlinearity, negative_slope, mode
    )


xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
kaiming_uniform = he_uniform
kaiming_normal = he_normal


def orthogonal(scale: float = 1.0, column_axis: int = -1) -> Initializer:
    """A (semi-)orthogonal matrix from the QR decomposition of a Gaussian one, times ``scale``.

    The kernel is viewed as a matrix with ``shape[column_axis]`` columns and all other axes
    as rows; if there are at least as many rows as columns the columns are orthonormal
    (``W^T W = I``), otherwise the rows are (``W W^T = I``). Signs are fixed by ``diag(R)``
    so the draw is uniform (Haar). Same numbers as ``jax.nn.initializers.orthogonal`` in
    float32/float64; half-precision kernels are computed in float32 and cast (jax's QR
    has no bf16 kernel, so ``jax.nn.initializers.orthogonal`` fails there).

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> w = dlopt.initializers.orthogonal()(jax.random.key(0), (5, 3))
        >>> bool(jnp.allclose(w.T @ w, jnp.eye(3), atol=1e-5))
        True
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        _check_float(dtype)
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"orthogonal needs a shape of rank >= 2, got shape={shape}.")
        if 0 in shape:
            return jnp.zeros(shape, dtype)
        n_cols = shape[column_axis]
        n_rows = math.prod(shape) // n_cols
        # QR has no bf16/f16 kernel: draw and factor in float32, cast at the end.
        work = dtype if jnp.dtype(dtype) in (jnp.float32, jnp.float64) else jnp.float32
        z = jax.random.normal(key, (max(n_rows, n_cols), min(n_rows, n_cols)), work)
        q, r = jnp.linalg.qr(z)
        d = jnp.diagonal(r)
        q = q * jnp.where(d < 0, -jnp.ones_like(d), jnp.ones_like(d))[None, :]
        if n_rows < n_cols:
            q = q.T
        q = jnp.reshape(q, tuple(np.delete(np.array(shape), column_axis)) + (n_cols,))
        return (jnp.moveaxis(q, -1, column_axis) * jnp.asarray(scale, work)).astype(dtype)

    return init


def dirac() -> Initializer:
    """A conv kernel ``(*spatial, in, out)`` that is the identity map under "SAME" padding.

    ``w[c, ..., c, i, i] = 1`` for ``i < min(in, out)`` at the centre tap ``c = (k - 1) // 2``
    of each spatial axis (the tap "SAME" padding aligns with the output; ``k // 2`` for odd
    ``k``, as ``torch.nn.init.dirac_``), 0 elsewhere. With ``in == out`` the convolution
    returns its input, so deep conv stacks start as identities.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> w = dlopt.initializers.dirac()(jax.random.key(0), (3, 3, 2, 2))
        >>> w[1, 1]
        Array([[1., 0.],
               [0., 1.]], dtype=float32)
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key
        shape = tuple(shape)
        if not 3 <= len(shape) <= 5:
            raise ValueError(
                f"dirac needs a conv kernel (*spatial, in, out) of rank 3 to 5, got {shape=}."
            )
        centre = tuple((k - 1) // 2 for k in shape[:-2])
        kernel = np.zeros(shape, np.float32)
        diagonal = np.arange(min(shape[-2], shape[-1]))
        kernel[centre + (diagonal, diagonal)] = 1.0
        return jnp.asarray(kernel, dtype)

    return init


def identity(scale: float = 1.0) -> Initializer:
    """A dense kernel ``(in, out)`` equal to ``scale`` times the identity (``jnp.eye``;
    rectangular shapes get ones on the main diagonal), as ``torch.nn.init.eye_``."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        del key
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(f"identity needs a 2-D shape (in, out), got {shape=}.")
        return jnp.eye(*shape, dtype=dtype) * jnp.asarray(scale, dtype)

    return init
