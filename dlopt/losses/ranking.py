"""Listwise ranking loss: the softmax cross-entropy between scores and relevance labels.

Ranking losses act on the last axis (the list of items); leading axes are batch axes.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dlopt.losses.checks import check_floating


def _safe_reduce(
    a: jax.Array,
    where: jax.Array | None,
    reduce_fn: Callable[..., jax.typing.ArrayLike] | None,
) -> jax.Array:
    """``reduce_fn(a, where=where)``; a mean over no valid list gives 0, not NaN.

    Unreduced (``reduce_fn=None``), masked lists are set to 0 so that summing the result by
    hand equals ``reduce_fn=jnp.sum``. NaN already in ``a`` is never hidden.
    """
    output = reduce_fn(a, where=where) if reduce_fn is not None else a
    if reduce_fn is jnp.mean:
        input_valid = jnp.logical_not(jnp.any(jnp.isnan(a)))
        output = jnp.where(jnp.isnan(output) & input_valid, 0.0, output)
    if reduce_fn is None and where is not None:
        output = jnp.where(where, output, 0.0)
    return output


def ranking_softmax_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    where: jax.typing.ArrayLike | None = None,
    weights: jax.typing.ArrayLike | None = None,
    reduce_fn: Callable[..., jax.typing.ArrayLike] | None = jnp.mean,
) -> jax.Array:
    r"""Ranking softmax loss (ListNet-style, top-one probabilities).

    .. math::
      \ell(s, y) = -\sum_i w_i y_i \log \frac{\exp s_i}{\sum_{j \in \text{valid}} \exp s_j},

    over the valid items of each list (``where``). A list with no valid item is left out
    of the reduction; with ``reduce_fn=jnp.mean`` and no valid list at all the loss is 0.

    Args:
      logits: ``[..., list_size]`` item scores.
      labels: ``[..., list_size]`` relevance labels.
      where: optional ``[..., list_size]`` mask of the valid items.
      weights: optional ``[..., list_size]`` item weights.
      reduce_fn: ``jnp.mean``, ``jnp.sum`` or None (one loss per list).

    Returns:
      the reduced loss, or one per list with ``reduce_fn=None``.

    References:
      Cao et al., `Learning to Rank: From Pairwise Approach to Listwise Approach
      <https://doi.org/10.1145/1273496.1273513>`_, ICML 2007; Bruch et al., `An Analysis of
      the Softmax Cross Entropy Loss for Learning-to-Rank with Binary Relevance
      <https://doi.org/10.1145/3341981.3344221>`_, ICTIR 2019.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import ranking_softmax_loss
      >>> loss = ranking_softmax_loss(jnp.array([2.0, 1.0, 3.0]), jnp.array([1.0, 0.0, 0.0]))
      >>> print(f"{loss:.3f}")
      1.408
    """
    check_floating("logits", logits)
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels).astype(logits.dtype)
    if where is not None:
        labels = jnp.where(where, labels, 0.0)
        # Masked items leave the normalizer (log_softmax's own where), and a list with no
        # valid item never sees -inf, so no NaN reaches the gradient.
        any_valid = jnp.any(where, axis=-1, keepdims=True)
        where_items = jnp.logical_or(where, ~any_valid)
        log_probs = jax.nn.log_softmax(logits, axis=-1, where=where_items)
        log_probs = jnp.where(where, log_probs, 0.0)
    else:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
    if weights is not None:
        labels = labels * jnp.broadcast_to(weights, labels.shape)
    loss = -jnp.sum(labels * log_probs, axis=-1, where=where)
    if where is not None:
        where = jnp.any(where, axis=-1)
    return _safe_reduce(loss, where, reduce_fn)
