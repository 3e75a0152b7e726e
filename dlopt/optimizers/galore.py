"""GaLore: gradient low-rank projection (Zhao et al., 2024), optax.contrib's signature."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib
from dlopt.core import validation
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
)
from dlopt.core.combine import Mask, chain
from dlopt.core.per_leaf import per_leaf
from dlopt.optimizers.adam import scale_by_adam
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a leaf form the rows (``reduction_axis``, the input) and the columns
    (``output_axis``) of the matrix GaLore projects; e.g. ``(0, (1, 2))`` for attention
    weights stored as (embed, heads, head_dim)."""

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


GaLoreDimNumsOrFn = GaLoreDimensionNumbers | chex.ArrayTree | Callable[[chex.ArrayTree], Any]


class GaLoreState(NamedTuple):
    count: chex.Array  # int32 step, saturating
    base_optimizer_state: Any  # the base optimizer's state, on the low-rank (proxy) shapes
    projector: chex.ArrayTree  # P per leaf: (m, r) or (n, r); (0, 0) for unprojected leaves


class _Matrix(NamedTuple):
    """A leaf seen as an (m, n) matrix: the transpose into it, and back."""

    perm: tuple[int, ...]
    inverse: tuple[int, ...]
    transposed_shape: tuple[int, ...]
    m: int
    n: int

    def to_matrix(self, x: jax.Array) -> jax.Array:
        return x.transpose(self.perm).reshape(self.m, self.n)

    def from_matrix(self, y: jax.Array) -> jax.Array:
        return y.reshape(self.transposed_shape).transpose(self.inverse)


def _axes(axis: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    return (axis % ndim,) if isinstance(axis, int) else tuple(a % ndim for a in axis)


def _matrix(shape: tuple[int, ...], dims: GaLoreDimensionNumbers) -> _Matrix:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"GaLore projects leaves of rank >= 2, got shape {shape} for {dims}.")
    rows, cols = _axes(dims.reduction_axis, ndim), _axes(dims.output_axis, ndim)
    if set(rows) & set(cols) or len(set(rows) | set(cols)) != ndim:
        raise ValueError(
            f"weight_dimension_numbers must split the axes of shape {shape} into disjoint "
            f"reduction and output axes covering all of them, got {dims}."
        )
    perm = rows + cols
    inverse = tuple(sorted(range(ndim), key=lambda i: perm[i]))
    m, n = math.prod(shape[a] for a in rows), math.prod(shape[a] for a in cols)
    return _Matrix(perm, inverse, tuple(shape[a] for a in perm), m, n)


def _leaf_dims(weight_dimension_numbers: Any, tree: chex.ArrayTree) -> tuple[list, Any]:
    """(the leaves, their dims: a `GaLoreDimensionNumbers` or None) and the treedef."""
    leaves, treedef = jax.tree.flatten(tree)
    given = weight_dimension_numbers
    if given is None:
        dims = [GaLoreDimensionNumbers() if jnp.ndim(x) == 2 else None for x in leaves]
    elif isinstance(given, GaLoreDimensionNumbers):
        dims = [given if jnp.ndim(x) >= 2 else None for x in leaves]
    else:
        given = given(tree) if callable(given) else given
        dims = treedef.flatten_up_to(given)
    return list(zip(leaves, dims, strict=True)), treedef


def _svd_projector(g2: jax.Array, r: int, left: bool) -> jax.Array:
    """The top-``r`` left (``U[:, :r]``) or right (``V[:, :r]``) singular vectors, in f32."""
    u, _, vh = jnp.linalg.svd(g2.astype(jnp.float32), full_matrices=False)
    return (u[:, :r] if left else vh[:r, :].T).astype(g2.dtype)


@per_leaf
def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_dimension_numbers: GaLoreDimNumsOrFn | None = None,
) -> GradientTransformation:
    """Runs ``base_optimizer`` on gradients projected to a rank-``r`` subspace (GaLore).

    For each projected leaf, seen as an (m, n) matrix :math:`G_t`, with
    :math:`r' = \\min(r, m, n)`: every ``update_proj_gap`` steps (from step 0) the projector
    is refreshed from the SVD :math:`G_t = U S V^\\top` (in float32),

    .. math::
        P = U_{:, :r'} \\ (m \\ge n), \\quad R_t = P^\\top G_t, \\quad
        u_t = s\\, P\\, \\rho(R_t); \\qquad
        P = V_{:, :r'} \\ (m < n), \\quad R_t = G_t P, \\quad u_t = s\\, \\rho(R_t) P^\\top

    with :math:`\\rho` the base optimizer (default `scale_by_adam`), whose state lives on the
    low-rank shapes (that is the memory saving), and :math:`s` = ``scale``. Other leaves go
    through :math:`\\rho` unprojected. The base optimizer gets no params (it sees low-rank
    shapes): use a params-free block (``scale_by_adam``, ``scale_by_lion``, ...), and put
    weight decay in `galore`.

    Args:
        rank: :math:`r`, an int >= 1.
        update_proj_gap: steps between projector refreshes, an int >= 1.
        scale: :math:`s`, a finite factor on the updates.
        base_optimizer: :math:`\\rho` (default ``scale_by_adam()``).
        weight_dimension_numbers: None (project the 2-D leaves), one `GaLoreDimensionNumbers`
            for every leaf of rank >= 2, a tree of them (None to skip a leaf), or a function
            ``params -> tree``.

    Returns:
        A `GradientTransformation` with state `GaLoreState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_galore(rank=2), dlopt.scale_by_learning_rate(1e-2))
        >>> state = tx.init({"w": jnp.ones((4, 3)), "b": jnp.ones(3)})

    References:
        Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
        Projection", arXiv:2403.03507.
    """
    validation.check_int("rank", rank, 1)
    validation.check_int("update_proj_gap", update_proj_gap, 1)
    validation.check_finite("scale", scale)
    if base_optimizer is None:
        base_optimizer = scale_by_adam()
    validation.check_transformation("base_optimizer", base_optimizer)

    def shapes(x, dims):
        """(projector, proxy) zeros for one leaf."""
        if dims is None:
            return jnp.zeros((0, 0), x.dtype), jnp.zeros_like(x)
        mat = _matrix(x.shape, dims)
        r = min(rank, mat.m, mat.n)
        if mat.m >= mat.n:
            return jnp.zeros((mat.m, r), x.dtype), jnp.zeros((r, mat.n), x.dtype)
        return jnp.zeros((mat.n, r), x.dtype), jnp.zeros((mat.m, r), x.dtype)

    def init_fn(params):
        pairs, treedef = _leaf_dims(weight_dimension_numbers, params)
        both = [shapes(x, d) for x, d in pairs]
        projectors, proxies = [b[0] for b in both], [b[1] for b in both]
        return GaLoreState(
            count=jnp.zeros([], jnp.int32),
            base_optimizer_state=base_optimizer.init(treedef.unflatten(proxies)),
            projector=treedef.unflatten(projectors),
        )

    def update_fn(updates, state, params=None):
        del params
        refresh = state.count % update_proj_gap == 0
        pairs, treedef = _leaf_dims(weight_dimension_numbers, updates)
        old = treedef.flatten_up_to(state.projector)
        low, projectors = [], []
        for (g, dims), p in zip(pairs, old, strict=True):
            if dims is None:
                low.append(g)
                projectors.append(p)
                continue
            g2 = _matrix(g.shape, dims).to_matrix(g)
            left = g2.shape[0] >= g2.shape[1]
            r = p.shape[1]
            p = jax.lax.cond(refresh, lambda g2=g2, r=r, left=left: _svd_projector(g2, r, left),
                             lambda p=p: p)  # fmt: skip
            low.append(p.T @ g2 if left else g2 @ p)
            projectors.append(p)
        low_updates, base_state = base_optimizer.update(
            treedef.unflatten(low), state.base_optimizer_state, None
        )
        out = []
        for (g, dims), p, v in zip(pairs, projectors, treedef.flatten_up_to(low_updates),
                                   strict=True):  # fmt: skip
            if dims is None:
                out.append(v)
                continue
            mat = _matrix(g.shape, dims)
            full = p @ v if mat.m >= mat.n else v @ p.T
            out.append((scale * mat.from_matrix(full)).astype(g.dtype))
        new_state = GaLoreState(
            count=tree_lib.safe_increment(state.count),
            base_optimizer_state=base_state,
            projector=treedef.unflatten(projectors),
        )
        return treedef.unflatten(out), new_state

    return GradientTransformation(init_fn, update_fn)


@per_leaf
def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: float = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: chex.Numeric = 0.0,
    mask: Mask | None = None,
    weight_dimension_numbers: GaLoreDimNumsOrFn | None = None,
) -> GradientTransformationExtraArgs:
    """GaLore: full-parameter training with optimizer state in a low-rank gradient subspace.

    .. math::
        w \\leftarrow w - \\eta \\left(u_t + \\lambda w\\right)

    with :math:`u_t` from `scale_by_galore` (the base optimizer, default Adam, run on
    :math:`P^\\top G` and projected back by :math:`P`, refreshed from the gradient's SVD every
    ``update_proj_gap`` steps) and :math:`\\lambda` decoupled weight decay applied in the full
    space. For an (m, n) matrix, Adam's state shrinks from :math:`2mn` to
    :math:`2 r \\max(m, n)` numbers plus the projector.

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule. If ``base_optimizer`` already
            includes a learning rate, pass 1.0.
        rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers: as in
            `scale_by_galore`.
        weight_decay: :math:`\\lambda` >= 0.
        mask: bools (or ``params -> bools``) selecting the decayed leaves.

    Returns:
        ``chain(scale_by_galore(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> params = {"w": jnp.ones((8, 6)), "b": jnp.ones(6)}
        >>> tx = dlopt.galore(0.01, rank=2)
        >>> state = tx.init(params)
        >>> grads = jax.grad(lambda p: jnp.sum(p["w"] ** 2) + jnp.sum(p["b"] ** 2))(params)
        >>> updates, state = tx.update(grads, state, params)

    References:
        Zhao et al., 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
        Projection", arXiv:2403.03507.
    """
    validation.check_learning_rate(learning_rate)
    return chain(
        scale_by_galore(rank, update_proj_gap, scale, base_optimizer, weight_dimension_numbers),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
