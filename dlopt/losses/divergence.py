"""Kullback–Leibler divergences: against probabilities, against log-probabilities, generalized.

Entropy terms use :math:`0 \\log 0 = 0` with a double ``where``, so a zero target gives a
finite value and a finite gradient.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from dlopt.losses.checks import check_floating


def _xlogx(x: jax.Array) -> jax.Array:
    """:math:`x \\log x` with :math:`0 \\log 0 = 0` and no NaN in the gradient at 0."""
    positive = x > 0
    return jnp.where(positive, x * jnp.log(jnp.where(positive, x, 1)), 0)


def kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""KL divergence :math:`\mathrm{KL}(q \,\|\, p) = \sum_i q_i (\log q_i - \log p_i)`.

    ``log_predictions`` is :math:`\log p` (log-space avoids underflow), ``targets`` is
    :math:`q`; terms with :math:`q_i = 0` count 0. Same as torch's
    ``kl_div(log_predictions, targets, reduction="none").sum(-1)``.

    Deliberate difference from optax: the gradient in ``targets`` at :math:`q_i = 0` is
    finite (optax's is NaN, from differentiating ``log 0`` under a ``where``).

    Args:
      log_predictions: log-probabilities of the predicted distribution ``[..., dim]``.
      targets: probabilities of the target distribution ``[..., dim]``.
      axis: axis or axes summed over.
      where: optional mask of the elements to include.

    Returns:
      the divergence per distribution (``axis`` reduced).

    References:
      Kullback and Leibler, `On Information and Sufficiency
      <https://www.jstor.org/stable/2236703>`_, 1951.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import kl_divergence
      >>> q = jnp.array([0.5, 0.5, 0.0])
      >>> print(kl_divergence(jnp.log(jnp.array([0.25, 0.25, 0.5])), q))
      0.6931...
    """
    check_floating("log_predictions", log_predictions)
    check_floating("targets", targets)
    targets = jnp.asarray(targets)
    loss = _xlogx(targets) - targets * log_predictions
    return jnp.sum(loss, axis=axis, where=where)


def kl_divergence_with_log_targets(
    log_predictions: jax.typing.ArrayLike,
    log_targets: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""`kl_divergence` with the targets in log-space: :math:`\sum_i e^{\ell_i}(\ell_i - \log p_i)`.

    A target of log-probability ``-inf`` contributes 0 (deliberate difference from optax,
    whose value is NaN there: ``0 * inf``). Same as torch's
    ``kl_div(log_predictions, log_targets, reduction="none", log_target=True).sum(-1)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import kl_divergence_with_log_targets
      >>> log_q = jnp.log(jnp.array([0.5, 0.5]))
      >>> print(kl_divergence_with_log_targets(jnp.log(jnp.array([0.25, 0.75])), log_q))
      0.1438...
    """
    check_floating("log_predictions", log_predictions)
    check_floating("log_targets", log_targets)
    log_targets = jnp.asarray(log_targets)
    present = log_targets > -jnp.inf
    safe = jnp.where(present, log_targets, 0)
    loss = jnp.where(present, jnp.exp(safe) * (safe - log_predictions), 0)
    return jnp.sum(loss, axis=axis, where=where)


def generalized_kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Generalized KL divergence, for unnormalized nonnegative measures.

    .. math::
      D(q \,\|\, p) = \sum_i q_i (\log q_i - \log p_i) + p_i - q_i ,

    the Bregman divergence of :math:`f(x) = x \log x - x`; it equals `kl_divergence` when
    both sum to one.

    References:
      Boyd and Vandenberghe, `Convex Optimization
      <https://stanford.edu/~boyd/cvxbook/bv_cvxbook.pdf>`_, 2004, p. 90.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import generalized_kl_divergence
      >>> print(generalized_kl_divergence(jnp.log(jnp.array([1.0, 2.0])), jnp.array([1.0, 1.0])))
      0.3068...
    """
    x = kl_divergence(log_predictions, targets, axis=axis, where=where)
    y = jnp.sum(jnp.exp(log_predictions) - targets, axis=axis, where=where)
    return x + y


def convex_kl_divergence(
    log_predictions: jax.typing.ArrayLike,
    targets: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Deprecated alias of `generalized_kl_divergence` (optax's old name); warns once per call."""
    warnings.warn(
        "The function convex_kl_divergence is deprecated. Please use "
        "generalized_kl_divergence instead (same arguments, same result).",
        DeprecationWarning,
        stacklevel=2,
    )
    return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)
