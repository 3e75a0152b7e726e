"""dlopt.losses at the edges: huge logits, masks, zero probabilities; and eager validation.

Stability: finite values and gradients where a naive formula overflows or gives NaN.
Validation: bad static arguments fail with one line naming the argument; mathematically
valid edge values are accepted.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlopt import losses

HUGE = jnp.array([[3e4, -3e4, 1e4], [-1e4, 2e4, -3e4]], jnp.float32)
ONE_HOT = jnp.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], jnp.float32)
INT = jnp.array([1, 2])


def _ctc(x):
    labels, pads = jnp.array([[1, 2], [2, 2]]), jnp.zeros((2, 2), jnp.float32)
    logits = jnp.stack([x, x, x, x], axis=1)  # [2, 4, 3]
    return losses.ctc_loss(logits, jnp.zeros((2, 4), jnp.float32), labels, pads)


# Loss of the huge logits, as a function of them.
STABLE: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softmax_cross_entropy": lambda x: losses.softmax_cross_entropy(x, ONE_HOT),
    "safe_softmax_cross_entropy": lambda x: losses.safe_softmax_cross_entropy(x, ONE_HOT),
    "integer_labels": lambda x: losses.softmax_cross_entropy_with_integer_labels(x, INT),
    "poly_loss": lambda x: losses.poly_loss_cross_entropy(x, ONE_HOT),
    "sigmoid_bce": lambda x: losses.sigmoid_binary_cross_entropy(x, ONE_HOT),
    "focal": lambda x: losses.sigmoid_focal_loss(x, ONE_HOT, alpha=0.25),
    "focal-gamma-half": lambda x: losses.sigmoid_focal_loss(x, ONE_HOT, gamma=0.5),
    "log_cosh": losses.log_cosh,
    "huber": losses.huber_loss,
    "kl_log_softmax": lambda x: losses.kl_divergence(jax.nn.log_softmax(x), ONE_HOT),
    "ranking": lambda x: losses.ranking_softmax_loss(x, ONE_HOT),
    "multiclass_hinge": lambda x: losses.multiclass_hinge_loss(x, INT),
    "multiclass_sparsemax": lambda x: losses.multiclass_sparsemax_loss(x, INT),
    "sparsemax": lambda x: losses.sparsemax_loss(x, ONE_HOT),
    "ctc": _ctc,
    "dice": lambda x: losses.dice_loss(x[None], ONE_HOT[None]),
    "ntxent": lambda x: losses.ntxent(x, jnp.array([0, 0])),
}


@pytest.mark.parametrize("name", sorted(STABLE))
def test_huge_logits_give_finite_values_and_gradients(name):
    value, grad = jax.value_and_grad(lambda x: jnp.sum(STABLE[name](x)))(HUGE)
    assert np.isfinite(value), value
    assert np.all(np.isfinite(grad)), grad


def test_huge_logits_give_the_exact_cross_entropy():
    # logsumexp(x) - x_y: the row [3e4, -3e4, 1e4] with label 1 costs 6e4, not inf or NaN.
    np.testing.assert_allclose(losses.softmax_cross_entropy(HUGE, ONE_HOT), [6e4, 3e4])
    np.testing.assert_allclose(
        losses.softmax_cross_entropy_with_integer_labels(HUGE, INT), [6e4, 5e4]
    )
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(HUGE, ONE_HOT)[0], [3e4, 3e4, 1e4]
    )


MASK = jnp.array([[True, True, False], [False, False, False]])


@pytest.mark.parametrize(
    "loss",
    [
        lambda x: losses.softmax_cross_entropy_with_integer_labels(
            x, jnp.array([0, 0]), where=MASK
        ),
        lambda x: losses.ranking_softmax_loss(x, ONE_HOT, where=MASK),
        lambda x: losses.ranking_softmax_loss(x, ONE_HOT, where=MASK, reduce_fn=None),
        lambda x: losses.cosine_similarity(x, x + 1.0, where=MASK[:1], epsilon=1e-6),
    ],
    ids=["integer_labels", "ranking", "ranking-unreduced", "cosine"],
)
def test_masked_rows_give_finite_values_and_gradients(loss):
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    value, grad = jax.value_and_grad(lambda x: jnp.sum(loss(x)))(x)
    assert np.isfinite(value) and np.all(np.isfinite(grad)), (value, grad)


def test_fully_masked_integer_label_row_is_zero():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = losses.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 0]), where=MASK)
    assert out[1] == 0.0


def test_zero_probabilities_give_finite_kl_gradients():
    # 0 log 0 = 0, in the value and the gradient (optax: NaN in the targets' gradient).
    log_p = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    q = jnp.array([0.0, 0.5, 0.5])
    g_log_p, g_q = jax.grad(lambda a, b: losses.kl_divergence(a, b), argnums=(0, 1))(log_p, q)
    assert np.all(np.isfinite(g_q)) and np.all(np.isfinite(g_log_p))
    log_q = jnp.log(q)  # log 0 = -inf: contributes 0
    value = losses.kl_divergence_with_log_targets(log_p, log_q)
    np.testing.assert_allclose(value, losses.kl_divergence(log_p, q), rtol=1e-6)
    grad = jax.grad(losses.kl_divergence_with_log_targets, argnums=(0, 1))(log_p, log_q)
    assert all(np.all(np.isfinite(g)) for g in grad)


def test_safe_cross_entropy_ignores_minus_inf_logits_of_zero_labels():
    logits = jnp.array([0.0, 1.0, -jnp.inf])
    labels = jnp.array([0.5, 0.5, 0.0])
    value, grad = jax.value_and_grad(losses.safe_softmax_cross_entropy)(logits, labels)
    assert np.isnan(losses.softmax_cross_entropy(logits, labels))  # the plain form: 0 * -inf
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_triplet_margin_uses_absolute_differences_for_odd_degrees():
    # Deliberate difference from optax (signed differences to an odd power).
    a, p, n = jnp.zeros((1, 2)), jnp.array([[-1.0, -1.0]]), jnp.array([[3.0, 0.0]])
    out = losses.triplet_margin_loss(a, p, n, norm_degree=1, margin=0.0, eps=0.0)
    np.testing.assert_allclose(out, [0.0])  # |p| = 2 < |n| = 3
    out = losses.triplet_margin_loss(a, p, n, norm_degree=1, margin=2.0, eps=0.0)
    np.testing.assert_allclose(out, [1.0])


def test_losses_run_under_jit():
    x = jnp.ones((2, 3))
    jitted = jax.jit(losses.huber_loss, static_argnames=())
    np.testing.assert_allclose(jitted(x, delta=2.0), 0.5 * x)
    out = jax.jit(losses.dice_loss, static_argnames=("apply_softmax",))(
        jax.nn.softmax(x)[None], ONE_HOT[None], apply_softmax=False
    )
    assert out.shape == (1,)
    np.testing.assert_allclose(jax.jit(losses.smooth_labels)(ONE_HOT, 0.3).sum(-1), [1.0, 1.0])


BAD = [
    (lambda: losses.huber_loss(jnp.ones(3), delta=-1.0), ValueError, "delta"),
    (lambda: losses.smooth_labels(ONE_HOT, 1.5), ValueError, "alpha"),
    (lambda: losses.smooth_labels(ONE_HOT, -0.1), ValueError, "alpha"),
    (lambda: losses.sigmoid_focal_loss(HUGE, ONE_HOT, gamma=-1.0), ValueError, "gamma"),
    (lambda: losses.sigmoid_focal_loss(HUGE, ONE_HOT, alpha=2.0), ValueError, "alpha"),
    (lambda: losses.cosine_similarity(HUGE, HUGE, epsilon=-1.0), ValueError, "epsilon"),
    (lambda: losses.squared_error(jnp.ones(3), jnp.ones((3, 1))), ValueError, "targets"),
    (lambda: losses.perceptron_loss(jnp.ones(3), jnp.ones(2)), ValueError, "targets"),
    (lambda: losses.squared_error(jnp.ones(3, jnp.int32)), TypeError, "predictions"),
    (lambda: losses.softmax_cross_entropy(INT, ONE_HOT), TypeError, "logits"),
    (
        lambda: losses.softmax_cross_entropy_with_integer_labels(HUGE, ONE_HOT),
        TypeError,
        "labels",
    ),
    (lambda: losses.softmax_cross_entropy_with_integer_labels(HUGE, INT, 2), ValueError, "axis"),
    (lambda: losses.dice_loss(HUGE[None], ONE_HOT[None], reduction="avg"), ValueError, "reduction"),
    (lambda: losses.dice_loss(HUGE[None], ONE_HOT[None], smooth=-1.0), ValueError, "smooth"),
    (
        lambda: losses.ctc_loss(
            HUGE[None], jnp.zeros((1, 2)), INT[None], jnp.zeros((1, 2)), blank_id=3
        ),
        ValueError,
        "blank_id",
    ),
    (
        lambda: losses.ctc_loss(HUGE[None], jnp.zeros((1, 3)), INT[None], jnp.zeros((1, 2))),
        ValueError,
        "logit_paddings",
    ),
    (lambda: losses.ctc_loss(HUGE, jnp.zeros((1, 3)), INT, jnp.zeros(2)), ValueError, "logits"),
    (lambda: losses.ntxent(HUGE, INT, temperature=0.0), ValueError, "temperature"),
    (lambda: losses.ntxent(HUGE, jnp.array([0, 0, 1])), ValueError, "labels"),
    (
        lambda: losses.triplet_margin_loss(HUGE, HUGE, HUGE, norm_degree=0),
        ValueError,
        "norm_degree",
    ),
]


@pytest.mark.parametrize("call, error, name", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_arguments_fail_naming_the_argument(call, error, name):
    with pytest.raises(error, match=name) as info:
        call()
    assert "\n" not in str(info.value)


def test_valid_edge_values_are_accepted():
    x = jnp.array([0.5, 3.0])
    np.testing.assert_allclose(losses.huber_loss(x, delta=0.0), [0.0, 0.0])
    np.testing.assert_allclose(losses.smooth_labels(ONE_HOT, 0.0), ONE_HOT)
    np.testing.assert_allclose(losses.smooth_labels(ONE_HOT, 1.0), jnp.full((2, 3), 1 / 3))
    np.testing.assert_allclose(
        losses.sigmoid_focal_loss(HUGE, ONE_HOT, gamma=0.0),
        losses.sigmoid_binary_cross_entropy(HUGE, ONE_HOT),
    )
    assert np.all(np.isfinite(losses.poly_loss_cross_entropy(HUGE, ONE_HOT, epsilon=-1.0)))
    assert np.all(np.isfinite(losses.sigmoid_focal_loss(HUGE, ONE_HOT, alpha=0.0)))
