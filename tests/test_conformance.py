"""Every transform dlopt exports passes the conformance kit (`dlopt.testing.check_transformation`).

`TRANSFORMS` has one or more entries per exported factory; `test_table_is_complete` fails when
a public function returning a GradientTransformation has no entry, so no export skips the kit.
"""

from __future__ import annotations

import cases_adam_family
import cases_large_batch
import cases_modern
import cases_schedule_free
import cases_second_order
import jax
import jax.numpy as jnp
import pytest
from helpers import Entry
from support.exports import exported_transform_factories

import dlopt
from dlopt.testing import check_transformation


def _matrices(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _labels(params):
    return jax.tree.map(lambda p: "matrix" if jnp.ndim(p) > 1 else "other", params)


def _group_names(tree):
    return {label: label for label in tree}  # fused hands the inner tx {label: {dtype: buffer}}


def _frozen_by_path(params):
    # default_params' paths: "matrix", "vector", "scalar", "nested/0", "nested/1/0" (under
    # "0/" when the kit wraps them as (params, None)), so patterns anchor at a "/" or the start
    rules = {"(^|/)nested/": "frozen", "(^|/)matrix$": "frozen"}
    return dlopt.path_labels(params, rules, default="train")


def _halve(updates, params):
    return jax.tree.map(lambda u: 0.5 * u, updates)


def _schedule(count):
    return 0.1 / (1.0 + count.astype(jnp.float32))


DECAYS = {"decays_weights": True}

TRANSFORMS = [
    # the contract and its combinators
    Entry("identity", "", dlopt.identity),
    Entry("stateless", "", lambda: dlopt.stateless(_halve)),
    Entry("with_extra_args_support", "", lambda: dlopt.with_extra_args_support(dlopt.scale(0.5))),
    Entry("chain", "", lambda: dlopt.chain(dlopt.scale(2.0), dlopt.trace(0.5))),
    Entry("chain", "empty", dlopt.chain),
    Entry(
        "named_chain",
        "",
        lambda: dlopt.named_chain(("m", dlopt.trace(0.9)), ("lr", dlopt.scale(-0.1))),
    ),
    Entry("masked", "", lambda: dlopt.masked(dlopt.sgd(0.1, momentum=0.9), _matrices)),
    Entry(
        "partition",
        "",
        lambda: dlopt.partition({"matrix": dlopt.adam(1e-2), "other": dlopt.sgd(0.1)}, _labels),
    ),
    # scaling blocks
    Entry("scale", "", lambda: dlopt.scale(-0.1)),
    Entry("scale_by_schedule", "", lambda: dlopt.scale_by_schedule(_schedule)),
    Entry("scale_by_learning_rate", "float", lambda: dlopt.scale_by_learning_rate(0.1)),
    # optimizers
    Entry("trace", "", lambda: dlopt.trace(0.9, nesterov=True)),
    Entry("sgd", "plain", lambda: dlopt.sgd(0.1)),
    Entry("sgd", "momentum", lambda: dlopt.sgd(0.1, momentum=0.9)),
    Entry("sgd", "nesterov_schedule", lambda: dlopt.sgd(_schedule, momentum=0.9, nesterov=True)),
    Entry("scale_by_rss", "", dlopt.scale_by_rss),
    Entry("adagrad", "", lambda: dlopt.adagrad(0.1)),
    Entry("scale_by_rms", "", dlopt.scale_by_rms),
    Entry("scale_by_stddev", "", dlopt.scale_by_stddev),
    Entry(
        "rmsprop",
        "centered_nesterov",
        lambda: dlopt.rmsprop(1e-2, centered=True, momentum=0.9, nesterov=True),
    ),
    Entry("scale_by_adadelta", "", dlopt.scale_by_adadelta),
    Entry("adadelta", "", lambda: dlopt.adadelta(1.0)),
    Entry(
        "scale_by_adam",
        "nesterov_bf16_mu",
        lambda: dlopt.scale_by_adam(mu_dtype=jnp.bfloat16, nesterov=True),
    ),  # fmt: skip
    Entry("adam", "", lambda: dlopt.adam(1e-2)),
    Entry("adamw", "", lambda: dlopt.adamw(1e-2), DECAYS),
    Entry("nadam", "", lambda: dlopt.nadam(1e-2)),
    Entry("nadamw", "", lambda: dlopt.nadamw(1e-2), DECAYS),
    Entry("scale_by_adamax", "", dlopt.scale_by_adamax),
    Entry("adamax", "", lambda: dlopt.adamax(1e-2)),
    Entry("scale_by_lion", "", dlopt.scale_by_lion),
    Entry("lion", "", lambda: dlopt.lion(1e-3), DECAYS),
    # regularizers
    Entry("add_decayed_weights", "", lambda: dlopt.add_decayed_weights(1e-2), DECAYS),
    Entry(
        "add_decayed_weights",
        "masked_schedule",
        lambda: dlopt.add_decayed_weights(_schedule, mask=_matrices),
        DECAYS,
    ),
    Entry("add_l1_subgradient", "", lambda: dlopt.add_l1_subgradient(1e-2), DECAYS),
    # clipping
    Entry("clip", "", lambda: dlopt.clip(0.5)),
    Entry("clip_by_global_norm", "", lambda: dlopt.clip_by_global_norm(1.0)),
    Entry("clip_by_block_rms", "", lambda: dlopt.clip_by_block_rms(0.5)),
    Entry("adaptive_grad_clip", "", lambda: dlopt.adaptive_grad_clip(0.1)),
    # wrappers and the fused path
    Entry("inject_hyperparams", "adam", lambda: dlopt.inject_hyperparams(dlopt.adam)(1e-2)),
    Entry(
        "inject_stateful_hyperparams",
        "sgd",
        lambda: dlopt.inject_stateful_hyperparams(dlopt.sgd)(learning_rate=0.1, momentum=0.9),
    ),
    Entry(
        "inject_hyperparams",
        "sgd_schedule",
        lambda: dlopt.inject_hyperparams(dlopt.sgd)(learning_rate=_schedule, momentum=0.9),
    ),
    Entry("apply_if_finite", "", lambda: dlopt.apply_if_finite(dlopt.sgd(0.1, momentum=0.9), 3)),
    Entry("multi_steps", "", lambda: dlopt.multi_steps(dlopt.adam(1e-2), 2)),
    Entry(
        "quantized",
        "adam",  # tiny blocks and leaves, so the default params' matrices are quantized
        lambda: dlopt.quantized(dlopt.adam(1e-2), block_size=4, min_size=4),
    ),
    Entry("fused", "adamw", lambda: dlopt.fused(dlopt.adamw(1e-2)), DECAYS),
    Entry(
        "fused",
        "grouped",
        lambda: dlopt.fused(
            dlopt.partition({"matrix": dlopt.adam(1e-2), "other": dlopt.sgd(0.1)}, _group_names),
            group_by=_labels,
        ),
    ),
    # plateau
    Entry(
        "reduce_on_plateau",
        "",
        lambda: dlopt.chain(dlopt.sgd(0.1), dlopt.reduce_on_plateau(patience=0)),
        {"extra_args": {"value": 1.0}},
    ),
    # freezing and parameter groups named by path (transfer learning)
    Entry("set_to_zero", "", dlopt.set_to_zero),
    Entry(
        "partition",
        "path_labels_frozen",
        lambda: dlopt.partition(
            {"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-2)}, _frozen_by_path
        ),
    ),
    Entry(
        "fused",
        "path_labels_frozen",
        lambda: dlopt.fused(
            dlopt.partition(
                {"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-2)}, _group_names
            ),
            group_by=_frozen_by_path,
        ),
    ),
    # the families and wrappers added per group (tests/cases_*.py)
    *cases_adam_family.CONFORMANCE,
    *cases_large_batch.CONFORMANCE,
    *cases_modern.CONFORMANCE,
    *cases_schedule_free.CONFORMANCE,
    *cases_second_order.CONFORMANCE,
]


def _id(entry: Entry) -> str:
    return f"{entry.name}-{entry.variant}" if entry.variant else entry.name


@pytest.mark.parametrize("entry", TRANSFORMS, ids=_id)
def test_conformance(entry):
    check_transformation(entry.make(), **entry.kwargs)


def test_table_is_complete():
    exported = exported_transform_factories()
    assert {"sgd", "chain", "identity"} <= exported  # the introspection itself works
    missing = exported - {entry.name for entry in TRANSFORMS}
    assert not missing, f"add conformance entries to TRANSFORMS for {sorted(missing)}"


def test_table_names_are_exported():
    stale = {entry.name for entry in TRANSFORMS} - exported_transform_factories()
    assert not stale, f"TRANSFORMS names factories dlopt does not export: {sorted(stale)}"


MIXED_PRECISION_PARAMS = {
    "w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(2, 3).astype(jnp.bfloat16),
    "b": [jnp.linspace(0.5, 1.0, 3, dtype=jnp.float32)],
}
MIXED_PRECISION = ["sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "nadam", "nadamw",
                   "adamax", "lion", "clip", "clip_by_global_norm", "clip_by_block_rms",
                   "adaptive_grad_clip"]  # fmt: skip


@pytest.mark.parametrize("entry", [e for e in TRANSFORMS if e.name in MIXED_PRECISION], ids=_id)
def test_optimizers_and_clipping_keep_bf16_params_bf16(entry):
    # Updates come back in each parameter's dtype; bf16 arithmetic needs looser tolerances.
    check_transformation(
        entry.make(),
        MIXED_PRECISION_PARAMS,
        check_vmap=False,
        check_pmap=False,
        random_examples=0,
        rtol=2e-2,
        atol=1e-3,
        **entry.kwargs,
    )


def test_completeness_check_sees_new_exports(monkeypatch):
    def clip_everything(limit: float) -> dlopt.GradientTransformation:
        return dlopt.identity()

    clip_everything.__module__ = "dlopt.transforms.clipping"
    monkeypatch.setattr(dlopt, "clip_everything", clip_everything, raising=False)
    assert "clip_everything" in exported_transform_factories()
    with pytest.raises(AssertionError, match="clip_everything"):
        test_table_is_complete()
