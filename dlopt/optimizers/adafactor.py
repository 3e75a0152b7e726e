"""Adafactor: a second moment factored into row and column statistics (sublinear memory)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain
from dlopt.core.per_leaf import per_leaf
from dlopt.transforms.clipping import clip_by_block_rms
from dlopt.transforms.ema import ema
from dlopt.transforms.param_scale import param_block_scaling
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale, scale_by_learning_rate


def _decay_rate_pow(i: chex.Numeric, exponent: chex.Numeric = 0.8) -> chex.Array:
    """Adafactor's second-moment decay :math:`\\hat\\beta_{2,t} = 1 - t^{-c}`, ``t = i + 1``
    (added in float32: optax's int32 ``i + 1`` wraps to a negative ``t`` at the saturated
    count)."""
    t = jnp.asarray(i).astype(jnp.float32) + 1.0
    return 1.0 - t ** (-jnp.asarray(exponent).astype(jnp.float32))


def _factored_dims(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The axes (second largest, largest) to keep row/column statistics over, or None."""
    if not factored or len(shape) < 2:
        return None
    sorted_dims = np.argsort(shape)
    if shape[sorted_dims[-2]] < min_dim_size_to_factor:
        return None
    return int(sorted_dims[-2]), int(sorted_dims[-1])


def _zeros_without_axis(p: Any, axis: int, dtype: Any) -> chex.Array:
    """Zeros shaped (and sharded) like ``p`` summed over ``axis``; ``p`` may be abstract."""
    return jnp.zeros_like(jax.eval_shape(lambda x: jnp.sum(x, axis=axis), p), dtype=dtype)


def _placeholder(dtype: Any) -> chex.Array:
    return jnp.zeros((1,), dtype)


def _factored_leaf(
    g, v_row, v_col, v, leaf, out_dtype, *, epsilon, factored, min_dim, writer, decay
):
    f = numerics.compute_dtype(g.dtype, v_row.dtype, v_col.dtype, v.dtype)
    real = jnp.finfo(f).dtype  # the statistics are real for complex gradients
    g = g.astype(f)
    g_sq = numerics.abs_sq(g) + tree_lib.scalar_like(epsilon, jnp.zeros((), real))
    decay = jnp.asarray(decay).astype(real)
    dims = _factored_dims(g.shape, factored, min_dim)
    if dims is None:
        v = writer.put(numerics.ema(jnp.real(v).astype(real), g_sq, decay), v, leaf, 2)
        factor = jnp.real(v).astype(real) ** -0.5
        return (g * factor.astype(f)).astype(out_dtype), v_row, v_col, v
    d1, d0 = dims
    row = numerics.ema(jnp.real(v_row).astype(real), jnp.mean(g_sq, axis=d0), decay)
    col = numerics.ema(jnp.real(v_col).astype(real), jnp.mean(g_sq, axis=d1), decay)
    v_row, v_col = writer.put(row, v_row, leaf, 2), writer.put(col, v_col, leaf, 3)
    row, col = jnp.real(v_row).astype(real), jnp.real(v_col).astype(real)
    row_col_mean = jnp.mean(row, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
    row_factor = jnp.expand_dims((row / row_col_mean) ** -0.5, axis=d0)
    col_factor = jnp.expand_dims(col**-0.5, axis=d1)
    update = g * row_factor.astype(f) * col_factor.astype(f)
    return update.astype(out_dtype), v_row, v_col, v


def _check_factoring(decay_rate, offset_name, offset, min_dim_size_to_factor, eps_name, eps):
    validation.check_non_negative("decay_rate", decay_rate)
    injected = isinstance(offset, jax.Array) and offset.ndim == 0  # inject_hyperparams
    if not (injected and jnp.issubdtype(offset.dtype, jnp.integer)):
        validation.check_int(offset_name, offset)
    validation.check_int("min_dim_size_to_factor", min_dim_size_to_factor)
    validation.check_non_negative(eps_name, eps)


class FactoredState(NamedTuple):
    count: chex.Array  # int32 number of update steps, saturating
    v_row: chex.ArrayTree  # row statistics of factored leaves (a (1,) placeholder otherwise)
    v_col: chex.ArrayTree  # column statistics of factored leaves (placeholder otherwise)
    v: chex.ArrayTree  # the full second moment of leaves that are not factored


@per_leaf
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: chex.Numeric = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: chex.Numeric = 1e-30,
    decay_rate_fn: Callable[[chex.Numeric, chex.Numeric], chex.Numeric] = _decay_rate_pow,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Divides by a factored estimate of the gradients' root mean square (Adafactor's scaling).

    For a leaf whose two largest dims (rows :math:`i`, columns :math:`j`) both have at least
    ``min_dim_size_to_factor`` entries, only row and column means of :math:`g^2` are kept:

    .. math::
        \\hat\\beta_t = 1 - t^{-c}, \\quad
        R_t = \\hat\\beta_t R_{t-1} + (1 - \\hat\\beta_t)\\,\\operatorname{mean}_j(g_t^2 +
        \\epsilon_1), \\quad
        C_t = \\hat\\beta_t C_{t-1} + (1 - \\hat\\beta_t)\\,\\operatorname{mean}_i(g_t^2 +
        \\epsilon_1),

    .. math::
        \\hat V_t = \\frac{R_t C_t}{\\operatorname{mean}_i R_t}, \\qquad
        u_t = g_t / \\sqrt{\\hat V_t}

    (:math:`O(n + m)` memory for an :math:`n \\times m` matrix). Other leaves keep the full
    :math:`V_t = \\hat\\beta_t V_{t-1} + (1 - \\hat\\beta_t)(g_t^2 + \\epsilon_1)` and
    :math:`u_t = g_t / \\sqrt{V_t}`. :math:`\\hat\\beta_t` is
    ``decay_rate_fn(t - 1 - step_offset, decay_rate)``, by default :math:`1 - t^{-c}` with
    :math:`c` = ``decay_rate``. Complex gradients use :math:`|g|^2`.

    Deliberate difference from optax: steps before ``step_offset`` use the schedule's first
    value (optax raises :math:`t \\le 0` to a negative power: NaN), and so does the saturated
    int32 count (optax's ``count + 1`` wraps); ``params`` may be omitted (only the
    gradients' shapes are used).

    Args:
        factored: factor the second moment of leaves with two large enough dims.
        decay_rate: :math:`c` >= 0, the exponent of the default decay schedule.
        step_offset: int >= 0, the step the schedule starts from (for fine-tuning).
        min_dim_size_to_factor: int >= 0; factor only if two dims have at least this size.
        epsilon: :math:`\\epsilon_1` >= 0, added to :math:`g^2`.
        decay_rate_fn: ``(step, decay_rate) -> beta_t`` (e.g. capped at 0.999 as in Zhai et
            al., 2021).
        nu_dtype: storage dtype of the statistics (default: each parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``nu_dtype`` (dlopt only).

    Returns:
        A `GradientTransformation` with state `FactoredState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_factored_rms(), dlopt.scale_by_learning_rate(1e-2))

    References:
        Shazeer and Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
        Cost", ICML.
    """
    _check_factoring(
        decay_rate, "step_offset", step_offset, min_dim_size_to_factor, "epsilon", epsilon
    )
    if not callable(decay_rate_fn):
        raise TypeError(
            f"decay_rate_fn must be a function (step, decay_rate) -> beta, got "
            f"decay_rate_fn={decay_rate_fn!r}."
        )

    def init_leaf(p, dtype, part):  # part 0: v_row, 1: v_col, 2: v
        dtype = dtype or tree_lib.dtype_of(p)
        dims = _factored_dims(p.shape, factored, min_dim_size_to_factor)
        if dims is None:
            return jnp.zeros_like(p, dtype=dtype) if part == 2 else _placeholder(dtype)
        d1, d0 = dims
        return _zeros_without_axis(p, (d0, d1)[part], dtype) if part < 2 else _placeholder(dtype)

    def statistic(part: int) -> rule.Moment:
        init = lambda params, dtype: jax.tree.map(lambda p: init_leaf(p, dtype, part), params)  # noqa: E731
        return rule.Moment(nu_dtype, init, like_params=part == 2)

    def step(state, count, params):
        taken = jnp.maximum(state.count - jnp.asarray(step_offset, jnp.int32), 0)
        return {"decay": decay_rate_fn(taken, decay_rate)}

    leaf_fn = functools.partial(
        _factored_leaf, epsilon=epsilon, factored=factored, min_dim=min_dim_size_to_factor
    )
    moments = {"v_row": statistic(0), "v_col": statistic(1), "v": statistic(2)}
    return rule.moment_rule(
        FactoredState, leaf_fn, moments=moments, rounding=state_rounding, step=step
    )


def _safe_rms(x: chex.Array, min_rms: chex.Numeric) -> chex.Array:
    """``max(sqrt(mean(|x|^2)), min_rms)`` whose gradient is 0, not NaN, below ``min_rms``."""
    rms = jnp.sqrt(jnp.mean(numerics.abs_sq(x)))
    floor = tree_lib.scalar_like(min_rms, rms)
    x = jnp.where(rms <= floor, jnp.ones_like(x), x)
    return jnp.where(rms <= floor, floor, jnp.sqrt(jnp.mean(numerics.abs_sq(x))))


@per_leaf
def scale_by_param_block_rms(min_scale: chex.Numeric = 1e-3) -> GradientTransformation:
    """Multiplies each leaf's update by the root mean square of its parameter (a block).

    .. math:: u \\leftarrow u \\cdot \\max(\\mathrm{rms}(w), s_{min}), \\qquad
        \\mathrm{rms}(w) = \\sqrt{\\operatorname{mean}(|w|^2)}

    Makes a step relative to the parameters' scale (Adafactor's
    ``multiply_by_parameter_scale``). Needs ``params``.

    Args:
        min_scale: :math:`s_{min}` >= 0, the floor on the scale (so zero-initialised leaves
            move).

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_param_block_rms(), dlopt.scale(-0.01))
    """
    validation.check_non_negative("min_scale", min_scale)
    return param_block_scaling("scale_by_param_block_rms", lambda p: _safe_rms(p, min_scale))


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: chex.Numeric = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: chex.Numeric | None = 1.0,
    momentum: chex.Numeric | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: chex.Numeric = 1e-30,
    factored: bool = True,
    weight_decay_mask: Mask | None = None,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Adafactor: Adam-like steps with factored second moments, relative to the weights' scale.

    .. math::
        u \\leftarrow \\frac{g}{\\sqrt{\\hat V}} \\ \\text{(`scale_by_factored_rms`)}, \\quad
        u \\leftarrow \\frac{u}{\\max(1, \\mathrm{rms}(u) / d)}, \\quad
        u \\leftarrow \\eta\\, \\max(\\mathrm{rms}(w), 10^{-3})\\, u,

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) u, \\quad
        w \\leftarrow w - (m + \\lambda w)

    with :math:`\\hat V` the factored second moment, :math:`d` = ``clipping_threshold``,
    :math:`\\eta` = ``learning_rate``, :math:`\\beta_1` = ``momentum`` and :math:`\\lambda` =
    ``weight_decay_rate``. Each stage is skipped when its argument is None (or
    ``multiply_by_parameter_scale=False``), as in optax; :math:`\\lambda w` is not scaled by
    :math:`\\eta`. The momentum :math:`m` is stored in ``dtype_momentum`` (float32 by
    default, as in optax) and not bias-corrected.

    Deliberate difference from optax: for complex parameters the momentum is stored complex
    (``complex64`` for ``dtype_momentum=float32``; optax's cast to float32 drops the
    imaginary part); steps before ``decay_offset`` use the decay schedule's first value
    (optax's gives NaN).

    Args:
        learning_rate: :math:`\\eta` >= 0, a schedule, or None (relative steps of size 1).
        min_dim_size_to_factor: int >= 0; factor leaves with two dims at least this large.
        decay_rate: :math:`c` >= 0 in :math:`\\hat\\beta_{2,t} = 1 - t^{-c}`.
        decay_offset: int >= 0, the step the decay schedule starts from (fine-tuning).
        multiply_by_parameter_scale: scale steps by each leaf's parameter RMS.
        clipping_threshold: :math:`d` > 0, or None for no update clipping.
        momentum: :math:`\\beta_1` in [0, 1), or None for no momentum (no buffer).
        dtype_momentum: dtype of :math:`m`.
        weight_decay_rate: :math:`\\lambda` >= 0, a schedule, or None.
        eps: :math:`\\epsilon_1` >= 0, added to :math:`g^2`.
        factored: use the factored second moment (False: a full one, like RMSProp).
        weight_decay_mask: pytree of bools (or ``params -> pytree``) choosing decayed leaves.
        mu_dtype: the same as ``dtype_momentum`` under dlopt's uniform name (it wins over a
            ``dtype_momentum`` left at its default); dlopt only.
        nu_dtype: storage dtype of the second-moment statistics (default: each
            parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower state
            dtypes (dlopt only).

    Returns:
        A chain of `scale_by_factored_rms`, `clip_by_block_rms`, `scale_by_learning_rate`,
        `scale_by_param_block_rms`, an EMA, `add_decayed_weights` and ``scale(-1)`` (the
        stages in use, in optax's order); ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adafactor(1e-2, momentum=0.9)
        >>> state = tx.init({"w": jnp.ones((256, 128))})  # row and column statistics only

    References:
        Shazeer and Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory
        Cost", ICML.
    """
    if learning_rate is not None:
        validation.check_learning_rate(learning_rate)
    _check_factoring(decay_rate, "decay_offset", decay_offset, min_dim_size_to_factor, "eps", eps)
    if clipping_threshold is not None:
        validation.check_positive("clipping_threshold", clipping_threshold)
    if momentum is not None:
        validation.check_in_range("momentum", momentum, 0.0, 1.0)
    if weight_decay_rate is not None and not callable(weight_decay_rate):
        validation.check_non_negative("weight_decay_rate", weight_decay_rate)
    numerics.check_rounding(state_rounding)
    momentum_dtype = numerics.moment_dtype("dtype_momentum", dtype_momentum, mu_dtype, jnp.float32)
    tx = [
        scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps,
            nu_dtype=nu_dtype, state_rounding=state_rounding,
        )
    ]  # fmt: skip
    if clipping_threshold is not None:
        tx.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        tx.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(scale_by_param_block_rms())
    if momentum is not None:
        tx.append(
            ema(momentum, debias=False, accumulator_dtype=momentum_dtype,
                state_rounding=state_rounding)
        )  # fmt: skip
    if weight_decay_rate is not None:
        tx.append(add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    tx.append(scale(-1.0))
    return chain(*tx)
