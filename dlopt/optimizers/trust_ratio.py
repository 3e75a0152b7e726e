"""Layer-wise trust ratios for large batches: LARS, LAMB and Fromage."""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain, masked
from dlopt.core.per_leaf import per_leaf
from dlopt.optimizers.adam import scale_by_adam
from dlopt.optimizers.sgd import trace
from dlopt.transforms.param_scale import safe_block_norm
from dlopt.transforms.regularizers import AddDecayedWeightsState, add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


def _trust_ratio_leaf(u, p, out_dtype, *, min_norm, trust_coefficient, eps):
    f = numerics.compute_dtype(u.dtype, p.dtype)
    u = u.astype(f)
    param_norm = safe_block_norm(p.astype(f), min_norm)
    update_norm = safe_block_norm(u, min_norm)
    ratio = (
        tree_lib.scalar_like(trust_coefficient, param_norm)
        * param_norm
        / (update_norm + tree_lib.scalar_like(eps, update_norm))
    )
    # a zero parameter or update norm (without min_norm) would freeze the leaf: ratio 1
    zero = jnp.logical_or(param_norm == 0.0, update_norm == 0.0)
    ratio = jnp.where(zero, jnp.ones_like(ratio), ratio)
    return (u * ratio.astype(f)).astype(out_dtype)


ScaleByTrustRatioState = EmptyState  # the state of `scale_by_trust_ratio` (optax's alias)


@per_leaf
def scale_by_trust_ratio(
    min_norm: chex.Numeric = 0.0,
    trust_coefficient: chex.Numeric = 1.0,
    eps: chex.Numeric = 0.0,
) -> GradientTransformation:
    """Rescales each leaf's update by its trust ratio, the parameter-to-update norm ratio.

    .. math::
        u \\leftarrow u \\cdot \\frac{c \\max(\\|w\\|, n_{min})}{\\max(\\|u\\|, n_{min}) +
        \\epsilon}

    per leaf (layer), with Frobenius norms; the ratio is 1 where either norm is 0. The step
    of each layer is then proportional to its weights' norm, whatever its gradient's scale.
    Needs ``params``.

    Args:
        min_norm: :math:`n_{min}` >= 0, the floor on both norms.
        trust_coefficient: :math:`c` >= 0.
        eps: :math:`\\epsilon` >= 0, added to the update norm.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_adam(), dlopt.scale_by_trust_ratio(),
        ...                  dlopt.scale_by_learning_rate(1e-3))  # LAMB
    """
    validation.check_non_negative("min_norm", min_norm)
    validation.check_non_negative("trust_coefficient", trust_coefficient)
    validation.check_non_negative("eps", eps)

    def init_fn(params):
        tree_lib.check_float_params(params)
        return EmptyState()

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("scale_by_trust_ratio needs params: call update(u, state, params).")
        updates = jax.tree.map(
            lambda u, p, d: _trust_ratio_leaf(
                u, p, d, min_norm=min_norm, trust_coefficient=trust_coefficient, eps=eps
            ),
            updates,
            params,
            numerics.out_dtypes(updates, params),
        )
        return updates, state

    return GradientTransformation(init_fn, update_fn)


def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask | None = True,
    trust_coefficient: chex.Numeric = 0.001,
    eps: chex.Numeric = 0.0,
    trust_ratio_mask: Mask | None = True,
    momentum: chex.Numeric = 0.9,
    nesterov: bool = False,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """LARS: SGD with momentum whose per-layer step is scaled by the layer's trust ratio.

    .. math::
        d \\leftarrow g + \\lambda w, \\quad
        d \\leftarrow \\frac{c \\|w\\|}{\\|d\\| + \\epsilon} d, \\quad
        v \\leftarrow \\mu v - \\eta_t d \\ \\text{(Nesterov: the look-ahead form)}, \\quad
        w \\leftarrow w + v

    per layer (leaf), with the ratio 1 where a norm is 0. As in optax, the momentum acts on
    the learning-rate-scaled steps (the paper's form).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        weight_decay_mask: bools (or ``params -> bools``) choosing the decayed leaves.
        trust_coefficient: :math:`c` >= 0 (0.001 in the paper).
        eps: :math:`\\epsilon` >= 0.
        trust_ratio_mask: bools (or ``params -> bools``) choosing the leaves that get a trust
            ratio (the paper leaves out biases and normalization parameters).
        momentum: :math:`\\mu` in [0, 1].
        nesterov: use Nesterov momentum.
        mu_dtype: dtype of the momentum buffer (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``mu_dtype`` (dlopt only).

    Returns:
        ``chain(add_decayed_weights(...), masked(scale_by_trust_ratio(...), ...),
        scale_by_learning_rate(learning_rate), trace(momentum, nesterov))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.lars(1.0, weight_decay=1e-4, trust_ratio_mask=dlopt.weights_only)
        >>> state = tx.init({"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)})

    References:
        You, Gitman and Ginsburg, 2017, "Large Batch Training of Convolutional Networks",
        arXiv:1708.03888.
    """
    validation.check_learning_rate(learning_rate)
    validation.check_in_range("momentum", momentum, 0.0, 1.0, high_closed=True)
    return chain(
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask
        ),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov, mu_dtype=mu_dtype, state_rounding=state_rounding),
    )


def lamb(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.9,
    b2: chex.Numeric = 0.999,
    eps: chex.Numeric = 1e-6,
    eps_root: chex.Numeric = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
    *,
    mu_dtype: Any | None = None,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """LAMB: AdamW's direction, rescaled per layer by the trust ratio.

    .. math::
        r = \\frac{\\hat m}{\\sqrt{\\hat v + \\epsilon_{root}} + \\epsilon} + \\lambda w,
        \\qquad w \\leftarrow w - \\eta \\frac{\\|w\\|}{\\|r\\|} r

    per layer (leaf), with :math:`\\hat m, \\hat v` Adam's bias-corrected moments and the
    ratio 1 where a norm is 0.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0.
        eps_root: :math:`\\epsilon_{root}` >= 0.
        weight_decay: :math:`\\lambda` >= 0, or a schedule.
        mask: bools (or ``params -> bools``) choosing the decayed leaves.
        mu_dtype, nu_dtype, state_rounding: the moments' storage, as in `scale_by_adam`
            (dlopt only; optax's lamb has no ``mu_dtype``).

    Returns:
        ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.lamb(1e-3, weight_decay=1e-2)
        >>> state = tx.init({"w": jnp.ones((3, 2))})

    References:
        You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in 76
        Minutes", ICLR.
    """
    return chain(
        scale_by_adam(
            b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, state_rounding=state_rounding
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def _shrink(learning_rate: chex.Numeric) -> chex.Numeric:
    """Fromage's :math:`1 / \\sqrt{1 + \\eta^2}` (in double precision for a Python float)."""
    return 1 / (1 + learning_rate**2) ** 0.5


def _fromage_shrink(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """``u <- u + (1 / sqrt(1 + lr_t^2) - 1) w``: after the step, Fromage divides the
    weights by :math:`\\sqrt{1 + \\eta_t^2}` (a negative weight decay in optax's chain)."""

    def init_fn(params):
        del params
        return AddDecayedWeightsState(count=jnp.zeros([], jnp.int32))

    def shrink_leaf(u, p, out_dtype, rate):
        f = numerics.compute_dtype(u.dtype, p.dtype)
        return (u.astype(f) + tree_lib.scalar_like(rate, jnp.real(u.astype(f))).astype(f)
                * p.astype(f)).astype(out_dtype)  # fmt: skip

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("fromage needs params: call update(updates, state, params).")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        rate = _shrink(lr) - 1
        updates = jax.tree.map(
            lambda u, p, d: shrink_leaf(u, p, d, rate),
            updates,
            params,
            numerics.out_dtypes(updates, params),
        )
        return updates, AddDecayedWeightsState(count=tree_lib.safe_increment(state.count))

    return GradientTransformation(init_fn, update_fn)


def fromage(
    learning_rate: ScalarOrSchedule, min_norm: chex.Numeric = 1e-6
) -> GradientTransformationExtraArgs:
    """Fromage: steps of a fixed relative size per layer, then a shrink that keeps norms.

    .. math::
        w \\leftarrow \\frac{1}{\\sqrt{1 + \\eta^2}} \\left(w - \\eta \\frac{\\|w\\|}{\\|g\\|}
        g\\right)

    per layer (leaf), with both norms floored at ``min_norm``. The update is a rotation-like
    move of relative size :math:`\\eta` in the "deep relative trust" geometry, and the
    division keeps the weights' norms from growing; :math:`\\eta \\approx 0.01` works across
    architectures.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        min_norm: >= 0, the floor on the parameter and gradient norms.

    Returns:
        ``chain(scale_by_trust_ratio(min_norm), scale_by_learning_rate(eta / sqrt(1 +
        eta^2)), u <- u + (1 / sqrt(1 + eta^2) - 1) w)``; ``update`` needs ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.fromage(1e-2)
        >>> state = tx.init({"w": jnp.ones((3, 2))})

    References:
        Bernstein, Vahdat, Yue and Liu, 2020, "On the distance between two neural networks
        and the stability of learning", NeurIPS.
    """
    validation.check_learning_rate(learning_rate)
    if callable(learning_rate):

        def lr(count):
            eta = learning_rate(count)
            return _shrink(eta) * eta
    else:
        lr = learning_rate * _shrink(learning_rate)
    return chain(
        scale_by_trust_ratio(min_norm),
        scale_by_learning_rate(lr),
        _fromage_shrink(learning_rate),
    )
