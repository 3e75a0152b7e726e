"""Distributed Shampoo (Anil et al., 2020): Kronecker-factored full-matrix AdaGrad, grafted.

For a gradient block ``G`` of rank ``k`` (after merging small axes and cutting axes longer
than ``block_size`` into blocks), each axis ``j`` keeps a statistic and a preconditioner:

    L_j <- beta2 L_j + (1 - beta2) G_(j) G_(j)^T          (every statistics_compute_steps)
    P_j  = (L_j + eps I)^(-1/p),  p = 2k or exponent_override   (every
                                                           preconditioning_compute_steps)
    S    = G x_1 P_1 x_2 ... x_k P_k                      (Shampoo direction, per leaf)

``S`` is grafted onto a first-order rule ``D`` (SGD, AdaGrad, RMSProp, Adam or their
normalized forms; layer-wise): ``U = S ||D|| / ||S||``. Before ``start_preconditioning_step``
the update is ``D`` itself. Both take momentum ``m <- beta1 m + U (+ weight decay)``, Nesterov
``beta1 m + U`` when asked, and the step is ``-lr * m``. Leaves of rank <
``skip_preconditioning_rank_lt`` or with an axis > ``skip_preconditioning_dim_size_gt`` use
``D`` only (the diagonal fallback).

Fast compiles: blocks of one shape are stacked across all leaves and handled by one batched
computation; the inverse roots are one vmapped coupled-Newton iteration per (block size,
exponent), and the periodic refresh is one `lax.cond` over all of them.

Deliberate differences from the reference (google-research ``scalable_shampoo``,
``optax-shampoo`` 0.0.6): ``block_size`` defaults to 128 (the reference's recommended value;
it has no default); the grafting types add ``ADAM`` (RMSProp with Adam's bias-corrected second
moment; the first moment is the optimizer's ``beta1`` momentum) and ``ADAM_NORMALIZED``; the
pjit/TPU-pod modes (``shard_optimizer_states``, partition specs, ``num_devices_for_pjit``),
int8/int16 state (``best_effort_memory_usage_reduction``) and LOBPCG deflation raise instead of
running; the training metrics kept in the state are the inverse roots' errors only; a ``1 x 1``
statistic goes through the Newton iteration like the others (the reference takes its exact
power only when every statistic of the model is ``1 x 1``).

References:
  Anil, Gupta, Koren, Regan, Singer, "Scalable Second Order Optimization for Deep Learning",
  2020 (arXiv:2002.09018). Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor
  Optimization", ICML 2018.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, ScalarOrSchedule
from dlopt.core.per_leaf import per_leaf
from dlopt.optimizers import shampoo_blocks as blocks_lib
from dlopt.optimizers import shampoo_roots as roots_lib
from dlopt.optimizers.shampoo_checks import GraftingType, PreconditionerType, check_arguments


class ShampooState(NamedTuple):
    """``count``; per leaf (like the params) the grafting second moment (``()`` for SGD and
    SQRT_N grafting), the grafting and the Shampoo momentum; per block group and axis the
    stacked statistics ``[n, d, d]``, preconditioners and last inverse-root errors ``[n]``
    (``()`` without ``generate_training_metrics``)."""

    count: chex.Array
    diagonal_statistics: Any
    diagonal_momentum: Any
    momentum: Any
    statistics: tuple
    preconditioners: tuple
    inverse_pth_root_errors: tuple


_NORMALIZED = (
    GraftingType.ADAGRAD_NORMALIZED,
    GraftingType.RMSPROP_NORMALIZED,
    GraftingType.ADAM_NORMALIZED,
)


def _graft(g, v, count, graft, *, beta2, eps, clip):
    """(the grafting update D, the new second moment) for one leaf."""
    if graft in (GraftingType.SGD, GraftingType.SQRT_N):
        return (g if graft == GraftingType.SGD else jnp.sign(g)), v
    if graft in _NORMALIZED:
        g = g / (jnp.linalg.norm(g) + 1e-16)
    if graft in (GraftingType.ADAGRAD, GraftingType.ADAGRAD_NORMALIZED):
        v = v + jnp.square(g)
        return g / (jnp.sqrt(v) + eps), v
    v = beta2 * v + (1.0 if beta2 == 1.0 else 1.0 - beta2) * jnp.square(g)
    denominator = v
    if graft in (GraftingType.ADAM, GraftingType.ADAM_NORMALIZED):
        step = (count + 1).astype(jnp.float32)
        denominator = v / (1.0 - jnp.power(jnp.asarray(beta2, jnp.float32), step)).astype(v.dtype)
    update = g / (jnp.sqrt(denominator) + eps)
    if clip and graft in (GraftingType.RMSPROP, GraftingType.RMSPROP_NORMALIZED):
        scaled_norm = jnp.linalg.norm(update) / jnp.sqrt(float(update.size))
        update = update / jnp.maximum(1.0, scaled_norm / clip)
    return update, v


@per_leaf
def distributed_shampoo(
    learning_rate: ScalarOrSchedule,
    block_size: int = 128,
    beta1: float = 0.9,
    beta2: float = 0.999,
    diagonal_epsilon: float = 1e-10,
    matrix_epsilon: float = 1e-6,
    weight_decay: float = 0.0,
    start_preconditioning_step: int = 5,
    preconditioning_compute_steps: int = 1,
    statistics_compute_steps: int = 1,
    best_effort_shape_interpretation: bool = True,
    graft_type: GraftingType | int = GraftingType.SGD,
    nesterov: bool = True,
    exponent_override: int = 0,
    batch_axis_name: str | None = None,
    statistics_partition_spec: Any = None,
    preconditioner_partition_spec: Any = None,
    num_devices_for_pjit: int | None = None,
    shard_optimizer_states: bool = False,
    best_effort_memory_usage_reduction: bool = False,
    inverse_failure_threshold: float = 0.1,
    moving_average_for_momentum: bool = False,
    skip_preconditioning_dim_size_gt: int = 4096,
    clip_by_scaled_gradient_norm: float | None = None,
    precision: lax.Precision | None = lax.Precision.HIGHEST,
    tensordot_precision: lax.Precision | None = None,
    relative_matrix_epsilon: bool = True,
    merge_small_dims_block_size: int = 4096,
    lobpcg_topk_precondition: int = 0,
    lobpcg_max_iter: int = 0,
    precondtioner_type: PreconditionerType | int = PreconditionerType.ALL,
    skip_preconditioning_rank_lt: int = 1,
    decoupled_learning_rate: bool = True,
    decoupled_weight_decay: bool = False,
    generate_training_metrics: bool = True,
) -> GradientTransformation:
    """Distributed Shampoo, with the reference's signature (see the module doc for the math).

    Args:
      learning_rate: the step size (a number or a schedule of the step count).
      block_size: axes longer than this are cut into blocks of this size (<= 0: no blocks).
      beta1: momentum (of both the Shampoo and the grafting update).
      beta2: decay of the statistics and of the RMSProp/Adam grafting second moment.
      diagonal_epsilon: the grafting rule's epsilon.
      matrix_epsilon: damping of the statistics before the inverse root.
      weight_decay: L2 (added to the update before momentum) or decoupled (after).
      start_preconditioning_step: steps before this use the grafting update alone.
      preconditioning_compute_steps: refresh the preconditioners every this many steps.
      statistics_compute_steps: accumulate the statistics every this many steps.
      best_effort_shape_interpretation: merge small consecutive axes first.
      graft_type: a `GraftingType` (or its int; the reference's enum works too).
      nesterov: Nesterov momentum.
      exponent_override: the root ``p`` for every statistic (0: twice the rank).
      batch_axis_name: the pmap axis over which the inverse roots are split.
      statistics_partition_spec, preconditioner_partition_spec, num_devices_for_pjit,
        shard_optimizer_states, best_effort_memory_usage_reduction, lobpcg_topk_precondition,
        lobpcg_max_iter: the reference's pjit, quantized and LOBPCG modes; not implemented
        (anything but the default raises).
      inverse_failure_threshold: a root with a larger error keeps the old preconditioner.
      moving_average_for_momentum: momentum as an average, ``beta1 m + (1 - beta1) U``.
      skip_preconditioning_dim_size_gt: leaves with a larger axis use the grafting only.
      clip_by_scaled_gradient_norm: clip the RMSProp grafting update's RMS to this.
      precision: the matmul precision of the inverse roots.
      tensordot_precision: the matmul precision of the statistics.
      relative_matrix_epsilon: scale ``matrix_epsilon`` by the statistic's top eigenvalue.
      merge_small_dims_block_size: the largest product of merged axes.
      precondtioner_type: a `PreconditionerType` (the reference's spelling).
      skip_preconditioning_rank_lt: leaves of lower rank use the grafting only.
      decoupled_learning_rate: apply the learning rate after momentum (else before).
      decoupled_weight_decay: ``lr * weight_decay * w`` added after momentum.
      generate_training_metrics: keep the inverse roots' errors in the state.

    Returns:
      A `GradientTransformation` whose updates are the steps to add to the params.

    >>> import jax.numpy as jnp, dlopt
    >>> params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    >>> tx = dlopt.distributed_shampoo(0.1, start_preconditioning_step=1)
    >>> grads = {"w": jnp.full((3, 2), 0.5), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, tx.init(params), params)
    >>> updates["w"].shape, sorted(s.shape for group in state.statistics for s in group)
    ((3, 2), [(1, 2, 2), (1, 6, 6)])

    References:
      Anil et al., "Scalable Second Order Optimization for Deep Learning", 2020.
    """
    graft, input_only = check_arguments(locals())
    w2 = 1.0 if beta2 == 1.0 else 1.0 - beta2
    root_kwargs = dict(
        matrix_epsilon=matrix_epsilon,
        relative_matrix_epsilon=relative_matrix_epsilon,
        precision=precision,
    )

    def skipped(shape) -> bool:
        too_large = any(d > skip_preconditioning_dim_size_gt for d in shape)
        return len(shape) < skip_preconditioning_rank_lt or too_large

    def layout(shapes) -> blocks_lib.Plan:
        return blocks_lib.plan(
            [tuple(s) for s in shapes],
            block_size=block_size,
            merge_dims=merge_small_dims_block_size if best_effort_shape_interpretation else None,
            skip=[skipped(s) for s in shapes],
            input_only=input_only,
            exponent_override=exponent_override,
        )

    has_second_moment = graft not in (GraftingType.SGD, GraftingType.SQRT_N)

    def buffers(params):
        return jax.tree.map(
            lambda p: jnp.zeros_like(p, dtype=jnp.promote_types(p.dtype, jnp.float32)), params
        )

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        stats, preconds, errors = roots_lib.init_statistics(
            layout([p.shape for p in leaves]), matrix_epsilon
        )
        diagonal = buffers(params) if has_second_moment else ()
        return ShampooState(
            count=jnp.zeros([], jnp.int32),
            diagonal_statistics=diagonal,
            diagonal_momentum=buffers(params),
            momentum=buffers(params),
            statistics=stats,
            preconditioners=preconds,
            inverse_pth_root_errors=errors if generate_training_metrics else (),
        )

    def refresh(stats, preconds, errors, plan):
        return roots_lib.refresh(
            stats,
            preconds,
            plan,
            failure_threshold=inverse_failure_threshold,
            axis_name=batch_axis_name,
            **root_kwargs,
        )

    def leaf_update(g, precond, v, dmom, mom, param, skip, count, lr):
        graft_update, v = _graft(
            g, v, count, graft, beta2=beta2, eps=diagonal_epsilon, clip=clip_by_scaled_gradient_norm
        )
        graft_update = graft_update * (1.0 if decoupled_learning_rate else lr)
        precond = graft_update if skip else precond
        multiplier = jnp.linalg.norm(graft_update) / (jnp.linalg.norm(precond) + 1e-16)
        shampoo_update = precond * multiplier
        if weight_decay != 0 and not decoupled_weight_decay:
            shampoo_update = shampoo_update + weight_decay * param
            graft_update = graft_update + weight_decay * param
        w = (1.0 - beta1) if moving_average_for_momentum else 1.0
        mom = mom * beta1 + w * shampoo_update
        dmom = dmom * beta1 + w * graft_update
        run = (count >= start_preconditioning_step).astype(g.dtype)
        momentum_update = run * mom + (1.0 - run) * dmom
        if nesterov:
            wd_update = run * shampoo_update + (1.0 - run) * graft_update
            momentum_update = w * wd_update + beta1 * momentum_update
        if weight_decay != 0 and decoupled_weight_decay:
            momentum_update = momentum_update + lr * weight_decay * param
        update = -(lr if decoupled_learning_rate else 1.0) * momentum_update
        return update, v, dmom, mom

    def update_fn(updates, state, params=None):
        grads, treedef = jax.tree.flatten(updates)
        if weight_decay != 0 and params is None:
            raise ValueError("distributed_shampoo with weight_decay needs params= in update.")
        plan = layout([g.shape for g in grads])
        count = state.count
        wide = [g.astype(jnp.promote_types(g.dtype, jnp.float32)) for g in grads]
        blocks = blocks_lib.to_groups(wide, plan)

        def new_statistics(stats):
            return roots_lib.update_statistics(stats, blocks, plan, beta2, w2, tensordot_precision)

        stats = state.statistics
        if statistics_compute_steps > 1:
            stats = lax.cond(
                count % statistics_compute_steps == 0, new_statistics, lambda s: s, stats
            )
        else:
            stats = new_statistics(stats)
        old_errors = state.inverse_pth_root_errors or jax.tree.map(
            lambda s: jnp.zeros(s.shape[0], jnp.float32), stats
        )
        if preconditioning_compute_steps > 1:
            preconds, errors = lax.cond(
                count % preconditioning_compute_steps == 0,
                lambda s, p, e: refresh(s, p, e, plan),
                lambda s, p, e: (p, e),
                stats,
                state.preconditioners,
                old_errors,
            )
        else:
            preconds, errors = refresh(stats, state.preconditioners, old_errors, plan)
        directions = blocks_lib.from_groups(
            roots_lib.precondition(blocks, preconds, plan), plan, wide
        )
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        per_leaf = [treedef.flatten_up_to(t) for t in (state.diagonal_momentum, state.momentum)]
        second = treedef.flatten_up_to(state.diagonal_statistics) if has_second_moment else None
        param_leaves = treedef.flatten_up_to(params) if params is not None else [None] * len(grads)
        outs = []
        for i, (g, d) in enumerate(zip(wide, directions, strict=True)):
            p = param_leaves[i]
            p = None if p is None else p.astype(g.dtype)
            v = second[i] if second is not None else jnp.zeros((), g.dtype)
            outs.append(
                leaf_update(g, d, v, per_leaf[0][i], per_leaf[1][i], p, skipped(g.shape), count, lr)
            )
        new_updates = [u.astype(g.dtype) for u, g in zip([o[0] for o in outs], grads, strict=True)]
        unflatten = lambda i: treedef.unflatten([o[i] for o in outs])  # noqa: E731
        new_state = ShampooState(
            count=tree_lib.safe_increment(count),
            diagonal_statistics=unflatten(1) if second is not None else (),
            diagonal_momentum=unflatten(2),
            momentum=unflatten(3),
            statistics=stats,
            preconditioners=preconds,
            inverse_pth_root_errors=errors if generate_training_metrics else (),
        )
        return treedef.unflatten(new_updates), new_state

    return GradientTransformation(init_fn, update_fn)
