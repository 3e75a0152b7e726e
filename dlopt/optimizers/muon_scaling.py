"""The per-matrix scalings of Muon's orthogonalized update: the width (or consistent-RMS)
factor, and NorMuon's neuron-wise normalization by a second moment (Li et al., 2025)."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, init_empty_state
from dlopt.linalg.muon_dims import fans, normalize_axes

NORMUON_EPS = 1e-10  # the reference's, in both divisions


def _scale_by_shape_leaf(u, dims, consistent_rms):
    fan_in, fan_out = fans(u.shape, dims)
    if consistent_rms is None:
        factor = jnp.sqrt(jnp.maximum(1, fan_out / fan_in))
    else:
        factor = jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms
    return (tree_lib.scalar_like(factor, u) * u).astype(u.dtype)


def scale_by_shape(dims: chex.ArrayTree, consistent_rms: Any) -> GradientTransformation:
    """``u <- sqrt(max(1, fan_out / fan_in)) u`` (Jordan's width scaling), or
    ``sqrt(max(fan_in, fan_out)) * consistent_rms * u`` (Liu et al., 2025)."""

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        scaled = [
            _scale_by_shape_leaf(u, d, consistent_rms)
            for u, d in zip(leaves, treedef.flatten_up_to(dims), strict=True)
        ]
        return treedef.unflatten(scaled), state

    return GradientTransformation(init_empty_state, update_fn)


class NorMuonState(NamedTuple):
    """NorMuon's second moment: per leaf, one entry per output neuron (the reduction axes
    kept with size 1; a vector's is shaped like it), in float32 or wider."""

    nu: chex.ArrayTree


def _reduction_axes(ndim: int, dims: Any) -> tuple[int, ...]:
    return normalize_axes(ndim, dims)[0] if ndim >= 2 else ()


def _neuron_shape(shape: tuple[int, ...], dims: Any) -> tuple[int, ...]:
    reduction = _reduction_axes(len(shape), dims)
    return tuple(1 if a in reduction else n for a, n in enumerate(shape))


def _neuron_norm_leaf(u, nu, dims, *, beta2):
    """The reference's ``normuon_update`` after its Newton-Schulz call, for one leaf."""
    x = u.astype(numerics.compute_dtype(u.dtype, nu.dtype))
    reduction = _reduction_axes(x.ndim, dims)
    matrix = tuple(sorted(reduction + normalize_axes(x.ndim, dims)[1])) if x.ndim >= 2 else None
    square = numerics.abs_sq(x)
    mean = jnp.mean(square, axis=reduction, keepdims=True) if reduction else square
    nu = numerics.ema(nu.astype(square.dtype), mean, beta2)
    eps = tree_lib.scalar_like(NORMUON_EPS, nu)
    y = x * (1 / (jnp.sqrt(nu) + eps)).astype(x.dtype)
    norm_x = jnp.sqrt(jnp.sum(square, axis=matrix, keepdims=True))
    norm_y = jnp.sqrt(jnp.sum(numerics.abs_sq(y), axis=matrix, keepdims=True))
    y = y * (norm_x / (norm_y + eps)).astype(x.dtype)
    return y.astype(u.dtype), nu


def scale_by_neuron_norm(dims: chex.ArrayTree, beta2: chex.Numeric) -> GradientTransformation:
    """NorMuon's normalization of an orthogonalized update :math:`O` (per matrix, rows =
    reduction axes, columns = output neurons):

    .. math::
        v \\leftarrow \\beta_2 v + (1 - \\beta_2)\\, \\operatorname{mean}_{rows}(O \\odot O),
        \\quad \\hat O = O \\operatorname{diag}\\big(1 / (\\sqrt v + 10^{-10})\\big), \\quad
        O \\leftarrow \\frac{\\|O\\|_F}{\\|\\hat O\\|_F + 10^{-10}}\\, \\hat O

    (the reference code's norm-preserving form: only the relative scale of the neurons
    changes). A leaf of rank < 2 (a 1 x n row) gets one entry per element. ``dims`` is a
    tree of `MuonDimensionNumbers` (or masked nodes) shaped like the params.
    """

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        nu = [
            jnp.zeros(_neuron_shape(p.shape, d), numerics.compute_dtype(tree_lib.dtype_of(p)))
            for p, d in zip(leaves, treedef.flatten_up_to(dims), strict=True)
        ]
        return NorMuonState(nu=treedef.unflatten(nu))

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        if not leaves:
            return updates, state
        out = [
            _neuron_norm_leaf(u, v, d, beta2=beta2)
            for u, v, d in zip(
                leaves, treedef.flatten_up_to(state.nu), treedef.flatten_up_to(dims), strict=True
            )
        ]
        return (
            treedef.unflatten([o[0] for o in out]),
            NorMuonState(nu=treedef.unflatten([o[1] for o in out])),
        )

    return GradientTransformation(init_fn, update_fn)
