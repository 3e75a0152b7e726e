"""dlopt.losses against optax.losses: every name, value and gradient on random inputs.

One `CASES` table (name, inputs, keyword arguments, differentiated positions) drives the
value and gradient parity; the signatures (names, kinds, defaults) and the top-level
aliases are checked for every public optax loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.losses
import pytest
from jax.scipy.special import logsumexp

import dlopt
import dlopt.losses

OPTAX_NAMES = sorted(n for n in dir(optax.losses) if not n.startswith("_"))


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def _normal(rng, *shape):
    return _f32(rng.standard_normal(shape))


def _probs(rng, *shape):
    return jax.nn.softmax(_normal(rng, *shape), axis=-1)


def _one_hot(rng, shape, k):
    return jax.nn.one_hot(rng.integers(0, k, shape), k, dtype=jnp.float32)


def _mask(rng, *shape):
    mask = rng.random(shape) > 0.3
    mask[..., 0] = True  # at least one valid element per row
    return jnp.asarray(mask)


def _ctc_inputs(rng):
    logits = _normal(rng, 2, 6, 4)
    logit_paddings = _f32([[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]])
    labels = jnp.asarray([[1, 2, 2], [3, 1, 0]])
    label_paddings = _f32([[0, 0, 0], [0, 0, 1]])
    return logits, logit_paddings, labels, label_paddings


class Case(NamedTuple):
    name: str
    inputs: Callable[[np.random.Generator], tuple]
    kwargs: dict = {}
    argnums: tuple[int, ...] = (0,)  # positions differentiated (sum of the loss)
    id: str = ""
    rtol: float = 1e-5


CASES = [
    Case("squared_error", lambda r: (_normal(r, 4, 5), _normal(r, 4, 5)), argnums=(0, 1)),
    Case("squared_error", lambda r: (_normal(r, 4, 5),), id="no-targets"),
    Case("l2_loss", lambda r: (_normal(r, 4, 5), _normal(r, 4, 5)), argnums=(0, 1)),
    Case("huber_loss", lambda r: (3 * _normal(r, 4, 5), _normal(r, 4, 5)), {"delta": 0.7}),
    Case("huber_loss", lambda r: (3 * _normal(r, 4, 5),), id="no-targets"),
    Case("log_cosh", lambda r: (3 * _normal(r, 4, 5), _normal(r, 4, 5)), argnums=(0, 1)),
    Case("cosine_similarity", lambda r: (_normal(r, 4, 5), _normal(r, 4, 5)), argnums=(0, 1)),
    Case(
        "cosine_similarity",
        lambda r: (_normal(r, 4, 5), _normal(r, 4, 5)),
        {"epsilon": 1e-3, "axis": 0},
        id="axis0",
    ),
    Case(
        "cosine_distance",
        lambda r: (_normal(r, 4, 5), _normal(r, 4, 5)),
        {"where": _mask(np.random.default_rng(9), 4, 5)},
        id="where",
    ),
    Case("smooth_labels", lambda r: (_one_hot(r, (4,), 5), 0.1)),
    Case("softmax_cross_entropy", lambda r: (_normal(r, 4, 5), _probs(r, 4, 5)), argnums=(0, 1)),
    Case(
        "softmax_cross_entropy",
        lambda r: (_normal(r, 4, 5), _one_hot(r, (4,), 5), -1, _mask(r, 4, 5)),
        id="where",
    ),
    Case(
        "safe_softmax_cross_entropy",
        lambda r: (_normal(r, 4, 5), _one_hot(r, (4,), 5)),
        argnums=(0, 1),  # zero labels: the labels' gradient is log_softmax there
    ),
    Case(
        "softmax_cross_entropy_with_integer_labels",
        lambda r: (_normal(r, 4, 5), jnp.asarray(r.integers(0, 5, (4,)))),
    ),
    Case(
        "softmax_cross_entropy_with_integer_labels",
        lambda r: (_normal(r, 2, 3, 4), jnp.asarray(r.integers(0, 12, (2,))), (1, 2)),
        id="axis-tuple",
    ),
    Case(
        "softmax_cross_entropy_with_integer_labels",
        lambda r: (_normal(r, 4, 5), jnp.asarray(r.integers(0, 5, (4,))), -1, _mask(r, 4, 5)),
        id="where",
    ),
    Case("poly_loss_cross_entropy", lambda r: (_normal(r, 4, 5), _probs(r, 4, 5))),
    Case(
        "poly_loss_cross_entropy",
        lambda r: (_normal(r, 4, 5), _one_hot(r, (4,), 5)),
        {"epsilon": -1.0, "where": jnp.ones((4, 5), bool)},
        id="eps-1",
    ),
    Case(
        "sigmoid_binary_cross_entropy",
        lambda r: (5 * _normal(r, 4, 5), _f32(r.random((4, 5)))),
        argnums=(0, 1),
    ),
    Case("sigmoid_focal_loss", lambda r: (5 * _normal(r, 4, 5), _f32(r.random((4, 5)) > 0.5))),
    Case(
        "sigmoid_focal_loss",
        lambda r: (5 * _normal(r, 4, 5), _f32(r.random((4, 5)))),
        {"alpha": 0.25, "gamma": 0.5},
        id="alpha-soft",
    ),
    Case("hinge_loss", lambda r: (_normal(r, 8), _f32(np.sign(r.standard_normal(8))))),
    Case("perceptron_loss", lambda r: (_normal(r, 8), _f32(np.sign(r.standard_normal(8))))),
    Case("multiclass_hinge_loss", lambda r: (_normal(r, 4, 5), jnp.asarray(r.integers(0, 5, 4)))),
    Case(
        "multiclass_perceptron_loss",
        lambda r: (_normal(r, 4, 5), jnp.asarray(r.integers(0, 5, 4))),
    ),
    Case("sparsemax_loss", lambda r: (2 * _normal(r, 8), jnp.asarray(r.integers(0, 2, 8)))),
    Case(
        "multiclass_sparsemax_loss",
        lambda r: (_normal(r, 4, 5), jnp.asarray(r.integers(0, 5, 4))),
    ),
    Case(
        "kl_divergence",
        lambda r: (jax.nn.log_softmax(_normal(r, 4, 5)), _probs(r, 4, 5)),
        argnums=(0, 1),
    ),
    Case(
        "kl_divergence_with_log_targets",
        lambda r: (jax.nn.log_softmax(_normal(r, 4, 5)), jax.nn.log_softmax(_normal(r, 4, 5))),
        argnums=(0, 1),
    ),
    Case(
        "generalized_kl_divergence",
        lambda r: (_normal(r, 4, 5), _f32(r.random((4, 5)) + 0.1), 0),
        argnums=(0, 1),
    ),
    Case("ctc_loss", _ctc_inputs, {"blank_id": 0}),
    Case("ctc_loss", _ctc_inputs, {"blank_id": 3}, id="blank3"),
    Case("dice_loss", lambda r: (_normal(r, 2, 4, 4, 3), _one_hot(r, (2, 4, 4), 3))),
    Case(
        "dice_loss",
        lambda r: (_normal(r, 2, 4, 4, 3), _one_hot(r, (2, 4, 4), 3)),
        {
            "class_weights": _f32([1.0, 2.0, 0.5]),
            "alpha": 0.3,
            "beta": 0.7,
            "reduction": "none",
            "ignore_background": True,
        },
        id="tversky",
    ),
    Case("binary_dice_loss", lambda r: (_normal(r, 2, 6), _f32(r.random((2, 6)) > 0.5))),
    Case(
        "multiclass_generalized_dice_loss",
        lambda r: (_normal(r, 2, 4, 4, 3), _one_hot(r, (2, 4, 4), 3)),
    ),
    Case("ranking_softmax_loss", lambda r: (_normal(r, 3, 5), _f32(r.integers(0, 3, (3, 5))))),
    Case(
        "ranking_softmax_loss",
        lambda r: (_normal(r, 3, 5), _f32(r.integers(0, 3, (3, 5)))),
        {"where": jnp.asarray(np.arange(5) < np.array([[5], [3], [0]])), "reduce_fn": None},
        id="where-unreduced",
    ),
    Case(
        "ranking_softmax_loss",
        lambda r: (_normal(r, 3, 5), _f32(r.integers(0, 3, (3, 5)))),
        {"weights": _f32(np.linspace(0.5, 1.5, 5)), "reduce_fn": jnp.sum},
        id="weights-sum",
    ),
    Case("ntxent", lambda r: (_normal(r, 6, 3), jnp.asarray([0, 0, 1, 1, 2, 2]), 0.5)),
    Case(
        "triplet_margin_loss",
        lambda r: (_normal(r, 4, 5), _normal(r, 4, 5), _normal(r, 4, 5)),
        argnums=(0, 1, 2),
    ),
    Case(
        "triplet_margin_loss",
        lambda r: (_normal(r, 4, 5), _normal(r, 4, 5), _normal(r, 4, 5)),
        {"norm_degree": 4, "margin": 2.0},
        id="norm4",
    ),
]


def _fenchel_young(lib: Any) -> Callable:
    return lib.losses.make_fenchel_young_loss(max_fun=logsumexp)


def _call(lib: Any, case: Case, args: tuple):
    """``case``'s loss from ``lib`` (dlopt or optax) on ``args``."""
    fn = getattr(lib.losses, case.name)
    return fn(*args, **case.kwargs)


def _value_and_grad(lib: Any, case: Case, args: tuple):
    """The loss and the gradient of its sum in ``case.argnums``, as one jitted program."""
    arrays = [i for i, x in enumerate(args) if isinstance(x, jax.Array)]

    def run(*array_args):
        def total(*diff):
            full = list(args)
            for i, x in zip(arrays, array_args, strict=True):
                full[i] = x
            for i, x in zip(case.argnums, diff, strict=True):
                full[i] = x
            out = _call(lib, case, tuple(full))
            return jnp.sum(out[0] if isinstance(out, tuple) else out), out

        diff = [array_args[arrays.index(i)] for i in case.argnums]
        (_, out), grads = jax.value_and_grad(total, range(len(diff)), has_aux=True)(*diff)
        return out, grads

    return jax.jit(run)(*(args[i] for i in arrays))


def _ids(case: Case) -> str:
    return f"{case.name}-{case.id}" if case.id else case.name


def test_the_table_covers_every_optax_loss():
    covered = {case.name for case in CASES} | {"make_fenchel_young_loss", "convex_kl_divergence"}
    covered |= {"ctc_loss_with_forward_probs"}  # tested below, with its forward probabilities
    assert covered == set(OPTAX_NAMES)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_value_and_gradient_match_optax(case):
    args = case.inputs(np.random.default_rng(0))
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        want, want_grad = _value_and_grad(optax, case, args)
    got, got_grad = _value_and_grad(dlopt, case, args)
    np.testing.assert_allclose(got, want, rtol=case.rtol, atol=1e-6)
    assert got.dtype == want.dtype and got.shape == want.shape
    for g, w in zip(got_grad, want_grad, strict=True):
        np.testing.assert_allclose(g, w, rtol=case.rtol, atol=1e-5)


def test_ctc_forward_probabilities_match_optax():
    args = _ctc_inputs(np.random.default_rng(1))
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        want = optax.losses.ctc_loss_with_forward_probs(*args)
    got = dlopt.losses.ctc_loss_with_forward_probs(*args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_fenchel_young_loss_matches_optax():
    rng = np.random.default_rng(2)
    scores, targets = _normal(rng, 3, 4), _probs(rng, 3, 4)
    want = _fenchel_young(optax)(scores, targets)
    got = _fenchel_young(dlopt)(scores, targets)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    grad = jax.grad(lambda s: _fenchel_young(dlopt)(s, targets).sum())(scores)
    np.testing.assert_allclose(grad, jax.nn.softmax(scores) - targets, atol=1e-6)


def test_convex_kl_divergence_is_the_deprecated_generalized_one():
    rng = np.random.default_rng(3)
    log_p, q = _normal(rng, 4, 5), _f32(rng.random((4, 5)))
    with pytest.warns(DeprecationWarning, match="use generalized_kl_divergence"):
        got = dlopt.losses.convex_kl_divergence(log_p, q)
    np.testing.assert_allclose(got, dlopt.losses.generalized_kl_divergence(log_p, q))


@pytest.mark.parametrize("name", OPTAX_NAMES)
def test_signature_is_optax_s(name):
    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(getattr(dlopt.losses, name)) == params(getattr(optax.losses, name))


def test_top_level_aliases_are_the_losses():
    top = [n for n in OPTAX_NAMES if hasattr(optax, n)]
    assert len(top) == 19
    assert all(getattr(dlopt, n) is getattr(dlopt.losses, n) for n in top)
    assert dlopt.losses is not None and "losses" in dir(dlopt)
