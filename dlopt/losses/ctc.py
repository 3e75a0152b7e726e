"""Connectionist temporal classification (CTC) loss: the forward recursion in log space."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlopt.losses.checks import check_floating, check_rank, check_same_shape, shape_of


def ctc_loss_with_forward_probs(
    logits: jax.typing.ArrayLike,
    logit_paddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    label_paddings: jax.typing.ArrayLike,
    *,
    blank_id: int = 0,
    log_epsilon: jax.typing.ArrayLike = -1e5,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""CTC loss and the log forward probabilities.

    The alignments :math:`\pi` are the label sequence with blanks :math:`\phi` inserted and
    symbols repeated; the loss is :math:`-\log \sum_\pi \prod_t p_t(\pi_t)`. The recursion
    keeps two log-probabilities per label position :math:`n` at time :math:`t`:
    :math:`\alpha_\phi(t, n)` (the path ends in a blank after label :math:`n`) and
    :math:`\alpha_y(t, n)` (it ends in label :math:`n`), combined with ``logaddexp``; a
    transition that is not allowed (a label repeated without a blank between) is weighted
    by ``log_epsilon``, a finite stand-in for :math:`\log 0` that keeps gradients finite.
    Per-frame log-probabilities come from ``log_softmax``; the label's column is picked with
    ``take_along_axis`` (no one-hot tensor).

    Args:
      logits: ``[B, T, K]`` logits, K classes including the blank.
      logit_paddings: ``[B, T]``, 1.0 where the frame is padding, else 0.0.
      labels: ``[B, N]`` integer labels, right-padded.
      label_paddings: ``[B, N]``, 1.0 where the label is padding, else 0.0.
      blank_id: the class index of the blank.
      log_epsilon: the stand-in for :math:`\log 0`.

    Returns:
      ``(loss, logalpha_blank, logalpha_nonblank)``: the ``[B]`` per-sequence loss and the
      ``[T, B, N+1]`` and ``[T, B, N]`` log forward probabilities.

    References:
      Graves et al., `Connectionist Temporal Classification: Labelling Unsegmented Sequence
      Data with Recurrent Neural Networks <https://doi.org/10.1145/1143844.1143891>`_, 2006.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import ctc_loss_with_forward_probs
      >>> logits = jnp.zeros((1, 4, 3))
      >>> labels, pads = jnp.array([[1, 2]]), jnp.zeros((1, 2))
      >>> loss, blank, emit = ctc_loss_with_forward_probs(logits, jnp.zeros((1, 4)), labels, pads)
      >>> print(loss, blank.shape, emit.shape)
      [1.6863...] (4, 1, 3) (4, 1, 2)
    """
    check_floating("logits", logits)
    check_rank("logits", logits, 3)
    check_rank("labels", labels, 2)
    check_same_shape("labels", labels, "label_paddings", label_paddings)
    if shape_of(logits)[:2] != shape_of(logit_paddings):
        raise ValueError(
            f"Shape mismatch: logit_paddings has shape {shape_of(logit_paddings)}, logits "
            f"{shape_of(logits)}; pass logit_paddings of shape {shape_of(logits)[:2]} ([B, T])."
        )
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    batch, _, num_classes = logits.shape
    if labels.shape[0] != batch:
        raise ValueError(
            f"Expected `labels` to have batch size {batch}, got {labels.shape[0]}; "
            "pass one label row per logits sequence."
        )
    if not 0 <= blank_id < num_classes:
        raise ValueError(f"blank_id must be in [0, {num_classes}), got blank_id={blank_id}.")
    max_label_len = labels.shape[1]
    dtype = logits.dtype
    logit_paddings = jnp.asarray(logit_paddings, dtype)
    label_paddings = jnp.asarray(label_paddings, dtype)

    logprobs = jax.nn.log_softmax(logits)
    label_lens = max_label_len - jnp.sum(label_paddings, axis=1).astype(jnp.int32)
    # repeat[b, n] == 1 when labels[b, n] == labels[b, n + 1]: no direct emit-to-emit step.
    repeat = (labels[:, :-1] == labels[:, 1:]).astype(dtype)
    repeat = jnp.pad(repeat, ((0, 0), (0, 1)))

    logprobs_phi = jnp.transpose(logprobs[:, :, blank_id : blank_id + 1], (1, 0, 2))  # [T,B,1]
    index = jnp.broadcast_to(labels[:, None, :], (batch, logits.shape[1], max_label_len))
    logprobs_emit = jnp.transpose(jnp.take_along_axis(logprobs, index, axis=2), (1, 0, 2))

    log_eps = jnp.asarray(log_epsilon, dtype)
    phi_init = jnp.full((batch, max_label_len + 1), log_eps, dtype).at[:, 0].set(0.0)
    emit_init = jnp.full((batch, max_label_len), log_eps, dtype)

    def add_to_phi(phi, score):
        """``phi[:, 1:]`` plus ``score`` in log space."""
        return jnp.concatenate([phi[:, :1], jnp.logaddexp(phi[:, 1:], score)], axis=-1)

    def step(carry, x):
        prev_phi, prev_emit = carry
        logprob_emit, logprob_phi, pad = x
        # emit -> phi epsilon transition, except before a repeated label.
        phi = add_to_phi(prev_phi, prev_emit + log_eps * repeat)
        # phi -> emit and emit self-loop.
        next_emit = jnp.logaddexp(phi[:, :-1] + logprob_emit, prev_emit + logprob_emit)
        # phi self-loop, and emit -> phi through a blank only before a repeated label.
        next_phi = add_to_phi(phi + logprob_phi, prev_emit + logprob_phi + log_eps * (1 - repeat))
        pad = pad[:, None]
        next_emit = pad * prev_emit + (1.0 - pad) * next_emit
        next_phi = pad * prev_phi + (1.0 - pad) * next_phi
        return (next_phi, next_emit), (next_phi, next_emit)

    xs = (logprobs_emit, logprobs_phi, logit_paddings.T)
    _, (logalpha_phi, logalpha_emit) = jax.lax.scan(step, (phi_init, emit_init), xs)
    # The last frame takes the final emit -> phi epsilon transition.
    phi_last = add_to_phi(logalpha_phi[-1], logalpha_emit[-1])
    logalpha_phi = logalpha_phi.at[-1].set(phi_last)
    per_seq_loss = -jnp.take_along_axis(phi_last, label_lens[:, None], axis=1)[:, 0]
    return per_seq_loss, logalpha_phi, logalpha_emit


def ctc_loss(
    logits: jax.typing.ArrayLike,
    logit_paddings: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    label_paddings: jax.typing.ArrayLike,
    *,
    blank_id: int = 0,
    log_epsilon: jax.typing.ArrayLike = -1e5,
) -> jax.Array:
    """The ``[B]`` CTC loss per sequence; see `ctc_loss_with_forward_probs` for the arguments.

    Same as torch's ``ctc_loss(log_softmax(logits).transpose(0, 1), labels, input_lengths,
    target_lengths, blank=blank_id, reduction="none")``.

    Example:
      >>> import jax.numpy as jnp
      >>> from dlopt.losses import ctc_loss
      >>> logits = jnp.zeros((1, 4, 3))
      >>> print(ctc_loss(logits, jnp.zeros((1, 4)), jnp.array([[1, 2]]), jnp.zeros((1, 2))))
      [1.6863...]
    """
    loss, _, _ = ctc_loss_with_forward_probs(
        logits, logit_paddings, labels, label_paddings, blank_id=blank_id, log_epsilon=log_epsilon
    )
    return loss
