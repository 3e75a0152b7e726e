"""Adam and its family: Adam, AdamW (decoupled weight decay), Nadam, NadamW."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import chex
import jax.numpy as jnp

from dlopt.core import numerics, rule
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain
from dlopt.optimizers import alias
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


def _adam_leaf(g, mu, nu, leaf, out_dtype, *, b1, b2, eps, eps_root, nesterov, writer):
    count = writer.count
    f = numerics.compute_dtype(g.dtype, mu.dtype, nu.dtype)  # arithmetic at full precision
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, b1), mu, leaf, 1)
    nu = writer.put(numerics.ema(nu.astype(f), numerics.abs_sq(g), b2), nu, leaf, 2)
    m, v = mu.astype(f), nu.astype(f)  # the stored values: no full-precision temporaries
    m_hat = numerics.unbias_momentum(m, g, b1, count, nesterov=nesterov)
    v_hat = numerics.unbias(v, b2, count)
    denominator = jnp.sqrt(v_hat + tree_lib.scalar_like(eps_root, v_hat))
    denominator = denominator + tree_lib.scalar_like(eps, denominator)
    return (m_hat / denominator).astype(out_dtype), mu, nu


class ScaleByAdamState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    mu: chex.ArrayTree  # m, the first moment (in mu_dtype)
    nu: chex.ArrayTree  # v, the second moment


def scale_by_adam(
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Scales by Adam's bias-corrected first moment over the root of its second moment.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        v_t = \\beta_2 v_{t-1} + (1 - \\beta_2) g_t^2, \\quad
        \\hat m_t = \\frac{m_t}{1 - \\beta_1^t}, \\quad \\hat v_t = \\frac{v_t}{1 - \\beta_2^t},
        \\quad u_t = \\frac{\\hat m_t}{\\sqrt{\\hat v_t + \\epsilon_{root}} + \\epsilon}

    With ``nesterov=True`` (Nadam, Dozat 2016) the first moment looks one step ahead:
    :math:`\\hat m_t = \\beta_1 \\frac{m_t}{1 - \\beta_1^{t+1}} + (1 - \\beta_1)
    \\frac{g_t}{1 - \\beta_1^t}`.

    Complex parameters use :math:`|g_t|^2 = g_t \\bar g_t` for :math:`v`, as optax does.
    Arithmetic runs in float32 (float64 for float64 leaves) whatever the storage dtypes; the
    moments are stored in ``mu_dtype`` / ``nu_dtype`` (default: each parameter's dtype) with
    stochastic rounding when that is narrower (`dlopt.core.numerics.store`), and the update is
    computed from the stored values. Updates come back in each parameter's dtype.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0, added outside the root.
        eps_root: :math:`\\epsilon_{root}` >= 0, added inside the root (keeps the gradient of
            the update finite when differentiating through it, e.g. in meta-learning).
        mu_dtype: dtype of :math:`m` (e.g. ``jnp.bfloat16`` to save memory); default: each
            parameter's dtype.
        nesterov: use Nesterov momentum (Nadam).
        nu_dtype: dtype of :math:`v` (dlopt only; optax keeps :math:`v` in the parameters'
            dtype).
        state_rounding: ``"stochastic"`` (default) or ``"nearest"``: how moments are rounded
            into a narrower storage dtype.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adam(), dlopt.scale_by_learning_rate(1e-3))
    """
    rule.check_moment_hyperparameters(b1, b2, eps, eps_root)
    leaf_fn = functools.partial(
        _adam_leaf, b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov
    )
    return rule.moment_rule(
        ScaleByAdamState, leaf_fn, moments={"mu": mu_dtype, "nu": nu_dtype}, rounding=state_rounding
    )


def adam(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Adam: momentum on the gradient, step sizes from its running second moment.

    .. math::
        m \\leftarrow \\beta_1 m + (1 - \\beta_1) g, \\quad
        v \\leftarrow \\beta_2 v + (1 - \\beta_2) g^2, \\quad
        \\hat m = \\frac{m}{1 - \\beta_1^t}, \\quad \\hat v = \\frac{v}{1 - \\beta_2^t}, \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon}

    with :math:`t` = 1, 2, ... the step. ``nesterov=True`` is `nadam`.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        mu_dtype: dtype of the first moment (e.g. ``jnp.bfloat16``).
        nesterov: use Nesterov momentum (Nadam).
        nu_dtype: dtype of the second moment (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into narrower moment
            dtypes (dlopt only; see `scale_by_adam`).

    Returns:
        ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, ...),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adam(1e-3)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Kingma and Ba, 2015, "Adam: A Method for Stochastic Optimization", ICLR.
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip


def adamw(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-8,
    eps_root: chex.Numeric = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: Mask | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """AdamW: Adam with weight decay decoupled from the adaptive scaling.

    .. math::
        w \\leftarrow w - \\eta \\left(\\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} +
        \\epsilon} + \\lambda w\\right)

    with :math:`\\hat m, \\hat v` as in `adam`. The decay :math:`\\lambda w` skips the
    division by :math:`\\sqrt{\\hat v}` (an L2 penalty in the loss would not), and is scaled
    by :math:`\\eta` as in optax and torch (the paper scales it by a schedule multiplier only).

    Args:
        learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, nu_dtype, state_rounding:
            as in `adam`.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: pytree of bools (or ``params -> pytree``) choosing the decayed leaves, e.g.
            to skip biases and normalization scales.

    Returns:
        ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.adamw(1e-3, weight_decay=1e-2)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Loshchilov and Hutter, 2019, "Decoupled Weight Decay Regularization", ICLR.
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov, nu_dtype=nu_dtype,
            state_rounding=state_rounding,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )  # fmt: skip


nadam = alias(
    adam,
    "nadam",
    """Nadam: `adam` with ``nesterov=True`` (Nesterov momentum); arguments as in `adam`.

    .. math::
        \\hat m = \\frac{\\beta_1 m}{1 - \\beta_1^{t+1}} + \\frac{(1 - \\beta_1) g}{1 -
        \\beta_1^t}, \\quad
        w \\leftarrow w - \\eta \\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon}

    with :math:`m, v, \\hat v` as in `adam`. As in optax (and torch without momentum decay),
    the paper's momentum schedule :math:`\\mu_t` is the constant :math:`\\beta_1` and
    :math:`\\hat v` is not multiplied by :math:`\\beta_2`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.nadam(1e-3)

    References:
        Dozat, 2016, "Incorporating Nesterov Momentum into Adam", ICLR workshop.
    """,
    nesterov=True,
)

nadamw = alias(
    adamw,
    "nadamw",
    """NadamW: `adamw` with ``nesterov=True``; arguments as in `adamw`, :math:`\\hat m` as
    in `nadam`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.nadamw(1e-3, weight_decay=1e-2)

    References:
        Dozat, 2016; Loshchilov and Hutter, 2019.
    """,
    nesterov=True,
)
