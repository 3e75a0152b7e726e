"""`dlopt.distributed_shampoo`'s option enums and the eager validation of its arguments."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from dlopt.core import validation


class GraftingType(enum.IntEnum):
    """The first-order rule whose layer-wise norm Shampoo's direction takes (the reference's
    values; ``ADAM`` and ``ADAM_NORMALIZED`` are dlopt's)."""

    SGD = 1
    ADAGRAD = 2
    RMSPROP = 3
    RMSPROP_NORMALIZED = 4
    SQRT_N = 5
    ADAGRAD_NORMALIZED = 6
    ADAM = 7
    ADAM_NORMALIZED = 8


class PreconditionerType(enum.IntEnum):
    """``ALL``: every axis preconditioned; ``INPUT``: all but the last (output) axis."""

    ALL = 1
    INPUT = 2


_FLAGS = (
    "best_effort_shape_interpretation",
    "nesterov",
    "moving_average_for_momentum",
    "relative_matrix_epsilon",
    "decoupled_learning_rate",
    "decoupled_weight_decay",
    "generate_training_metrics",
    "shard_optimizer_states",
    "best_effort_memory_usage_reduction",
)
_COUNTS = {  # name: smallest valid value
    "block_size": 0,
    "start_preconditioning_step": 0,
    "preconditioning_compute_steps": 1,
    "statistics_compute_steps": 1,
    "exponent_override": 0,
    "skip_preconditioning_dim_size_gt": 1,
    "merge_small_dims_block_size": 1,
    "lobpcg_topk_precondition": 0,
    "lobpcg_max_iter": 0,
    "skip_preconditioning_rank_lt": 0,
}
# the reference's pjit / quantized / LOBPCG modes: accepted names, refused values
_NOT_IMPLEMENTED = {
    "statistics_partition_spec": None,
    "preconditioner_partition_spec": None,
    "num_devices_for_pjit": None,
    "shard_optimizer_states": False,
    "best_effort_memory_usage_reduction": False,
    "lobpcg_topk_precondition": 0,
}


def _enum(name: str, value: Any, kind: type[enum.IntEnum]) -> enum.IntEnum:
    """An int or IntEnum (dlopt's or the reference's) given as ``kind``'s member."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(
            f"{name} must be a {kind.__name__} or its int, got {name}={value!r} "
            f"({type(value).__name__})."
        )
    if int(value) not in {int(m) for m in kind}:
        options = ", ".join(f"{m.name}={int(m)}" for m in kind)
        raise ValueError(f"{name} must be one of {options}; got {name}={value!r}.")
    return kind(int(value))


def check_arguments(args: dict[str, Any]) -> tuple[Any, bool]:
    """Every argument of `distributed_shampoo` checked; returns (graft type, input-only)."""
    validation.check_learning_rate(args["learning_rate"])
    for name in _FLAGS:
        validation.check_flag(name, args[name])
    for name, low in _COUNTS.items():
        validation.check_int(name, args[name], low)
    validation.check_in_range("beta1", args["beta1"], 0.0, 1.0, high_closed=True)
    validation.check_in_range("beta2", args["beta2"], 0.0, 1.0, high_closed=True)
    for name in ("diagonal_epsilon", "matrix_epsilon", "weight_decay"):
        validation.check_non_negative(name, args[name])
    validation.check_positive_or_inf("inverse_failure_threshold", args["inverse_failure_threshold"])
    if args["clip_by_scaled_gradient_norm"] is not None:
        validation.check_positive(
            "clip_by_scaled_gradient_norm", args["clip_by_scaled_gradient_norm"]
        )
    for name, default in _NOT_IMPLEMENTED.items():
        if args[name] is not default and args[name] != default:
            raise ValueError(
                f"distributed_shampoo({name}={args[name]!r}): the reference's pjit, quantized "
                f"and LOBPCG modes are not implemented in dlopt; leave {name} at {default!r}."
            )
    axis = args["batch_axis_name"]
    if axis is not None and not isinstance(axis, str | tuple):
        raise TypeError(f"batch_axis_name must be a pmap axis name or None, got {axis!r}.")
    graft = _enum("graft_type", args["graft_type"], GraftingType)
    kind = _enum("precondtioner_type", args["precondtioner_type"], PreconditionerType)
    return graft, kind == PreconditionerType.INPUT
