"""Muon: momentum orthogonalized by Newton-Schulz for matrices, AdamW for the rest."""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, rule, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, MaskedNode, chain, partition
from dlopt.core.per_leaf import per_leaf
from dlopt.linalg.muon_dims import (
    MuonDimensionNumbers,
    WeightDimNumOrFn,
    expand_dims,
    infer_muon_dimension_numbers,
    is_dim_nums,
    kernel_dims,
    matrices_only,
)
from dlopt.linalg.newton_schulz import (
    DEFAULT_NS_COEFFS,
    PRECONDITIONINGS,
    orthogonalize_stacked,
    resolve_coeffs,
)
from dlopt.optimizers.adam import adamw
from dlopt.optimizers.muon_scaling import scale_by_neuron_norm, scale_by_shape
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate

NORMALIZATIONS = (None, "neuron")


# --- the Muon block


def _momentum_leaf(g, mu, leaf, out_dtype, *, beta, nesterov, writer):
    """The (Nesterov) bias-corrected momentum of one leaf, in float32 or wider."""
    del out_dtype
    f = numerics.compute_dtype(g.dtype, mu.dtype)
    g = g.astype(f)
    mu = writer.put(numerics.ema(mu.astype(f), g, beta), mu, leaf, 1)
    return numerics.unbias_momentum(mu.astype(f), g, beta, writer.count, nesterov=nesterov), mu


def _orthogonalize_tree(m_tree, dims, out_dtypes, *, adaptive, **ns):
    """Every leaf of ``m_tree`` orthogonalized (`orthogonalize_stacked`: one vmapped
    iteration per matrix shape), ``adaptive``-scaled, cast and resharded like its leaf."""
    leaves, treedef = jax.tree.flatten(m_tree)
    if not leaves:
        return m_tree
    xs, ds, restores = [], [], []
    for m, d in zip(leaves, treedef.flatten_up_to(dims), strict=True):
        m, restore = tree_lib.unshard(m)  # Newton-Schulz contracts the (maybe sharded) axes
        if m.ndim < 2:  # a 1 x n row: its orthogonalization is the direction m / |m|
            m, d = m.reshape(1, -1), MuonDimensionNumbers()
        xs.append(m)
        ds.append(d)
        restores.append(restore)
    outs = orthogonalize_stacked(xs, ds, **ns)
    result = []
    for m, o, restore, dtype in zip(
        leaves, outs, restores, treedef.flatten_up_to(out_dtypes), strict=True
    ):
        o = o.reshape(m.shape)
        if adaptive:  # scale by the dual norm <m, O(m)> (Bernstein and Newhouse, 2024)
            o = jnp.sum(jnp.conj(m) * o) * o
        result.append(restore(o.astype(dtype)))
    return treedef.unflatten(result)


class MuonState(NamedTuple):
    count: chex.Array  # int32 step, saturating
    mu: chex.ArrayTree  # the momentum (in mu_dtype)
    ns_coeffs: chex.Array  # (3,) or (n, 3) Newton-Schulz coefficients


def _block_dims(weight_dimension_numbers: Any, updates: chex.ArrayTree) -> chex.ArrayTree:
    """scale_by_muon's dims per leaf: the given ones; else 2-D leaves (0, 1), ``kernel``
    leaves the inferred rule, other n-D leaves (all but the last axis, the last axis), and
    vectors and scalars a 1 x n row (see `_muon_leaf`)."""
    if callable(weight_dimension_numbers):
        return weight_dimension_numbers(updates)
    if weight_dimension_numbers is not None:
        return weight_dimension_numbers
    inferred = infer_muon_dimension_numbers(updates)
    flat, treedef = jax.tree.flatten(updates)
    dims = []
    for leaf, d in zip(flat, treedef.flatten_up_to(inferred), strict=True):
        if d is None and jnp.ndim(leaf) > 2:
            d = kernel_dims(leaf, None)
        dims.append(MuonDimensionNumbers() if d is None else d)
    return treedef.unflatten(dims)


@per_leaf
def scale_by_muon(
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: chex.Numeric = 0.95,
    eps: chex.Numeric = 1e-8,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
    state_rounding: str = "stochastic",
) -> GradientTransformation:
    """Orthogonalizes the (Nesterov) momentum of each matrix by Newton-Schulz.

    .. math::
        m_t = \\beta m_{t-1} + (1 - \\beta) g_t, \\quad
        \\hat m_t = \\frac{\\beta\\, m_t}{1 - \\beta^{t+1}} + \\frac{(1 - \\beta) g_t}{1 -
        \\beta^t} \\ \\text{(Nesterov; else } \\hat m_t = m_t / (1 - \\beta^t)\\text{)}, \\quad
        u_t = \\operatorname{NS}(\\hat m_t) \\approx U V^H \\ \\text{for}\\ \\hat m_t = U S V^H

    (`orthogonalize_via_newton_schulz`), i.e. steepest descent under the spectral norm.
    ``adaptive=True`` returns :math:`\\langle \\hat m_t, u_t \\rangle u_t`. Tensors are
    reshaped to matrices by ``weight_dimension_numbers`` (a tree of `MuonDimensionNumbers`
    shaped like the params, or a function of the params returning one). Without them, 2-D
    leaves use axes (0, 1) (as optax), and where optax raises dlopt extends the rule: Flax
    ``kernel`` leaves of higher rank use `infer_muon_dimension_numbers`, other n-D leaves
    are (all but the last axis) x (last axis), and vectors and scalars are 1 x n rows, whose
    orthogonalization is the normalized direction :math:`\\hat m / \\|\\hat m\\|` (steepest
    descent under the l2 norm). `muon` gives such leaves to Adam instead. The momentum and
    the iteration run in float32 (or wider) whatever the storage dtype.

    Args:
        ns_coeffs: (3,) Newton-Schulz coefficients, (n, 3) per-step ones, or a preset name
            (``"standard"``, ``"dion"``, ``"polar_express"``: Amsel et al. 2025's optimal
            per-step polynomials with their 1.01 safety factor, ``ns_steps`` of them, see
            `dlopt.linalg.newton_schulz.polar_express_coeffs`).
        ns_steps: number of steps (int >= 0) with (3,) coefficients; must be >= n for (n, 3).
        beta: :math:`\\beta` in [0, 1).
        eps: >= 0, added to the norm in the first rescaling.
        mu_dtype: dtype of :math:`m` (default: each parameter's dtype).
        nesterov: use the Nesterov momentum :math:`\\hat m_t` above.
        adaptive: scale by the dual norm (Bernstein and Newhouse, 2024).
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"`` (see
            `orthogonalize_via_newton_schulz`).
        weight_dimension_numbers: dims per leaf, or a function ``params -> dims``.
        state_rounding: ``"stochastic"`` or ``"nearest"`` rounding into a narrower
            ``mu_dtype`` (dlopt only).

    Returns:
        A `GradientTransformation` with state `MuonState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_muon(), dlopt.scale_by_learning_rate(0.02))

    References:
        Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks",
        https://kellerjordan.github.io/posts/muon/; Bernstein and Newhouse, 2024, "Old
        Optimizer, New Norm: An Anthology", arXiv:2409.20325.
    """
    ns_coeffs = resolve_coeffs(ns_coeffs, ns_steps)
    validation.check_in_range("beta", beta, 0.0, 1.0)
    validation.check_non_negative("eps", eps)
    validation.check_choice("preconditioning", preconditioning, PRECONDITIONINGS)

    def coefficients(params):
        coeffs = jnp.asarray(ns_coeffs)
        return {"ns_coeffs": coeffs[-ns_steps:] if coeffs.ndim == 2 else coeffs}

    momentum = rule.moment_rule(
        MuonState,
        functools.partial(_momentum_leaf, beta=beta, nesterov=nesterov),
        moments={"mu": mu_dtype},
        rounding=state_rounding,
        extra_init=coefficients,
    )
    like_params = mu_dtype is None

    def update_fn(updates, state, params=None):
        m, new_state = momentum.update(updates, state, params)
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        dtypes = numerics.out_dtypes(updates, params, state.mu if like_params else None)
        dims = _block_dims(weight_dimension_numbers, updates)
        ns = {"ns_coeffs": state.ns_coeffs, "ns_steps": ns_steps,
              "preconditioning": preconditioning, "eps": eps}  # fmt: skip
        return _orthogonalize_tree(m, dims, dtypes, adaptive=adaptive, **ns), new_state

    return GradientTransformation(momentum.init, update_fn)


def _unless_empty(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """``tx``, except that a group with no leaves (a model of matrices only: nothing for
    Adam) passes through with its state unchanged."""

    def update_fn(updates, state, params=None, **extra_args):
        if not jax.tree.leaves(updates):
            return updates, state
        return tx.update(updates, state, params, **extra_args)

    return GradientTransformationExtraArgs(tx.init, update_fn)


@per_leaf
def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: Any = DEFAULT_NS_COEFFS,
    ns_steps: int = 5,
    beta: chex.Numeric = 0.95,
    eps: chex.Numeric = 1e-8,
    weight_decay: chex.Numeric = 0.0,
    weight_decay_mask: Mask | None = None,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    adam_b1: chex.Numeric = 0.9,
    adam_b2: chex.Numeric = 0.999,
    adam_eps_root: chex.Numeric = 0.0,
    adam_weight_decay: chex.Numeric = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: WeightDimNumOrFn | None = None,
    consistent_rms: chex.Numeric | None = None,
    infer_dimension_numbers: bool = True,
    nu_dtype: Any | None = None,
    state_rounding: str = "stochastic",
    normalize: Literal["neuron"] | None = None,
    beta2: chex.Numeric = 0.95,
) -> GradientTransformationExtraArgs:
    """Muon: MomentUm Orthogonalized by Newton-Schulz for the matrices, AdamW for the rest.

    For each matrix parameter :math:`W` (fan-in x fan-out):

    .. math::
        W \\leftarrow W - \\eta \\left(\\sqrt{\\max(1, \\tfrac{\\text{fan\\_out}}
        {\\text{fan\\_in}})}\\, \\operatorname{NS}(\\hat m) + \\lambda W\\right)

    with :math:`\\hat m` the (Nesterov) momentum and :math:`\\operatorname{NS}` its
    orthogonalization (`scale_by_muon`; ``ns_coeffs="polar_express"`` for the Polar Express
    polynomials); ``normalize="neuron"`` is NorMuon (`normuon`), normalizing each output
    neuron of :math:`\\operatorname{NS}(\\hat m)` by a second moment (decay ``beta2``) first;
    ``consistent_rms=c`` uses the factor
    :math:`c \\sqrt{\\max(\\text{fan\\_in}, \\text{fan\\_out})}` instead (RMS like AdamW's,
    Liu et al. 2025, with :math:`c = 0.2`). Every other parameter gets
    ``adamw(adam_learning_rate or learning_rate, adam_b1, adam_b2, eps, adam_eps_root,
    weight_decay=adam_weight_decay, nesterov=nesterov)``.

    Which leaves are matrices: ``muon_weight_dimension_numbers`` (a tree, or prefix, of
    `MuonDimensionNumbers` with None for Adam's leaves, or a function of the params
    returning one) when given; otherwise the rule of `infer_muon_dimension_numbers`: Flax
    ``kernel`` leaves of any rank >= 2 (Dense, DenseGeneral, Conv, nnx.Linear, nnx.Conv,
    conv kernels as (kh*kw*in, out)), every other 2-D leaf except embeddings.

    Deliberate difference from optax: without dimension numbers optax orthogonalizes every
    2-D leaf and nothing else, so conv and DenseGeneral kernels silently go to Adam and
    embedding tables to Muon; dlopt infers them as above. ``infer_dimension_numbers=False``
    restores optax's rule exactly. The Muon arithmetic runs in float32 for low-precision
    parameters (optax runs it in the momentum's dtype). ``nu_dtype`` (of Adam's second
    moment) and ``state_rounding`` are dlopt-only.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        ns_coeffs, ns_steps, beta, eps, nesterov, adaptive, preconditioning: as in
            `scale_by_muon` (``eps`` is also Adam's).
        weight_decay: :math:`\\lambda` >= 0 for the Muon leaves (decoupled, times
            :math:`\\eta`).
        weight_decay_mask: bools (or ``params -> bools``) for the Muon leaves' decay.
        mu_dtype: dtype of both momenta (Muon's and Adam's first moment).
        adam_b1: Adam's :math:`\\beta_1` in [0, 1).
        adam_b2: Adam's :math:`\\beta_2` in [0, 1).
        adam_eps_root: Adam's :math:`\\epsilon_{root}` >= 0.
        adam_weight_decay: Adam's decoupled weight decay >= 0.
        adam_learning_rate: Adam's learning rate (default: ``learning_rate``).
        muon_weight_dimension_numbers: which leaves are matrices, and their axes.
        consistent_rms: None (width scaling) or :math:`c` >= 0 (consistent-RMS scaling).
        infer_dimension_numbers: without ``muon_weight_dimension_numbers``, infer Flax
            kernels (True) or use optax's every-2-D-leaf rule (False) (dlopt only).
        nu_dtype: dtype of Adam's second moment (dlopt only).
        state_rounding: ``"stochastic"`` or ``"nearest"`` (dlopt only).
        normalize: None, or ``"neuron"``: NorMuon's neuron-wise normalization (dlopt only).
        beta2: NorMuon's second-moment decay in [0, 1) (with ``normalize="neuron"``).

    Returns:
        A `GradientTransformationExtraArgs` whose state is a `partition` state with groups
        ``"muon"`` (``chain(scale_by_muon, [NorMuonState,] shape scaling,
        add_decayed_weights, scale_by_learning_rate)``) and ``"adam"`` (`adamw`), as optax's.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.muon(0.02, adam_learning_rate=3e-4)
        >>> state = tx.init({"Dense_0": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}})

    References:
        Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks",
        https://kellerjordan.github.io/posts/muon/; Liu et al., 2025, "Muon is Scalable for
        LLM Training", arXiv:2502.16982.
    """
    validation.check_learning_rate(learning_rate)
    if adam_learning_rate is not None:
        validation.check_learning_rate(adam_learning_rate, "adam_learning_rate")
    validation.check_in_range("adam_b1", adam_b1, 0.0, 1.0)
    validation.check_in_range("adam_b2", adam_b2, 0.0, 1.0)
    validation.check_non_negative("adam_eps_root", adam_eps_root)
    validation.check_non_negative("adam_weight_decay", adam_weight_decay)
    if consistent_rms is not None:
        validation.check_non_negative("consistent_rms", consistent_rms)
    validation.check_choice("normalize", normalize, NORMALIZATIONS)
    validation.check_in_range("beta2", beta2, 0.0, 1.0)
    block = functools.partial(
        scale_by_muon, resolve_coeffs(ns_coeffs, ns_steps), ns_steps, beta, eps, mu_dtype,
        nesterov=nesterov, adaptive=adaptive, preconditioning=preconditioning,
        state_rounding=state_rounding,
    )  # fmt: skip
    adam = adamw(
        learning_rate if adam_learning_rate is None else adam_learning_rate, adam_b1, adam_b2,
        eps, adam_eps_root, mu_dtype, adam_weight_decay, nesterov=nesterov, nu_dtype=nu_dtype,
        state_rounding=state_rounding,
    )  # fmt: skip
    block(), add_decayed_weights(weight_decay, weight_decay_mask)  # validate eagerly

    def dims_of(tree):
        if muon_weight_dimension_numbers is None:
            rule = infer_muon_dimension_numbers if infer_dimension_numbers else matrices_only
            return rule(tree)
        given = muon_weight_dimension_numbers
        return expand_dims(given(tree) if callable(given) else given, tree)

    def build(tree):
        dims = dims_of(tree)
        is_leaf = lambda x: x is None or is_dim_nums(x)  # noqa: E731
        labels = jax.tree.map(lambda d: "adam" if d is None else "muon", dims, is_leaf=is_leaf)
        muon_dims = jax.tree.map(lambda d: MaskedNode() if d is None else d, dims, is_leaf=is_leaf)
        normalization = [scale_by_neuron_norm(muon_dims, beta2)] if normalize else []
        orthogonalized = chain(
            block(weight_dimension_numbers=muon_dims),
            *normalization,
            scale_by_shape(muon_dims, consistent_rms),
            add_decayed_weights(weight_decay, weight_decay_mask),
            scale_by_learning_rate(learning_rate),
        )
        return partition({"muon": orthogonalized, "adam": _unless_empty(adam)}, labels)

    def init_fn(params):
        return build(params).init(params)

    def update_fn(updates, state, params=None, **extra_args):
        if params is not None:
            tree_lib.check_matching_trees(params, updates, "params", "updates")
        return build(updates if params is None else params).update(
            updates, state, params, **extra_args
        )

    return GradientTransformationExtraArgs(init_fn, update_fn)
