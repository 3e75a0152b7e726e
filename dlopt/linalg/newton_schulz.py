"""Newton-Schulz orthogonalization, and the matrix view of a weight tensor (Muon's
dimension numbers: which axes are fan-in and fan-out, inferred from Flax's leaf names)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dlopt.core import tree as tree_lib
from dlopt.core import validation
from dlopt.transforms.regularizers import NOT_WEIGHTS

PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)
_DION_NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
NS_COEFFS_PRESETS = {"standard": DEFAULT_NS_COEFFS, "dion": _DION_NS_COEFFS}
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


def _normalize_axes(ndim: int, dim_nums: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    def norm(axes):
        return tuple(a % ndim for a in ((axes,) if isinstance(axes, int) else axes))

    return norm(dim_nums.reduction_axis), norm(dim_nums.output_axis)


def _compute_muon_reshape(x: jax.Array, dim_nums: Any) -> tuple[ReshapeFn, ReshapeFn]:
    """Functions to reshape ``x`` to (batch, reduction, output) and back (optax's name)."""
    if x.ndim < 2:
        raise ValueError(f"Muon optimized parameters must have rank >= 2, got {x.ndim=}")
    reduction, output = _normalize_axes(x.ndim, dim_nums)
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
    reduction, output = _normalize_axes(len(shape), dim_nums)
    return math.prod(shape[a] for a in reduction), math.prod(shape[a] for a in output)


# --- Newton-Schulz


def _ns_step(x, c, *, first, preconditioning, eps):
    """One quintic step ``c0 X + (c1 A + c2 A^2) X`` with ``A = X X^H``; AOL and Schatten-4
    rescale ``X`` inside their first step."""
    a = x @ x.T.conj()
    if first and preconditioning == "aol":
        s = jax.lax.rsqrt(jnp.clip(jnp.sum(jnp.abs(a), axis=-1), min=eps)).astype(x.dtype)
        x, a = x * s[:, None], a * s[:, None] * s[None, :]
    elif first and preconditioning == "schatten":
        s = jax.lax.rsqrt(jnp.clip(jnp.linalg.norm(a, ord="fro"), min=eps)).astype(x.dtype)
        x, a = x * s, a * s * s
    b = c[1] * a + c[2] * a @ a
    return c[0] * x + b @ x


def orthogonalize_via_newton_schulz(
    x: jax.Array,
    ns_coeffs: jax.Array,
    ns_steps: int = 5,
    preconditioning: Literal["frobenius", "spectral", "aol", "schatten"] = "frobenius",
    eps: chex.Numeric = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
) -> jax.Array:
    """An approximately orthogonal matrix with ``x``'s singular vectors: :math:`U V^H`-ish.

    For :math:`X = U S V^H`, ``ns_steps`` quintic Newton-Schulz steps
    :math:`X \\leftarrow c_0 X + c_1 (X X^H) X + c_2 (X X^H)^2 X` (after scaling
    :math:`\\|X\\| \\le 1`) push every singular value towards 1; the default coefficients
    maximize the slope at 0, giving :math:`U S' V^H` with :math:`S'_{ii} \\in (0.5, 1.5)`,
    which trains as well as :math:`U V^H`. Wide orientation is used internally (a tall
    matrix is transposed). Tensors are reshaped to (batch, reduction, output) by
    ``dimension_numbers``; the batch is orthogonalized matrix by matrix.

    Args:
        x: a matrix, or a tensor with ``dimension_numbers``.
        ns_coeffs: (3,) coefficients, or (n, 3) for n steps with their own coefficients.
        ns_steps: number of steps with (3,) coefficients.
        preconditioning: the first rescaling: ``"frobenius"`` (:math:`X / \\|X\\|_F`),
            ``"spectral"`` (:math:`X / \\|X\\|_2`), ``"aol"`` (row scaling by
            :math:`(\\sum_j |X X^H|_{ij})^{-1/2}`) or ``"schatten"`` (:math:`\\|X X^H\\|_F^{-1/2}`).
        eps: added to the norm in the rescaling.
        dimension_numbers: reduction and output axes of a tensor (`MuonDimensionNumbers`).

    Returns:
        An array shaped like ``x``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> q = dlopt.orthogonalize_via_newton_schulz(jnp.eye(3) * 5.0, jnp.array([2.0, -1.5, 0.5]))
        >>> bool(jnp.allclose(q, jnp.eye(3), atol=1e-3))
        True
    """
    if x.ndim != 2 and not is_dim_nums(dimension_numbers):
        raise ValueError(
            "Input must have shape (m, n) or weight dimension numbers must be provided. Got "
            f"shape={x.shape} and {dimension_numbers=}."
        )
    if x.ndim == 2:
        dimension_numbers = MuonDimensionNumbers(0, 1)
    validation.check_choice("preconditioning", preconditioning, PRECONDITIONINGS)
    coeffs = jnp.asarray(ns_coeffs)
    if coeffs.ndim > 2 or coeffs.shape[-1] != 3:
        raise ValueError(f"ns_coeffs must have shape (3,) or (n, 3), got {coeffs.shape}.")
    rows = [coeffs] * ns_steps if coeffs.ndim == 1 else [coeffs[i] for i in range(len(coeffs))]

    def orthogonalize(m):
        transposed = m.shape[0] > m.shape[1]
        m = m.T if transposed else m
        if preconditioning in ("frobenius", "spectral"):
            norm = jnp.linalg.norm(m, ord="fro" if preconditioning == "frobenius" else 2)
            m = m / (norm + tree_lib.scalar_like(eps, norm)).astype(m.dtype)
        for i, c in enumerate(rows):
            m = _ns_step(
                m, c.astype(m.dtype), first=i == 0, preconditioning=preconditioning, eps=eps
            )
        return m.T if transposed else m

    reshape, inverse = _compute_muon_reshape(x, dimension_numbers)
    return inverse(jax.vmap(orthogonalize)(reshape(x)))


# --- which leaves are matrices, and how


EMBEDDING_NAMES = frozenset({"embedding", "embeddings", "embed", "wte", "wpe"})


def _split_path(path: tuple) -> tuple[tuple, str | None]:
    """(the path of the leaf's container, the leaf's own name), skipping ``.value``."""
    return tree_lib.strip_wrappers(path)[:-1], tree_lib.leaf_name(path)


def kernel_dims(kernel: Any, bias: Any | None) -> MuonDimensionNumbers:
    """Dense/DenseGeneral/Conv/nnx kernels: the trailing axes that the bias's shape matches
    are the outputs (one axis without a bias), every other axis is fan-in."""
    shape = tuple(jnp.shape(kernel))
    outputs = 1
    if bias is not None:
        b = tuple(jnp.shape(bias))
        if 1 <= len(b) < len(shape) and shape[-len(b) :] == b:
            outputs = len(b)
    if len(shape) == 2:
        return MuonDimensionNumbers(0, 1)
    split = len(shape) - outputs
    return MuonDimensionNumbers(tuple(range(split)), tuple(range(split, len(shape))))


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
    """
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    by_name = {_split_path(path): leaf for path, leaf in with_paths}

    def rule(path, leaf):
        container, name = _split_path(path)
        ndim = len(jnp.shape(leaf))
        if name == "kernel" and ndim >= 2:
            return kernel_dims(leaf, by_name.get((container, "bias")))
        if name in EMBEDDING_NAMES or name in NOT_WEIGHTS or ndim != 2:
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


def resolve_coeffs(ns_coeffs: Any, ns_steps: Any) -> Any:
    """Validated coefficients (a preset name resolved); (n, 3) ones need n <= ns_steps."""
    validation.check_int("ns_steps", ns_steps, 0)
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_COEFFS_PRESETS:
            raise ValueError(
                f"ns_coeffs must be coefficients or one of {sorted(NS_COEFFS_PRESETS)}, got "
                f"ns_coeffs={ns_coeffs!r}."
            )
        ns_coeffs = NS_COEFFS_PRESETS[ns_coeffs]
    if any(isinstance(c, jax.core.Tracer) for c in jax.tree.leaves(ns_coeffs)):
        return ns_coeffs
    try:
        array = np.asarray(ns_coeffs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"ns_coeffs must be numbers of shape (3,) or (n, 3): {error}") from None
    if array.ndim not in (1, 2) or array.shape[-1] != 3 or not np.all(np.isfinite(array)):
        raise ValueError(
            f"ns_coeffs must be finite with shape (3,) or (n, 3), got ns_coeffs={ns_coeffs!r}."
        )
    if array.ndim == 2 and array.shape[0] > ns_steps:
        raise ValueError(
            f"ns_coeffs has {array.shape[0]} rows, one per step, so ns_steps must be >= "
            f"{array.shape[0]}; got ns_steps={ns_steps}."
        )
    return ns_coeffs
