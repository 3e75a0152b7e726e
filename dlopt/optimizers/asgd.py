"""ASGD: SGD with a decaying step size and a running (Polyak-Ruppert) average of the iterates."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core.base import (
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    with_extra_args_support,
)


def _asgd_leaf(g, ax, p, leaf, out_dtype, *, writer, eta, mu, decay):
    f = numerics.compute_dtype(g.dtype, ax.dtype, p.dtype)
    g, w = g.astype(f), p.astype(f)
    update = -eta.astype(f) * (g + decay.astype(f) * w)
    new_w = (w + update).astype(out_dtype).astype(f)  # the parameters apply_updates gives
    average = jnp.where(mu == 1, new_w, ax.astype(f) + mu.astype(f) * (new_w - ax.astype(f)))
    return update.astype(out_dtype), writer.put(average, ax, leaf, 1)


class AsgdState(NamedTuple):
    count: chex.Array  # int32 step t, saturating
    ax: chex.ArrayTree  # the averaged parameters (torch's name), in mu_dtype


def asgd(
    learning_rate: ScalarOrSchedule,
    lambd: chex.Numeric = 1e-4,
    alpha: chex.Numeric = 0.75,
    t0: chex.Numeric = 1e6,
    weight_decay: chex.Numeric = 0.0,
    *,
    mu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformationExtraArgs:
    """Averaged SGD as torch.optim.ASGD: SGD with a slowly decaying step size, plus a running
    average of the iterates from step ``t0`` on (read it with `asgd_averaged_params`).

    At step :math:`t = 1, 2, \\ldots`, with :math:`s = t - 1`:

    .. math::
        \\eta_t = \\frac{\\eta}{(1 + \\lambda \\eta s)^\\alpha}, \\quad
        w_t = w_{t-1} - \\eta_t (g_t + \\omega w_{t-1}) - \\lambda \\eta_t w_{t-1}

    .. math::
        \\mu_t = \\frac{1}{\\max(1, s - t_0)}, \\quad
        \\bar w_t = \\bar w_{t-1} + \\mu_t (w_t - \\bar w_{t-1})
        \\ (\\bar w_t = w_t \\text{ while } \\mu_t = 1)

    so :math:`\\bar w` follows the iterates until :math:`t_0 + 2` and is then their running
    mean (the Polyak-Ruppert average, which converges at the optimal rate for convex
    stochastic problems even though the iterates themselves jitter). :math:`\\lambda w` is a
    decay of the weights towards 0 scaled by :math:`\\eta_t`, as in torch. With a schedule,
    :math:`\\eta` is its value at step :math:`s`. One transform rather than a chain: the
    learning rate enters :math:`\\eta_t` non-linearly and the average needs the final step.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule ``step -> eta``.
        lambd: :math:`\\lambda` >= 0, the decay term (torch's ``lambd``).
        alpha: :math:`\\alpha` >= 0, the power of the step-size decay.
        t0: :math:`t_0`, the step from which averaging starts (any finite number).
        weight_decay: :math:`\\omega` >= 0, an L2 penalty added to the gradient.
        mu_dtype: storage dtype of :math:`\\bar w` (default: each parameter's); dlopt only.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``mu_dtype``.

    Returns:
        A `GradientTransformationExtraArgs` with state `AsgdState`; ``update`` needs
        ``params``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.asgd(0.1, t0=0)
        >>> params = {"w": jnp.array([1.0])}
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     updates, state = tx.update({"w": params["w"]}, state, params)
        ...     params = dlopt.apply_updates(params, updates)
        >>> dlopt.asgd_averaged_params(state)["w"].shape
        (1,)

    References:
        Polyak and Juditsky, 1992, "Acceleration of Stochastic Approximation by Averaging",
        SIAM J. Control Optim.; Bottou, 2012, "Stochastic Gradient Descent Tricks" (the step
        size schedule).
    """
    validation.check_learning_rate(learning_rate)
    validation.check_non_negative("lambd", lambd)
    validation.check_non_negative("alpha", alpha)
    validation.check_finite("t0", t0)
    validation.check_non_negative("weight_decay", weight_decay)

    def step(state, count, params):  # torch's step size eta and averaging weight mu
        s = state.count.astype(jnp.float32)
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        lr = jnp.asarray(lr).astype(jnp.float32)
        lambd_ = jnp.asarray(lambd).astype(jnp.float32)
        eta = lr / (1 + lambd_ * lr * s) ** jnp.asarray(alpha).astype(jnp.float32)
        mu = 1 / jnp.maximum(s - jnp.asarray(t0).astype(jnp.float32), 1.0)
        decay = lambd_ + jnp.asarray(weight_decay).astype(jnp.float32)
        return {"eta": eta, "mu": mu, "decay": decay}

    tx = rule.moment_rule(
        AsgdState,
        _asgd_leaf,
        moments={"ax": mu_dtype},
        rounding=state_rounding,
        needs_params="asgd",
        inputs=lambda updates, state, params: (params,),
        step=step,
    )
    return with_extra_args_support(tx)


def asgd_averaged_params(state: Any) -> chex.ArrayTree:
    """The averaged parameters :math:`\\bar w` of an `asgd` state (torch's ``ax``), also
    when the state is nested (in a `chain`, `inject_hyperparams`, ...).

    Evaluate or checkpoint with these: they are the Polyak-Ruppert average once step
    ``t0`` has passed, and equal the current parameters before.

    Raises:
        ValueError: when ``state`` holds no `AsgdState`, or more than one.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.asgd(0.1)
        >>> state = tx.init({"w": jnp.ones(2)})
        >>> dlopt.asgd_averaged_params(state)
        {'w': Array([0., 0.], dtype=float32)}
    """
    found = [
        node
        for node in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, AsgdState))
        if isinstance(node, AsgdState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"asgd_averaged_params needs a state holding exactly one AsgdState (from "
            f"dlopt.asgd), found {len(found)}."
        )
    return found[0].ax
