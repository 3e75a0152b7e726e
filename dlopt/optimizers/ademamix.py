"""AdEMAMix: Adam with a second, slow momentum mixed in; and its simplified one-momentum form."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, ScalarOrSchedule
from dlopt.core.combine import Mask, chain
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


def _value_at(value: ScalarOrSchedule, count: chex.Array) -> chex.Numeric:
    return value(count) if callable(value) else value


def _check_number_or_schedule(name: str, value: Any, check) -> None:
    if not callable(value):
        check(name, value)


def _ademamix_leaf(g, m1, m2, nu, leaf, out_dtype, *, b1, b2, b3, alpha, eps, eps_root, writer):
    count = writer.count
    f = numerics.compute_dtype(g.dtype, m1.dtype, m2.dtype, nu.dtype)
    g = g.astype(f)
    m1 = writer.put(numerics.ema(m1.astype(f), g, b1), m1, leaf, 1)
    m2 = writer.put(numerics.ema(m2.astype(f), g, b3), m2, leaf, 3)
    nu = writer.put(numerics.ema(nu.astype(f), numerics.abs_sq(g), b2), nu, leaf, 2)
    m1_hat = numerics.unbias(m1.astype(f), b1, count)
    nu_hat = numerics.unbias(nu.astype(f), b2, count)
    mixed = m1_hat + tree_lib.scalar_like(alpha, m1_hat) * m2.astype(f)
    denominator = jnp.sqrt(nu_hat + tree_lib.scalar_like(eps_root, nu_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (mixed / denominator).astype(out_dtype), m1, m2, nu


class ScaleByAdemamixState(NamedTuple):
    count: chex.Array  # int32 t, for m1 and nu (and the rounding seeds)
    count_m2: chex.Array  # int32, the step at which the b3 and alpha schedules are read
    m1: chex.ArrayTree  # fast EMA of the gradients (in mu_dtype)
    m2: chex.ArrayTree  # slow EMA of the gradients (in mu_dtype)
    nu: chex.ArrayTree  # second moment (in nu_dtype)


def scale_by_ademamix(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by AdEMAMix's mixture of a fast and a slow momentum over Adam's denominator.

    .. math::
        m^{(1)}_t = \\beta_1 m^{(1)}_{t-1} + (1 - \\beta_1) g_t, \\quad
        m^{(2)}_t = \\beta_3 m^{(2)}_{t-1} + (1 - \\beta_3) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2,

    .. math::
        u_t = \\frac{m^{(1)}_t / (1 - \\beta_1^t) + \\alpha\\, m^{(2)}_t}
        {\\sqrt{v_t / (1 - \\beta_2^t) + \\epsilon_{root}} + \\epsilon}

    The slow momentum :math:`m^{(2)}` is not bias-corrected, so it fills slowly and old
    gradients keep mattering for :math:`\\sim 1/(1 - \\beta_3)` steps. ``b3`` and ``alpha``
    may be schedules (the paper warms both up over training), read at ``count_m2``.
    Complex parameters use :math:`|g|^2` for :math:`v`.

    Deliberate difference from optax: ``mu_dtype`` sets the dtype of the two momenta only;
    :math:`v` is stored in ``nu_dtype`` (default: the parameters' dtype), as in every dlopt
    optimizer (optax stores :math:`v` in ``mu_dtype`` too). ``state_rounding`` is dlopt-only.

    Args:
        b1: :math:`\\beta_1` in [0, 1), the fast momentum's decay.
        b2: :math:`\\beta_2` in [0, 1), the second moment's decay.
        b3: :math:`\\beta_3` in [0, 1), the slow momentum's decay, or a schedule.
        alpha: :math:`\\alpha`, the slow momentum's weight (finite), or a schedule.
        eps: :math:`\\epsilon` >= 0, added outside the root.
        eps_root: :math:`\\epsilon_{root}` >= 0, added inside the root.
        mu_dtype: dtype of :math:`m^{(1)}, m^{(2)}` (default: each parameter's dtype).
        nu_dtype: dtype of :math:`v` (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower state dtypes
            (dlopt only).

    Returns:
        A `GradientTransformation` with state `ScaleByAdemamixState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_ademamix(), dlopt.scale_by_learning_rate(1e-3))

    References:
        Pagliardini, Ablin and Grangier, 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older", arXiv:2409.03137.
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    _check_number_or_schedule("b3", b3, lambda n, v: validation.check_in_range(n, v, 0.0, 1.0))
    _check_number_or_schedule("alpha", alpha, validation.check_finite)

    def step(state, count, params):  # the b3 and alpha schedules are read at count_m2
        return {"b3": _value_at(b3, state.count_m2), "alpha": _value_at(alpha, state.count_m2)}

    return rule.moment_rule(
        ScaleByAdemamixState,
        functools.partial(_ademamix_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        moments={"m1": mu_dtype, "m2": mu_dtype, "nu": nu_dtype},
        rounding=state_rounding,
        step=step,
        extra_init=lambda params: {"count_m2": jnp.zeros([], jnp.int32)},
        extra_update=lambda state, *_: {"count_m2": tree_lib.safe_increment(state.count_m2)},
    )


def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
    *,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """AdEMAMix: AdamW whose numerator mixes a fast and a slow momentum.

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{\\hat m^{(1)} + \\alpha\\, m^{(2)}}
        {\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon} + \\lambda w\\right)

    with :math:`\\hat m^{(1)}, m^{(2)}, \\hat v` as in `scale_by_ademamix`. Best for long runs:
    :math:`\\beta_3 = 0.9999` remembers ~10k steps; the paper warms up :math:`\\alpha` and
    :math:`\\beta_3` (pass schedules) and reports :math:`\\beta_3 = 0.999` for short runs.
    The default ``alpha=5.0`` differs from `scale_by_ademamix`'s 6.0, as in optax.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1, b2, b3, alpha, eps, eps_root, mu_dtype, nu_dtype, state_rounding: as in
            `scale_by_ademamix` (which lists the differences from optax).
        weight_decay: :math:`\\lambda` >= 0 (decoupled, scaled by :math:`\\eta`).
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.

    Returns:
        ``chain(scale_by_ademamix(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.ademamix(1e-3, b3=0.999)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Pagliardini, Ablin and Grangier, 2024, "The AdEMAMix Optimizer: Better, Faster,
        Older", arXiv:2409.03137.
    """
    return chain(
        scale_by_ademamix(
            b1, b2, b3, alpha, eps, eps_root, mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip


def _simplified_ademamix_leaf(g, m, n, leaf, out_dtype, *, b1, b2, alpha, eps, eps_root, writer):
    f = numerics.compute_dtype(g.dtype, m.dtype, n.dtype)
    g = g.astype(f)
    m = writer.put(tree_lib.scalar_like(b1, g) * m.astype(f) + g, m, leaf, 1)
    n = writer.put(numerics.ema(n.astype(f), numerics.abs_sq(g), b2), n, leaf, 2)
    n_hat = numerics.unbias(n.astype(f), b2, writer.count)
    numerator = m.astype(f) + tree_lib.scalar_like(alpha, g) * g
    denominator = jnp.sqrt(n_hat + tree_lib.scalar_like(eps_root, n_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (numerator / denominator).astype(out_dtype), m, n


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    t: chex.Array  # int32 step count (also seeds the stochastic rounding)
    m: chex.ArrayTree  # the momentum, an undamped accumulation (in mu_dtype)
    n: chex.ArrayTree  # second moment (in nu_dtype)


def scale_by_simplified_ademamix(
    b1: chex.Numeric = 0.99,
    b2: chex.Numeric = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by simplified AdEMAMix: one accumulated momentum plus :math:`\\alpha` times
    the gradient, over Adam's denominator.

    .. math::
        m_t = \\beta_1 m_{t-1} + g_t, \\quad
        n_t = \\beta_2 n_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        u_t = \\frac{m_t + \\alpha g_t}{\\sqrt{n_t / (1 - \\beta_2^t) + \\epsilon_{root}}
        + \\epsilon}

    :math:`m` is a sum, not an average (so the learning rate is smaller than Adam's by about
    :math:`1 - \\beta_1`); :math:`\\alpha = 0` is Adam with that rescaling and no first-moment
    bias correction. ``alpha`` may be a schedule, read at the step count ``t``.

    Deliberate difference from optax: :math:`g^2` is :math:`|g|^2` for complex parameters
    (optax squares the complex gradient, giving a complex, non-positive "second moment").
    ``mu_dtype``, ``nu_dtype`` and ``state_rounding`` are dlopt-only.

    Args:
        b1: :math:`\\beta_1` in [0, 1] (1 is an undamped running sum).
        b2: :math:`\\beta_2` in [0, 1).
        alpha: :math:`\\alpha` (finite), or a schedule.
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: dtype of :math:`m` (dlopt only; default: each parameter's dtype).
        nu_dtype: dtype of :math:`n` (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` (dlopt only).

    Returns:
        A `GradientTransformation` with state `ScaleBySimplifiedAdEMAMixState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_simplified_ademamix(),
        ...                  dlopt.scale_by_learning_rate(1e-4))

    References:
        Morwani et al., 2025, "Connections between Schedule-Free Optimizers, AdEMAMix, and
        Accelerated SGD Variants", arXiv:2502.02431.
    """
    validation.check_in_range("b1", b1, 0.0, 1.0, high_closed=True)
    validation.check_in_range("b2", b2, 0.0, 1.0)
    _check_number_or_schedule("alpha", alpha, validation.check_finite)
    validation.check_non_negative("eps", eps)
    validation.check_non_negative("eps_root", eps_root)
    return rule.moment_rule(
        ScaleBySimplifiedAdEMAMixState,
        functools.partial(_simplified_ademamix_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        moments={"m": mu_dtype, "n": nu_dtype},
        rounding=state_rounding,
        count="t",
        step=lambda state, count, params: {"alpha": _value_at(alpha, state.t)},
    )


def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.99,
    b2: chex.Numeric = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Simplified AdEMAMix: one momentum buffer, no :math:`\\alpha`/:math:`\\beta_3` warmup.

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{m + \\alpha g}{\\sqrt{\\hat n + \\epsilon_{root}}
        + \\epsilon} + \\lambda w\\right), \\qquad m \\leftarrow \\beta_1 m + g

    with :math:`\\hat n` as in `scale_by_simplified_ademamix` (which lists where it and
    optax differ).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1, b2, alpha, eps, eps_root, mu_dtype, nu_dtype, state_rounding: as in
            `scale_by_simplified_ademamix`.
        weight_decay: :math:`\\lambda` >= 0 (decoupled, scaled by :math:`\\eta`).
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves.

    Returns:
        ``chain(scale_by_simplified_ademamix(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.simplified_ademamix(1e-4)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Morwani et al., 2025, "Connections between Schedule-Free Optimizers, AdEMAMix, and
        Accelerated SGD Variants", arXiv:2502.02431.
    """
    return chain(
        scale_by_simplified_ademamix(
            b1, b2, alpha, eps, eps_root, mu_dtype=mu_dtype, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip
