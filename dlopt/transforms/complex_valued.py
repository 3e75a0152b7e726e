"""Complex parameters as pairs of real ones: `split_real_and_imaginary`.

Wrapping an optimizer makes it treat each complex parameter :math:`z = x + iy` as the two
real parameters :math:`(x, y)`: the updates are split into real and imaginary parts, the
inner transform runs on real arrays, and the pairs are merged back. Note JAX's convention:
``jax.grad`` of a real loss in a complex parameter returns the conjugate of the steepest
ascent direction, so conjugate the gradients before ``update`` (see optax issue 196).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import validation
from dlopt.core.base import GradientTransformation
from dlopt.core.per_leaf import per_leaf


class SplitRealAndImaginaryArrays(NamedTuple):
    """A complex array as its real and imaginary parts."""

    real: chex.Array
    imaginary: chex.Array


def _split(x: Any) -> Any:
    return SplitRealAndImaginaryArrays(x.real, x.imag) if jnp.iscomplexobj(x) else x


def _merge(x: Any) -> Any:
    if isinstance(x, SplitRealAndImaginaryArrays):
        real, imaginary = (jnp.asarray(a) for a in x)
        f = jnp.promote_types(real.dtype, jnp.float32)  # lax.complex takes f32 or f64 parts
        return jax.lax.complex(real.astype(f), imaginary.astype(f))
    return x


class SplitRealAndImaginaryState(NamedTuple):
    inner_state: Any  # the inner transform's state, on the split (real) tree


@per_leaf
def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    """Runs ``inner`` on the real and imaginary parts of complex updates as separate reals.

    .. math:: u = \\rho(\\Re g) + i\\, \\rho(\\Im g)

    where :math:`\\rho` (``inner``) sees each part as its own real leaf, with its own state
    (so Adam's second moment is :math:`(\\Re g)^2` and :math:`(\\Im g)^2`, not
    :math:`|g|^2`). Real leaves pass through to ``inner`` unchanged.

    Args:
        inner: the transform to run on real arrays.

    Returns:
        A `GradientTransformation` with state `SplitRealAndImaginaryState`.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.split_real_and_imaginary(dlopt.adam(0.5))
        >>> z = jnp.array([1.0 + 2.0j])
        >>> updates, _ = tx.update(jnp.array([1.0 - 4.0j]), tx.init(z), z)
        >>> print(updates.round(4))  # Adam's first step on each part: -lr * sign
        [-0.5+0.5j]
    """
    validation.check_transformation("inner", inner)

    def init_fn(params):
        return SplitRealAndImaginaryState(inner.init(jax.tree.map(_split, params)))

    def update_fn(updates, state, params=None):
        updates = jax.tree.map(_split, updates)
        params = jax.tree.map(_split, params)
        updates, inner_state = inner.update(updates, state.inner_state, params)
        is_pair = lambda x: isinstance(x, SplitRealAndImaginaryArrays)  # noqa: E731
        return jax.tree.map(_merge, updates, is_leaf=is_pair), SplitRealAndImaginaryState(
            inner_state
        )

    return GradientTransformation(init_fn, update_fn)
