"""PSGD Kron: SGD preconditioned by a fitted Kronecker-factored P = Q^T Q (Li, 2015/2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain
from dlopt.core.keys import prng_key
from dlopt.core.per_leaf import per_leaf
from dlopt.optimizers import kron_layout as layout
from dlopt.optimizers import kron_step as step
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate

PRECISIONS = (None, "default", "high", "highest", "bfloat16", "tensorfloat32", "float32")
MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
REFERENCE_SEED = 5318008  # psgd-jax's fixed seed, the default ``key``
UPDATE_RMS_CAP = 1.1  # psgd-jax 0.2.9 caps each leaf's preconditioned RMS at 1.1


DEFAULT_UPDATE_PROBABILITY = step.precond_update_prob_schedule()


class ScaleByKronState(NamedTuple):
    count: chex.Array  # int32 steps taken, saturating
    mu: chex.ArrayTree  # momentum, shaped like the params in mu_dtype (None when b1 == 0)
    Qs_preconditioners: chex.ArrayTree  # per leaf, a tuple of factors Q_i (triangular or diag)
    update_counter: chex.Array  # int32 steps since the factors were last fitted
    key: chex.Array  # raw key data; step t draws from fold_in(key, t - 1)


def _check_arguments(b1, prob, max_size, min_ndim, mode, lr, init_scale, precisions, flags,
                     batch, target, block) -> None:  # fmt: skip
    validation.check_in_range("b1", b1, 0.0, 1.0)
    if not callable(prob) or isinstance(prob, jax.Array):
        validation.check_in_range("preconditioner_update_probability", prob, 0.0, 1.0,
                                  low_closed=False, high_closed=True)  # fmt: skip
    validation.check_int("max_size_triangular", max_size, 0)
    validation.check_int("min_ndim_triangular", min_ndim, 0)
    validation.check_choice("memory_save_mode", mode, MEMORY_SAVE_MODES)
    validation.check_non_negative("preconditioner_lr", lr)
    validation.check_positive("preconditioner_init_scale", init_scale)
    for name, value in precisions.items():
        validation.check_choice(name, value, PRECISIONS)
    for name, value in flags.items():
        validation.check_flag(name, value)
    validation.check_int("lax_map_batch_size", batch, 1)
    validation.check_int("target_merged_dim_size", target, 1)
    validation.check_int("block_size", block, 1)


@per_leaf
def scale_by_kron(
    b1: float = 0.9,
    *,
    normalize_grads: bool = False,
    preconditioner_update_probability: float | Callable[[chex.Array], chex.Array] = (
        DEFAULT_UPDATE_PROBABILITY
    ),
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    preconditioner_lr: float = 0.1,
    preconditioner_init_scale: float = 1.0,
    mu_dtype: Any | None = None,
    precond_dtype: Any | None = None,
    precond_update_precision: str | None = "tensorfloat32",
    precond_grads_precision: str | None = None,
    scanned_layers: Any | None = None,
    lax_map_scanned_layers: bool = False,
    lax_map_batch_size: int = 8,
    merge_small_dims: bool = False,
    target_merged_dim_size: int = 2048,
    partition_grads_into_blocks: bool = False,
    block_size: int = 256,
    key: jax.Array | int | None = None,
) -> GradientTransformation:
    """Scales by PSGD Kron's preconditioner, fitted on the fly (psgd-jax's ``scale_by_kron``).

    With momentum :math:`m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t` and
    :math:`\\hat m_t = m_t / (1 - \\beta_1^t)`, each leaf (a tensor with axes :math:`1..k`)
    keeps factors :math:`Q_i` (upper triangular, or diagonal for axes of size 1, longer than
    ``max_size_triangular``, leaves with fewer than ``min_ndim_triangular`` axes, or per
    ``memory_save_mode``), :math:`Q = Q_1 \\otimes \\dots \\otimes Q_k`, :math:`P = Q^T Q`.
    On a preconditioner update (deterministic: whenever the steps since the last one reach
    :math:`1/p_t`, :math:`p_t` = ``preconditioner_update_probability``, by default
    `dlopt.precond_update_prob_schedule`), with a probe :math:`V \\sim \\mathcal N(0, I)` and the
    damped :math:`h = \\hat m + \\sqrt{\\epsilon_{32}}\\,\\overline{|\\hat m|}\\, V`:

    .. math::
        A = h \\times_i Q_i, \\quad \\bar B = V \\times_i Q_i^{-1}, \\quad
        Q_i \\leftarrow Q_i - \\frac{\\mu}{\\lVert A_{(i)} A_{(i)}^T + \\bar B_{(i)}^T
        \\bar B_{(i)} \\rVert} \\operatorname{triu}\\!\\left(A_{(i)} A_{(i)}^T -
        \\bar B_{(i)}^T \\bar B_{(i)}\\right) Q_i

    (:math:`\\mu` = ``preconditioner_lr``; the fit drives :math:`P` towards
    :math:`E[h h^T]^{-1/2}`, a whitening preconditioner; on ~1% of the updates the factors are
    rescaled to a common max-norm). Then the update is :math:`u = P \\hat m`, divided by
    :math:`\\max(1, \\mathrm{RMS}(u) / 1.1)` per leaf.

    Layout: ``scanned_layers`` (a tree of bools) makes a leaf's leading axis a stack of
    layers, each with its own factors; ``merge_small_dims`` merges runs of small axes towards
    ``target_merged_dim_size``; ``partition_grads_into_blocks`` splits triangular axes longer
    than ``block_size`` into blocks and zero-pads every axis longer than 1 to ``block_size``
    (diagonal ones to a multiple of it), so most blocks share one shape; each block has its
    own factors.
    Blocks of the same shape, from any leaves, are stacked and fitted by one vmapped
    computation (``lax.map`` in batches of ``lax_map_batch_size`` with
    ``lax_map_scanned_layers``), so compile time grows with the number of distinct block
    shapes, not of leaves. ``normalize_grads`` divides each gradient leaf by its norm first.

    Randomness: step :math:`t` draws from ``fold_in(key, t - 1)`` with psgd-jax's splits
    (the default ``key`` is psgd-jax's fixed seed 5318008), so a run is reproducible,
    resumes exactly from a checkpointed state, and every device of a ``pmap`` draws the same.

    Deliberate differences from psgd-jax 0.2.9 (same numbers otherwise; tested to 1e-4):
    the state is a NamedTuple holding the key (psgd-jax: a dict, fixed key); scalars get a
    (1,) diagonal factor (psgd-jax: a () one); updates come back in each parameter's dtype,
    the arithmetic runs in float32 or wider (psgd-jax: whatever the operands promote to,
    probes in the gradient's dtype); no Flax ``Partitioned`` unboxing (dlopt unboxes
    earlier). From psgd-jax's later (unreleased) ``kron``: ``normalize_grads``,
    ``merge_small_dims``, ``partition_grads_into_blocks`` are taken, except that axes of
    size 1 are not padded, the padding gets no damping noise (psgd-jax's noise there grows
    the padded part of the factors until it dominates their balancing) and is left out of
    the balancing, and the probes are drawn per block (one vmapped draw per group) rather
    than per leaf; ``params_sharding`` / ``preconditioner_sharding`` are not taken: the
    momentum follows the params' sharding, the factors are replicated.

    Args:
        b1: momentum :math:`\\beta_1` in [0, 1) (0: no momentum buffer).
        normalize_grads: divide each gradient leaf by its norm before the momentum.
        preconditioner_update_probability: :math:`p` in (0, 1], or a schedule ``t -> p``.
        max_size_triangular: axes longer than this get a diagonal factor.
        min_ndim_triangular: leaves with fewer axes get diagonal factors only.
        memory_save_mode: None, 'one_diag' (the largest axis diagonal) or 'all_diag'.
        momentum_into_precond_update: fit on :math:`\\hat m` (True) or on :math:`g`.
        preconditioner_lr: :math:`\\mu` >= 0.
        preconditioner_init_scale: :math:`Q = s^{1/k} I` at init (> 0).
        mu_dtype: the momentum's dtype (default: each parameter's).
        precond_dtype: the factors' dtype (default: float32, float64 for float64 params).
        precond_update_precision, precond_grads_precision: matmul precision (None,
            'bfloat16', 'tensorfloat32', 'float32', ...) of the fit and of :math:`P \\hat m`.
        scanned_layers: a tree of bools like the params: leading axis = stacked layers.
        lax_map_scanned_layers: map the stacked blocks with ``lax.map`` instead of vmap.
        lax_map_batch_size: ``lax.map``'s batch size (int >= 1).
        merge_small_dims: merge runs of small axes before choosing factors.
        target_merged_dim_size: the size merged axes aim for (int >= 1).
        partition_grads_into_blocks: split long triangular axes into blocks.
        block_size: the block length (int >= 1).
        key: a ``jax.random.key``, ``jax.random.PRNGKey`` or int seed (default 5318008).

    Returns:
        A `GradientTransformation` with state `ScaleByKronState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_kron(), dlopt.scale_by_learning_rate(1e-3))
        >>> state = tx.init({"w": jnp.ones((4, 3)), "b": jnp.zeros(3)})

    References:
        Li, 2018, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS,
        arXiv:1512.04202; Li, 2024, "Stochastic Hessian Fittings with Lie Groups",
        arXiv:2402.11858; psgd-jax 0.2.9 (github.com/evanatyourservice/psgd_jax), whose
        signature, defaults and arithmetic these are.
    """
    prob = preconditioner_update_probability
    _check_arguments(
        b1, prob, max_size_triangular, min_ndim_triangular, memory_save_mode, preconditioner_lr,
        preconditioner_init_scale,
        {"precond_update_precision": precond_update_precision,
         "precond_grads_precision": precond_grads_precision},
        {"normalize_grads": normalize_grads, "lax_map_scanned_layers": lax_map_scanned_layers,
         "momentum_into_precond_update": momentum_into_precond_update,
         "merge_small_dims": merge_small_dims,
         "partition_grads_into_blocks": partition_grads_into_blocks},
        lax_map_batch_size, target_merged_dim_size, block_size,
    )  # fmt: skip
    mu_dtype = validation.check_storage_dtype("mu_dtype", mu_dtype)
    precond_dtype = validation.check_storage_dtype("precond_dtype", precond_dtype)
    initial_key = prng_key(REFERENCE_SEED if key is None else key)
    impl = jax.random.key_impl(initial_key)
    has_momentum = isinstance(b1, jax.core.Tracer) or float(b1) > 0
    layout_args = {
        "max_size": max_size_triangular, "min_ndim": min_ndim_triangular,
        "memory_save_mode": memory_save_mode, "merge": merge_small_dims,
        "target": target_merged_dim_size, "block_size": block_size,
        "partition": partition_grads_into_blocks,
    }  # fmt: skip

    def plans(leaves, treedef):
        scanned = [False] * len(leaves)
        if scanned_layers is not None:
            scanned = [bool(s) for s in treedef.flatten_up_to(scanned_layers)]
        return [layout.plan_leaf(jnp.shape(x), scanned=s, **layout_args)
                for x, s in zip(leaves, scanned, strict=True)]  # fmt: skip

    def q_dtype(x):
        return precond_dtype or numerics.compute_dtype(tree_lib.dtype_of(x))

    def init_factors(plan, dtype):
        scale = preconditioner_init_scale ** (1 / len(plan.block))
        out = []
        for shape in plan.factor_shapes():
            q = (
                jnp.full(shape, scale, dtype)
                if len(shape) == 1
                else scale * jnp.eye(*shape, dtype=dtype)
            )
            out.append(jnp.broadcast_to(q, plan.lead + shape))  # fmt: skip
        return tuple(out)

    def init_fn(params):
        tree_lib.check_float_params(params)
        leaves, treedef = jax.tree.flatten(params)
        if any(jnp.issubdtype(tree_lib.dtype_of(x), jnp.complexfloating) for x in leaves):
            raise TypeError("kron: complex params are not supported; optimize real and "
                            "imaginary parts as separate real leaves.")  # fmt: skip
        qs = [init_factors(p, q_dtype(x)) for p, x in zip(plans(leaves, treedef), leaves,
                                                           strict=True)]  # fmt: skip
        mu = tree_lib.moments_like(params, mu_dtype) if has_momentum else None
        zero = jnp.zeros([], jnp.int32)
        return ScaleByKronState(zero, mu, treedef.unflatten(qs), jnp.zeros([], jnp.int32),
                                jnp.copy(jax.random.key_data(initial_key)))  # fmt: skip

    mapper = step.Mapper(lax_map_scanned_layers, lax_map_batch_size)
    partition = partition_grads_into_blocks

    def update_fn(updates, state, params=None):
        leaves, treedef = jax.tree.flatten(updates)
        out_dtypes = treedef.flatten_up_to(numerics.out_dtypes(updates, params))
        unsharded = [tree_lib.unshard(g) for g in leaves]
        gs = [numerics.widen(g) for g, _ in unsharded]
        groups = layout.Groups.of(plans(leaves, treedef), [g.dtype for g in gs])
        count = tree_lib.safe_increment(state.count)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key, impl=impl), state.count)
        if normalize_grads:
            gs = [g / (jnp.linalg.norm(g) + jnp.asarray(1e-16, g.dtype)) for g in gs]
        mu, moms = None, gs
        if has_momentum:
            old = [tree_lib.unshard(m)[0] for m in treedef.flatten_up_to(state.mu)]
            mu = [numerics.ema(m.astype(g.dtype), g, b1) for m, g in zip(old, gs, strict=True)]
            correction = 1 - jnp.asarray(b1, jnp.float32) ** count.astype(jnp.float32)
            moms = [m / correction.astype(m.dtype) for m in mu]
        inputs = moms if momentum_into_precond_update else gs
        stored = treedef.flatten_up_to(state.Qs_preconditioners)
        qs_groups = groups.stack_factors(stored)
        p = prob(count) if callable(prob) and not isinstance(prob, jax.Array) else prob
        counter = tree_lib.safe_increment(state.update_counter)
        do_update = counter.astype(jnp.float32) >= 1 / jnp.asarray(p, jnp.float32)
        counter = jnp.where(do_update, jnp.zeros_like(counter), counter)
        key, subkey = jax.random.split(key)
        with jax.default_matmul_precision(precond_update_precision):
            qs_groups = jax.lax.cond(
                do_update,
                lambda q: step.fit(q, inputs, subkey, groups, mapper, preconditioner_lr, partition),
                lambda q: q,
                qs_groups,
            )
        with jax.default_matmul_precision(precond_grads_precision):
            pre = step.precondition(qs_groups, moms, groups, mapper)
        new_updates = []
        for u, dtype, (_, restore) in zip(pre, out_dtypes, unsharded, strict=True):
            rms = jnp.sqrt(jnp.mean(u * u))
            u = u / jnp.maximum(jnp.ones_like(rms), rms / jnp.asarray(UPDATE_RMS_CAP, rms.dtype))
            new_updates.append(restore(u.astype(dtype)))
        if has_momentum:
            old = zip(mu, treedef.flatten_up_to(state.mu), unsharded, strict=True)
            mu = treedef.unflatten([r(m.astype(tree_lib.dtype_of(o))) for m, o, (_, r) in old])
        qs = treedef.unflatten(groups.unstack_factors(qs_groups))
        state = ScaleByKronState(count, mu, qs, counter, state.key)
        return treedef.unflatten(new_updates), state

    return GradientTransformation(init_fn, update_fn)


def kron(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: float = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Mask | None = None,
    *,
    normalize_grads: bool = False,
    preconditioner_update_probability: float | Callable[[chex.Array], chex.Array] = (
        DEFAULT_UPDATE_PROBABILITY
    ),
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    preconditioner_lr: float = 0.1,
    preconditioner_init_scale: float = 1.0,
    mu_dtype: Any | None = None,
    precond_dtype: Any | None = None,
    precond_update_precision: str | None = "tensorfloat32",
    precond_grads_precision: str | None = None,
    scanned_layers: Any | None = None,
    lax_map_scanned_layers: bool = False,
    lax_map_batch_size: int = 8,
    merge_small_dims: bool = False,
    target_merged_dim_size: int = 2048,
    partition_grads_into_blocks: bool = False,
    block_size: int = 256,
    key: jax.Array | int | None = None,
) -> GradientTransformationExtraArgs:
    """PSGD Kron: momentum SGD preconditioned by a fitted Kronecker-factored :math:`P = Q^T Q`.

    .. math::
        W \\leftarrow W - \\eta \\left(\\frac{P \\hat m}{\\max(1,
        \\mathrm{RMS}(P \\hat m) / 1.1)} + \\lambda W\\right)

    with :math:`\\hat m` the bias-corrected momentum and :math:`P` fitted as in
    `scale_by_kron` (psgd-jax's ``kron``, same signature and defaults; learning rates near
    Adam's work, psgd-jax suggests 3x smaller). Weight decay is decoupled, applied when
    ``weight_decay > 0`` to the leaves ``weight_decay_mask`` selects. Not in optax.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1: momentum :math:`\\beta_1` in [0, 1).
        weight_decay: :math:`\\lambda` >= 0.
        weight_decay_mask: pytree of bools (or ``params -> pytree``) choosing the decayed
            leaves.
        normalize_grads, preconditioner_update_probability, max_size_triangular,
            min_ndim_triangular, memory_save_mode, momentum_into_precond_update,
            preconditioner_lr, preconditioner_init_scale, mu_dtype, precond_dtype,
            precond_update_precision, precond_grads_precision, scanned_layers,
            lax_map_scanned_layers, lax_map_batch_size, merge_small_dims,
            target_merged_dim_size, partition_grads_into_blocks, block_size, key: as in
            `scale_by_kron`.

    Returns:
        ``chain(scale_by_kron(...), [add_decayed_weights(weight_decay, weight_decay_mask)],
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.kron(1e-3)
        >>> params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
        >>> updates, state = tx.update(params, tx.init(params), params)

    References:
        Li, 2018, "Preconditioned Stochastic Gradient Descent", IEEE TNNLS,
        arXiv:1512.04202; psgd-jax 0.2.9 (github.com/evanatyourservice/psgd_jax).
    """
    validation.check_learning_rate(learning_rate)
    if not callable(weight_decay):
        validation.check_non_negative("weight_decay", weight_decay)
    scale = scale_by_kron(
        b1, normalize_grads=normalize_grads,
        preconditioner_update_probability=preconditioner_update_probability,
        max_size_triangular=max_size_triangular, min_ndim_triangular=min_ndim_triangular,
        memory_save_mode=memory_save_mode,
        momentum_into_precond_update=momentum_into_precond_update,
        preconditioner_lr=preconditioner_lr, preconditioner_init_scale=preconditioner_init_scale,
        mu_dtype=mu_dtype, precond_dtype=precond_dtype,
        precond_update_precision=precond_update_precision,
        precond_grads_precision=precond_grads_precision, scanned_layers=scanned_layers,
        lax_map_scanned_layers=lax_map_scanned_layers, lax_map_batch_size=lax_map_batch_size,
        merge_small_dims=merge_small_dims, target_merged_dim_size=target_merged_dim_size,
        partition_grads_into_blocks=partition_grads_into_blocks, block_size=block_size, key=key,
    )  # fmt: skip
    decay = weight_decay if callable(weight_decay) or float(weight_decay) > 0 else None
    parts = [scale]
    if decay is not None:
        parts.append(add_decayed_weights(weight_decay, weight_decay_mask))
    return chain(*parts, scale_by_learning_rate(learning_rate))
