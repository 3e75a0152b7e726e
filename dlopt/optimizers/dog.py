"""DoG and DoWG: parameter-free step sizes from the distance travelled over the gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import GradientTransformation, ScalarOrSchedule, identity
from dlopt.core.combine import Mask, chain
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate

INIT_STEPS = ("distance", "learning_rate", "heuristic")


def _needs_params(name: str, params: Any, updates: Any) -> None:
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params).")
    tree_lib.check_matching_trees(params, updates, "params", "updates")


def _scaled(updates: chex.ArrayTree, step: chex.Array, params: chex.ArrayTree) -> chex.ArrayTree:
    """``step * u`` per leaf, computed at full precision, back in each parameter's dtype."""

    def one(u, d):
        f = numerics.compute_dtype(u.dtype, step.dtype)
        return (u.astype(f) * step.astype(f)).astype(d)

    return jax.tree.map(one, updates, numerics.out_dtypes(updates, params))


def _distance(params: chex.ArrayTree, init_params: chex.ArrayTree) -> chex.Array:
    """``||x_t - x_0||^2`` over all leaves, accumulated in float32 (or wider)."""
    diff = jax.tree.map(lambda p, p0: numerics.widen(p) - numerics.widen(p0), params, init_params)
    return numerics.squared_norm(diff)


class DoGState(NamedTuple):
    """State of `scale_by_dog` (optax's field names)."""

    is_init_step: chex.Array  # bool: the next update is the first
    init_params: chex.ArrayTree  # x_0
    max_dist: chex.Array  # r_bar, the largest distance from x_0 so far (starts at r_eps)
    sum_sq_norm_grads: chex.Array  # G, the sum of squared gradient norms


def _check_init_step(init_step: Any) -> tuple[str, Any]:
    if not isinstance(init_step, tuple | list) or len(init_step) != 2:
        raise TypeError(
            f"init_step must be a pair (tag, value) with tag in {INIT_STEPS}, "
            f"got init_step={init_step!r}."
        )
    tag, value = init_step
    validation.check_choice("init_step[0]", tag, INIT_STEPS)
    validation.check_positive("init_step[1]", value)
    return tag, value


def scale_by_dog(
    init_step: tuple[str, chex.Numeric], eps: chex.Numeric = 1e-8
) -> GradientTransformation:
    """Scales the gradient by DoG's step size :math:`\\bar r_t / \\sqrt{G_t + \\epsilon}`.

    See `dog` for the rule and ``init_step``.

    Deliberate difference from optax: the scalar state is float32 (float64 with float64
    params), not the params' lowest dtype (a bfloat16 running sum stops growing).

    Args:
        init_step: ``(tag, value)`` with ``tag`` one of ``"distance"``, ``"learning_rate"``,
            ``"heuristic"`` and ``value`` > 0 (see `dog`).
        eps: :math:`\\epsilon` >= 0, added to the sum of squared gradient norms.

    Returns:
        A `GradientTransformation` with state `DoGState`; ``update`` needs ``params``, and
        ``init`` the real initial params.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_dog(("heuristic", 1e-6)), dlopt.scale(-1.0))

    References:
        Ivgi, Hinder and Carmon, 2023, "DoG is SGD's Best Friend: A Parameter-Free Dynamic
        Step Size Schedule", ICML (arXiv:2302.12022).
    """
    tag, value = _check_init_step(init_step)
    validation.check_non_negative("eps", eps)

    def init_fn(params):
        params = tree_lib.as_arrays(params)  # Python numbers, as optax accepts
        tree_lib.check_float_params(params)
        dtype = numerics.scalar_dtype(params)
        if tag == "distance":
            r_eps = jnp.asarray(value, dtype)
        elif tag == "heuristic":
            r_eps = jnp.asarray(value, dtype) * (1 + numerics.global_norm(params).astype(dtype))
        else:
            r_eps = jnp.zeros([], dtype)
        return DoGState(
            is_init_step=jnp.asarray(True),
            init_params=tree_lib.copy(params),
            max_dist=r_eps,
            sum_sq_norm_grads=jnp.zeros([], dtype),
        )

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        _needs_params("scale_by_dog", params, updates)
        dtype = state.max_dist.dtype
        dist = jnp.sqrt(_distance(params, state.init_params)).astype(dtype)
        max_dist = jnp.maximum(state.max_dist, dist)
        sum_sq = state.sum_sq_norm_grads + numerics.squared_norm(updates).astype(dtype)
        step = max_dist / jnp.sqrt(sum_sq + tree_lib.scalar_like(eps, sum_sq))
        if tag == "learning_rate":
            step = jnp.where(state.is_init_step, tree_lib.scalar_like(value, step), step)
        new_state = DoGState(jnp.asarray(False), state.init_params, max_dist, sum_sq)
        return _scaled(updates, step, params), new_state

    return GradientTransformation(init_fn, update_fn)


def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: tuple[str, chex.Numeric] = ("heuristic", 1e-6),
    eps: chex.Numeric = 1e-8,
    weight_decay: chex.Numeric | None = None,
    mask: Mask | None = None,
) -> GradientTransformation:
    """DoG: SGD with the step size "distance over gradients" (Ivgi et al., 2023).

    .. math::
        \\bar r_t = \\max\\left(r_\\epsilon, \\max_{k \\le t} \\|x_k - x_0\\|\\right), \\quad
        G_t = \\sum_{k \\le t} \\|g_k\\|^2, \\quad
        x_{t+1} = x_t - \\eta_t \\frac{\\bar r_t}{\\sqrt{G_t + \\epsilon}}\\, g_t

    Norms are global (over all leaves). ``init_step`` sets the first step:
    ``("distance", r)`` gives :math:`r_\\epsilon = r`; ``("heuristic", a)`` gives
    :math:`r_\\epsilon = a (1 + \\|x_0\\|)` (the authors suggest 1e-6, or 1e-4 with batch
    norm); ``("learning_rate", lr)`` takes a first step of size ``lr``. The authors
    recommend averaging the iterates (e.g. `dlopt.ema` of the params).

    Args:
        learning_rate: :math:`\\eta_t` >= 0, a multiplier or schedule (default 1).
        init_step, eps: as in `scale_by_dog`.
        weight_decay: :math:`\\lambda` >= 0 added as :math:`g + \\lambda x` before the
            scaling, or None (no decay).
        mask: which leaves are decayed: a tree of bools or a function of the params.

    Returns:
        ``chain(add_decayed_weights(...) or identity(), scale_by_dog(init_step, eps),
        scale_by_learning_rate(learning_rate))``; ``update`` needs ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.dog(init_step=("learning_rate", 0.1))
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(10):
        ...     grads = jax.grad(lambda w: jnp.sum(w**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = dlopt.apply_updates(params, updates)
        >>> bool(jnp.sum(params**2) < 14.0)
        True

    References:
        Ivgi, Hinder and Carmon, 2023, "DoG is SGD's Best Friend: A Parameter-Free Dynamic
        Step Size Schedule", ICML (arXiv:2302.12022).
    """
    return chain(
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_dog(init_step, eps),
        scale_by_learning_rate(learning_rate),
    )


class DoWGState(NamedTuple):
    """State of `scale_by_dowg` (optax's field names)."""

    init_params: chex.ArrayTree  # x_0
    weighted_sq_norm_grads: chex.Array  # v_t = sum of r_bar_k^2 ||g_k||^2
    estim_sq_dist: chex.Array  # r_bar_t^2, the largest squared distance from x_0 so far


def scale_by_dowg(
    init_estim_sq_dist: chex.Numeric | None = None, eps: chex.Numeric = 1e-4
) -> GradientTransformation:
    """Scales the gradient by DoWG's step size :math:`\\bar r_t^2 / (\\sqrt{v_t} + \\epsilon)`.

    See `dowg` for the rule. Same deliberate dtype difference from optax as `scale_by_dog`.

    Args:
        init_estim_sq_dist: :math:`\\bar r_0^2` > 0, a guess of the squared distance to the
            solution (None: ``eps``).
        eps: :math:`\\epsilon` > 0, added to the denominator.

    Returns:
        A `GradientTransformation` with state `DoWGState`; ``update`` needs ``params``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_dowg(), dlopt.scale(-1.0))

    References:
        Khaled, Mishchenko and Jin, 2023, "DoWG Unleashed: An Efficient Universal
        Parameter-Free Gradient Descent Method", NeurIPS (arXiv:2305.16284).
    """
    if init_estim_sq_dist is not None:
        validation.check_positive("init_estim_sq_dist", init_estim_sq_dist)
    validation.check_positive("eps", eps)
    start = eps if init_estim_sq_dist is None else init_estim_sq_dist

    def init_fn(params):
        params = tree_lib.as_arrays(params)  # Python numbers, as optax accepts
        tree_lib.check_float_params(params)
        dtype = numerics.scalar_dtype(params)
        return DoWGState(
            init_params=tree_lib.copy(params),
            weighted_sq_norm_grads=jnp.zeros([], dtype),
            estim_sq_dist=jnp.asarray(start, dtype),
        )

    def update_fn(updates, state, params=None):
        updates, params = tree_lib.as_arrays(updates), tree_lib.as_arrays(params)
        _needs_params("scale_by_dowg", params, updates)
        dtype = state.estim_sq_dist.dtype
        sq_dist = jnp.maximum(
            state.estim_sq_dist, _distance(params, state.init_params).astype(dtype)
        )
        weighted = state.weighted_sq_norm_grads + sq_dist * numerics.squared_norm(updates).astype(
            dtype
        )
        step = sq_dist / (jnp.sqrt(weighted) + tree_lib.scalar_like(eps, weighted))
        new_state = state._replace(weighted_sq_norm_grads=weighted, estim_sq_dist=sq_dist)
        return _scaled(updates, step, params), new_state

    return GradientTransformation(init_fn, update_fn)


def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: chex.Numeric | None = None,
    eps: chex.Numeric = 1e-4,
    weight_decay: chex.Numeric | None = None,
    mask: Mask | None = None,
) -> GradientTransformation:
    """DoWG: distance over weighted gradients (Khaled et al., 2023).

    .. math::
        \\bar r_t^2 = \\max(\\bar r_{t-1}^2, \\|x_t - x_0\\|^2), \\quad
        v_t = v_{t-1} + \\bar r_t^2 \\|g_t\\|^2, \\quad
        x_{t+1} = x_t - \\eta_t \\frac{\\bar r_t^2}{\\sqrt{v_t} + \\epsilon}\\, g_t

    with global norms. Parameter-free and universal: it adapts to smooth and nonsmooth
    problems without knowing which.

    Args:
        learning_rate: :math:`\\eta_t` >= 0, a multiplier or schedule (default 1).
        init_estim_sq_dist, eps: as in `scale_by_dowg`.
        weight_decay: :math:`\\lambda` >= 0 added as :math:`g + \\lambda x`, or None.
        mask: which leaves are decayed: a tree of bools or a function of the params.

    Returns:
        ``chain(add_decayed_weights(...) or identity(), scale_by_dowg(init_estim_sq_dist,
        eps), scale_by_learning_rate(learning_rate))``; ``update`` needs ``params``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.dowg()
        >>> params = jnp.array([1.0, 2.0, 3.0])
        >>> state = tx.init(params)
        >>> for _ in range(5):
        ...     grads = jax.grad(lambda w: jnp.sum(w**2))(params)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = dlopt.apply_updates(params, updates)
        >>> print(f"{jnp.sum(params**2):.4f}")
        13.2688

    References:
        Khaled, Mishchenko and Jin, 2023, "DoWG Unleashed: An Efficient Universal
        Parameter-Free Gradient Descent Method", NeurIPS (arXiv:2305.16284).
    """
    return chain(
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_dowg(init_estim_sq_dist, eps),
        scale_by_learning_rate(learning_rate),
    )
