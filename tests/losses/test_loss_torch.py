"""dlopt.losses against torch.nn.functional, value and gradient, wherever torch has the loss.

One `TORCH_CASES` table: each row builds numpy inputs, the dlopt loss and the torch loss on
the same inputs (the first input differentiated in both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlopt import losses

RNG = np.random.default_rng(0)
LOGITS = (3 * RNG.standard_normal((6, 5))).astype(np.float32)
INT_LABELS = RNG.integers(0, 5, 6)
PROBS = np.asarray(jax.nn.softmax(RNG.standard_normal((6, 5)).astype(np.float32)))
BINARY = (RNG.random((6, 5)) > 0.5).astype(np.float32)
SOFT = RNG.random((6, 5)).astype(np.float32)
A, B, C = (RNG.standard_normal((6, 5)).astype(np.float32) for _ in range(3))


def _ctc_torch(log_probs, labels, input_lengths, label_lengths, blank):
    return F.ctc_loss(
        log_probs.log_softmax(-1).transpose(0, 1),
        labels,
        input_lengths,
        label_lengths,
        blank=blank,
        reduction="none",
        zero_infinity=False,
    )


CTC_LOGITS = RNG.standard_normal((2, 7, 4)).astype(np.float32)
CTC_LABELS = np.array([[1, 2, 2], [3, 1, 0]])
CTC_LOGIT_PAD = np.array([[0] * 7, [0] * 5 + [1] * 2], np.float32)
CTC_LABEL_PAD = np.array([[0, 0, 0], [0, 0, 1]], np.float32)


class TorchCase(NamedTuple):
    id: str
    inputs: tuple  # numpy arrays; the first is differentiated
    ours: Callable  # (*jax arrays) -> loss array
    theirs: Callable  # (*torch tensors) -> loss tensor (same shape as ours)


TORCH_CASES = [
    TorchCase(
        "cross_entropy-int",
        (LOGITS, INT_LABELS),
        losses.softmax_cross_entropy_with_integer_labels,
        lambda x, y: F.cross_entropy(x, y, reduction="none"),
    ),
    TorchCase(
        "cross_entropy-probs",
        (LOGITS, PROBS),
        losses.softmax_cross_entropy,
        lambda x, y: F.cross_entropy(x, y, reduction="none"),
    ),
    TorchCase(
        "cross_entropy-label_smoothing",
        (LOGITS, INT_LABELS),
        lambda x, y: losses.softmax_cross_entropy(
            x, losses.smooth_labels(jax.nn.one_hot(y, 5, dtype=x.dtype), 0.1)
        ),
        lambda x, y: F.cross_entropy(x, y, reduction="none", label_smoothing=0.1),
    ),
    TorchCase(
        "binary_cross_entropy_with_logits",
        (LOGITS, SOFT),
        losses.sigmoid_binary_cross_entropy,
        lambda x, y: F.binary_cross_entropy_with_logits(x, y, reduction="none"),
    ),
    TorchCase(
        "mse",
        (A, B),
        lambda x, y: 2 * losses.l2_loss(x, y),
        lambda x, y: F.mse_loss(x, y, reduction="none"),
    ),
    TorchCase(
        "huber",
        (LOGITS, A),
        lambda x, y: losses.huber_loss(x, y, delta=0.7),
        lambda x, y: F.huber_loss(x, y, reduction="none", delta=0.7),
    ),
    TorchCase(
        "smooth_l1",
        (LOGITS, A),
        lambda x, y: losses.huber_loss(x, y, delta=0.5) / 0.5,
        lambda x, y: F.smooth_l1_loss(x, y, reduction="none", beta=0.5),
    ),
    TorchCase(
        "kl_div",
        (np.log(PROBS), SOFT / SOFT.sum(-1, keepdims=True)),
        losses.kl_divergence,
        lambda x, y: F.kl_div(x, y, reduction="none").sum(-1),
    ),
    TorchCase(
        "kl_div-log_target",
        (np.log(PROBS), np.log(SOFT / SOFT.sum(-1, keepdims=True))),
        losses.kl_divergence_with_log_targets,
        lambda x, y: F.kl_div(x, y, reduction="none", log_target=True).sum(-1),
    ),
    TorchCase(
        "cosine_similarity",
        (A, B),
        losses.cosine_similarity,
        lambda x, y: F.cosine_similarity(x, y, dim=-1, eps=1e-12),
    ),
    TorchCase(
        "multi_margin-two-classes",
        (A[:, :2], INT_LABELS % 2),
        losses.multiclass_hinge_loss,
        lambda x, y: 2 * F.multi_margin_loss(x, y, reduction="none"),
    ),
    TorchCase(
        "ctc",
        (CTC_LOGITS, CTC_LABELS),
        lambda x, y: losses.ctc_loss(x, CTC_LOGIT_PAD, y, CTC_LABEL_PAD),
        lambda x, y: _ctc_torch(x, y, torch.tensor([7, 5]), torch.tensor([3, 2]), 0),
    ),
    TorchCase(
        "ctc-blank3",
        (CTC_LOGITS, CTC_LABELS % 3),
        lambda x, y: losses.ctc_loss(x, CTC_LOGIT_PAD, y, CTC_LABEL_PAD, blank_id=3),
        lambda x, y: _ctc_torch(x, y, torch.tensor([7, 5]), torch.tensor([3, 2]), 3),
    ),
]

for _p in (1, 2, 3):
    TORCH_CASES.append(
        TorchCase(
            f"triplet_margin-p{_p}",
            (A, B, C),
            lambda a, p, n, q=_p: losses.triplet_margin_loss(a, p, n, norm_degree=q, eps=0.0),
            lambda a, p, n, q=_p: F.triplet_margin_loss(
                a, p, n, p=q, eps=0.0, margin=1.0, reduction="none"
            ),
        )
    )


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: c.id)
def test_value_and_gradient_match_torch(case):
    def ours_total(x, *rest):
        return jnp.sum(case.ours(x, *rest))

    jax_inputs = [jnp.asarray(x) for x in case.inputs]
    got = case.ours(*jax_inputs)
    got_grad = jax.grad(ours_total)(*jax_inputs)

    torch_inputs = [torch.tensor(x) for x in case.inputs]
    torch_inputs[0].requires_grad_(True)
    want = case.theirs(*torch_inputs)
    want.sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_grad, torch_inputs[0].grad.numpy(), rtol=1e-4, atol=1e-5)
