"""Muon's matrix view of a weight tensor: which axes are fan-in, fan-out and batch (experts),
given or inferred from Flax's leaf names and shapes."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import tree as tree_lib
from dlopt.transforms.regularizers import NOT_WEIGHTS

ReshapeFn = Callable[[jax.Array], jax.Array]


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight are the matrix's rows (reduction, fan-in) and columns (output,
    fan-out) for ``y = x W``; all other axes are batch axes, orthogonalized independently.
    optax's ``MuonDimensionNumbers`` is accepted wherever this one is."""

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


WeightDimNumOrFn = MuonDimensionNumbers | chex.ArrayTree | Callable[[chex.ArrayTree], Any]


def is_dim_nums(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "reduction_axis") and hasattr(x, "output_axis")


def normalize_axes(ndim: int, dim_nums: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    def norm(axes):
        return tuple(a % ndim for a in ((axes,) if isinstance(axes, int) else axes))

    return norm(dim_nums.reduction_axis), norm(dim_nums.output_axis)


def compute_muon_reshape(x: jax.Array, dim_nums: Any) -> tuple[ReshapeFn, ReshapeFn]:
    """Functions to reshape ``x`` to (batch, reduction, output) and back (optax's name)."""
    if x.ndim < 2:
        raise ValueError(f"Muon optimized parameters must have rank >= 2, got {x.ndim=}")
    reduction, output = normalize_axes(x.ndim, dim_nums)
    if set(reduction) & set(output):
        raise ValueError(
            f"Normalized reduction axes and output axes must be disjoint, got {reduction} and "
            f"{output}. Originally {dim_nums=} and {x.shape=}"
        )
    batch = tuple(sorted(set(range(x.ndim)) - set(reduction) - set(output)))
    order = batch + reduction + output
    inverse = tuple(sorted(range(x.ndim), key=lambda i: order[i]))
    sizes = [tuple(x.shape[a] for a in axes) for axes in (batch, reduction, output)]
    flat = tuple(math.prod(s) for s in sizes)
    unflat = sizes[0] + sizes[1] + sizes[2]
    return (
        lambda y: y.transpose(order).reshape(flat),
        lambda y: y.reshape(unflat).transpose(inverse),
    )


def fans(shape: tuple[int, ...], dim_nums: Any) -> tuple[int, int]:
    reduction, output = normalize_axes(len(shape), dim_nums)
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


# --- which leaves are matrices, and how


EMBEDDING_NAMES = frozenset({"embedding", "embeddings", "embed", "wte", "wpe"})


def _split_path(path: tuple) -> tuple[tuple, str | None]:
    """(the path of the leaf's container, the leaf's own name), skipping ``.value``."""
    return tree_lib.strip_wrappers(path)[:-1], tree_lib.leaf_name(path)


def kernel_dims(kernel: Any, bias: Any | None) -> MuonDimensionNumbers:
    """Dense/DenseGeneral/Conv/nnx kernels: the trailing axes that the bias's shape matches
    are the outputs (one axis without a bias), every other axis is fan-in. A kernel
    (E..., in, out) with a bias (E..., out) is a stack of Dense layers (``nn.vmap``,
    ``nnx.vmap``, mixture-of-experts): E... are batch axes, one matrix (in, out) each."""
    shape = tuple(jnp.shape(kernel))
    outputs = 1
    if bias is not None:
        b = tuple(jnp.shape(bias))
        if 1 <= len(b) < len(shape) and shape[-len(b) :] == b:
            outputs = len(b)
        elif len(b) >= 2 and len(shape) == len(b) + 1 and shape[: len(b) - 1] + shape[-1:] == b:
            return MuonDimensionNumbers(len(b) - 1, len(b))
    if len(shape) == 2:
        return MuonDimensionNumbers(0, 1)
    split = len(shape) - outputs
    return MuonDimensionNumbers(tuple(range(split)), tuple(range(split, len(shape))))


def _is_expert(path: tuple) -> bool:
    """Whether a container on the leaf's path names experts (``experts``, ``MoeExperts_0``)."""
    return "expert" in tree_lib.path_name(tree_lib.strip_wrappers(path)[:-1]).lower()


def infer_muon_dimension_numbers(params: chex.ArrayTree) -> chex.ArrayTree:
    """The dimension numbers `muon` uses when none are given: a tree shaped like ``params``
    with a `MuonDimensionNumbers` for each leaf Muon orthogonalizes and None for Adam's.

    The rule, on leaf names as Flax (linen and nnx) writes them:

    * ``kernel`` with ndim >= 2 (``Dense``, ``DenseGeneral``, ``Conv``, ``ConvTranspose``,
      ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Conv``): Muon. The output axes are the
      trailing axes whose shape is the sibling ``bias``'s shape (``DenseGeneral`` with
      ``features=(heads, head_dim)`` has kernel (in, heads, head_dim) and bias
      (heads, head_dim)); without a bias, the last axis. All other axes are the reduction
      (fan-in): a Conv kernel (kh, kw, in, out) becomes a (kh*kw*in, out) matrix.
    * ``embedding`` (``Embed``, ``nnx.Embed``; also ``embeddings``, ``embed``, ``wte``,
      ``wpe``): Adam, as the Muon authors do (a lookup table is not a linear map of inputs).
    * Leaves named like biases and norm parameters (``bias``, ``scale``, ``b``, ``offset``,
      ``beta``, ``gamma``: `dlopt.transforms.regularizers.NOT_WEIGHTS`), even 2-D ones such as
      DenseGeneral's (heads, head_dim) bias: Adam.
    * Mixture-of-experts weights: a ``kernel`` (E, in, out) with a bias (E, out) (a Dense
      under ``nn.vmap`` / ``nnx.vmap``), and any 3-D leaf under a container whose name
      contains ``expert`` (``experts/wi`` (E, d_model, d_ff), MaxText-style), are E matrices
      (in, out) orthogonalized separately (batch axis 0, `MuonDimensionNumbers` (1, 2)).
    * Any other 2-D leaf: Muon with axes (0, 1) (optax's rule). Everything else (scalars,
      vectors, n-D leaves not named ``kernel``): Adam.

    A bias-free ``DenseGeneral`` with several output axes cannot be told apart from a conv
    kernel by shape: pass ``muon_weight_dimension_numbers`` for it.

    Args:
        params: the parameter pytree (arrays or ``jax.ShapeDtypeStruct``).

    Returns:
        A pytree with the structure of ``params``, leaves `MuonDimensionNumbers` or None.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> dims = dlopt.infer_muon_dimension_numbers(
        ...     {"conv": {"kernel": jnp.ones((3, 3, 2, 8)), "bias": jnp.ones(8)}})
        >>> dims["conv"]["kernel"], dims["conv"]["bias"]
        (MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,)), None)
        >>> dlopt.infer_muon_dimension_numbers({"experts": {"wi": jnp.ones((4, 8, 16))}})
        {'experts': {'wi': MuonDimensionNumbers(reduction_axis=1, output_axis=2)}}
    """
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    by_name = {_split_path(path): leaf for path, leaf in with_paths}

    def rule(path, leaf):
        container, name = _split_path(path)
        ndim = len(jnp.shape(leaf))
        if name in EMBEDDING_NAMES or name in NOT_WEIGHTS:
            return None
        if ndim == 3 and _is_expert(path):
            return MuonDimensionNumbers(1, 2)
        if name == "kernel" and ndim >= 2:
            return kernel_dims(leaf, by_name.get((container, "bias")))
        if ndim != 2:
            return None
        return MuonDimensionNumbers(0, 1)

    return treedef.unflatten([rule(path, leaf) for path, leaf in with_paths])


def matrices_only(params: chex.ArrayTree) -> chex.ArrayTree:
    """optax's rule without dimension numbers: every 2-D leaf, axes (0, 1)."""
    return jax.tree.map(lambda p: MuonDimensionNumbers() if jnp.ndim(p) == 2 else None, params)


def expand_dims(dims: Any, tree: chex.ArrayTree) -> chex.ArrayTree:
    """A dims tree (a prefix of ``tree``, leaves dims or None) broadcast to every leaf."""
    leaves, treedef = jax.tree.flatten(tree)
    if is_dim_nums(dims) or dims is None:
        return treedef.unflatten([dims] * len(leaves))
    is_leaf = lambda x: x is None or is_dim_nums(x)  # noqa: E731
    flat, prefix = jax.tree.flatten(dims, is_leaf=is_leaf)
    subtrees = prefix.flatten_up_to(tree)
    return treedef.unflatten(
        [d for d, sub in zip(flat, subtrees, strict=True) for _ in jax.tree.leaves(sub)]
    )
