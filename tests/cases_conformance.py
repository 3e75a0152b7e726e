"""The conformance table: one or more entries per exported transform factory.

Shared by test_conformance.py (the chex kit on every entry) and test_layout_shelf.py (every
entry gives the same parameters in the tree and the flat layout).
"""

from __future__ import annotations

import warnings

import cases_adam_family
import cases_contrib_b
import cases_large_batch
import cases_modern
import cases_schedule_free
import cases_second_order
import cases_shampoo
import jax
import jax.numpy as jnp
from helpers import Entry

import dlopt


def _matrices(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _labels(params):
    return jax.tree.map(lambda p: "matrix" if jnp.ndim(p) > 1 else "other", params)


def _frozen_by_path(params):
    # default_params' paths: "matrix", "vector", "scalar", "nested/0", "nested/1/0" (under
    # "0/" when the kit wraps them as (params, None)), so patterns anchor at a "/" or the start
    rules = {"(^|/)nested/": "frozen", "(^|/)matrix$": "frozen"}
    return dlopt.path_labels(params, rules, default="train")


def _stacked_matrices(updates):  # matrices as stacks of rows, the rest whole
    return jax.tree.map(lambda u: 1 if jnp.ndim(u) > 1 else 0, updates)


def _halve(updates, params):
    return jax.tree.map(lambda u: 0.5 * u, updates)


def _schedule(count):
    return 0.1 / (1.0 + count.astype(jnp.float32))


def _norms(updates):
    return jax.tree.map(lambda u: jnp.sqrt(jnp.sum(u * u)), updates)


def _half(u, p):
    return 0.5 * u


def _quiet(factory, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return factory(*args)


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
    Entry("clip_by_update_rms", "", lambda: dlopt.clip_by_update_rms(0.5)),
    Entry(
        "clip_by_update_rms",
        "stacked",
        lambda: dlopt.clip_by_update_rms(0.5, stacked_axes=_stacked_matrices),
    ),
    Entry("clip_by_norm_history", "", lambda: dlopt.clip_by_norm_history(interval=4)),
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
        "skip_step_on_spikes",
        "",
        lambda: dlopt.skip_step_on_spikes(dlopt.adamw(1e-2), interval=4, min_history=2),
        DECAYS,
    ),
    Entry(
        "quantized",
        "adam",  # tiny blocks and leaves, so the default params' matrices are quantized
        lambda: dlopt.quantized(dlopt.adam(1e-2), block_size=4, min_size=4),
    ),
    Entry(
        "quantized",
        "adam_4bit",
        lambda: dlopt.quantized(dlopt.adam(1e-2), bits=4, block_size=4, min_size=4),
    ),
    Entry("fused", "adamw", lambda: dlopt.fused(dlopt.adamw(1e-2)), DECAYS),
    Entry(
        "fused",
        "grouped",
        lambda: dlopt.fused(
            dlopt.partition({"matrix": dlopt.adam(1e-2), "other": dlopt.sgd(0.1)}, _labels),
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
    # contrib optimizers (optax.contrib): acprop ... momo_adam
    Entry("scale_by_acprop", "", dlopt.scale_by_acprop),
    Entry("acprop", "decay", lambda: dlopt.acprop(1e-2, weight_decay=1e-2), DECAYS),
    Entry("scale_by_cocob", "", dlopt.scale_by_cocob),
    Entry("cocob", "decay", lambda: dlopt.cocob(weight_decay=1e-2), DECAYS),
    Entry("scale_by_dog", "distance", lambda: dlopt.scale_by_dog(("distance", 1e-3))),
    Entry("dog", "learning_rate", lambda: dlopt.dog(init_step=("learning_rate", 1e-2))),
    Entry("dog", "heuristic_decay", lambda: dlopt.dog(0.5, weight_decay=1e-2), DECAYS),
    Entry("scale_by_dowg", "", dlopt.scale_by_dowg),
    Entry("dowg", "decay", lambda: dlopt.dowg(init_estim_sq_dist=1e-2, weight_decay=1e-2), DECAYS),
    Entry("scale_by_madgrad", "schedule", lambda: dlopt.scale_by_madgrad(_schedule)),
    Entry("madgrad", "decay", lambda: dlopt.madgrad(1e-2, weight_decay=1e-2), DECAYS),
    Entry("mechanize", "adam", lambda: dlopt.mechanize(dlopt.adam(1.0))),
    Entry("momo", "", dlopt.momo, {"extra_args": {"value": 1.0}}),
    Entry(
        "momo",
        "adapt_decay",
        lambda: dlopt.momo(weight_decay=1e-2, adapt_lower_bound=True),
        {"extra_args": {"value": 1.0}, **DECAYS},
    ),
    Entry("momo_adam", "", dlopt.momo_adam, {"extra_args": {"value": 1.0}}),
    Entry(
        "momo_adam",
        "adapt_decay",
        lambda: dlopt.momo_adam(weight_decay=1e-2, adapt_lower_bound=True),
        {"extra_args": {"value": 1.0}, **DECAYS},
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
                {"frozen": dlopt.set_to_zero(), "train": dlopt.adam(1e-2)}, _frozen_by_path
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
    *cases_shampoo.CONFORMANCE,
    # optax API: wrappers, layouts, monitoring (issue 21)
    Entry("apply_every", "", lambda: dlopt.apply_every(2)),
    Entry(
        "multi_steps",
        "schedule_skip",
        lambda: dlopt.MultiSteps(
            dlopt.adam(1e-2), lambda step: 2, should_skip_update_fn=dlopt.skip_not_finite
        ).gradient_transformation(),
    ),
    Entry(
        "multi_transform",
        "",
        lambda: dlopt.multi_transform(
            {"matrix": dlopt.adam(1e-2), "other": dlopt.sgd(0.1)}, _labels
        ),
    ),
    Entry("flatten", "", lambda: dlopt.flatten(dlopt.adam(1e-2))),
    Entry(
        "conditionally_mask",
        "",
        lambda: dlopt.conditionally_mask(dlopt.sgd(0.1, momentum=0.9), lambda step: step % 2 == 0),
    ),
    Entry(
        "conditionally_transform",
        "",
        lambda: dlopt.conditionally_transform(dlopt.adam(1e-2), lambda step: step >= 1),
    ),
    Entry("snapshot", "", lambda: dlopt.chain(dlopt.snapshot("g", _norms), dlopt.sgd(0.1))),
    Entry("monitor", "", lambda: dlopt.chain(dlopt.monitor({"g": _norms}), dlopt.sgd(0.1))),
    Entry(
        "measure_with_ema",
        "in_monitor",
        lambda: dlopt.monitor({"ema": dlopt.measure_with_ema(_norms, 0.9)}),
    ),
    Entry(
        "selective_transform",
        "",
        lambda: dlopt.selective_transform(dlopt.adam(1e-2), freeze_mask=_matrices),
    ),
    Entry("stateless_with_tree_map", "", lambda: dlopt.stateless_with_tree_map(_half)),
    Entry(
        "scale_by_param_block_norm",
        "",
        lambda: dlopt.chain(dlopt.scale_by_param_block_norm(), dlopt.scale(-0.1)),
    ),
    Entry(
        "scale_by_distance_over_gradients",
        "",
        lambda: dlopt.chain(dlopt.scale_by_distance_over_gradients(), dlopt.scale(-1.0)),
    ),
    Entry("optimistic_adam", "", lambda: _quiet(dlopt.optimistic_adam, 1e-2)),
    # PSGD Kron (issue 22): defaults, and merged dims in padded blocks with a schedule
    Entry("kron", "", lambda: dlopt.kron(1e-2, weight_decay=1e-2), DECAYS),
    Entry(
        "scale_by_kron",
        "merged_blocks",
        lambda: dlopt.scale_by_kron(
            merge_small_dims=True,
            target_merged_dim_size=4,
            partition_grads_into_blocks=True,
            block_size=2,
            preconditioner_update_probability=0.5,
        ),
    ),  # fmt: skip
    *cases_contrib_b.CONFORMANCE,
]
