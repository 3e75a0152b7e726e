"""L-BFGS: a quasi-Newton direction from the last m parameter and gradient differences,
by the two-loop recursion; with a line search (default: zoom, strong Wolfe) it is `lbfgs`."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from dlopt.core import numerics, validation
from dlopt.core import tree as tree_lib
from dlopt.core.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    ScalarOrSchedule,
    identity,
)
from dlopt.core.combine import chain
from dlopt.linesearch.backtracking import add_scale, check_flag
from dlopt.linesearch.zoom import scale_by_zoom_linesearch
from dlopt.transforms.scaling import scale, scale_by_learning_rate


class ScaleByLBFGSState(NamedTuple):
    count: chex.Array  # int32 iteration k, saturating
    params: chex.ArrayTree  # w_{k-1}, the params of the last update
    updates: chex.ArrayTree  # u_{k-1}, its incoming updates (gradients), params' dtypes
    diff_params_memory: chex.ArrayTree  # s_j = w_{j+1} - w_j, each leaf (m, *shape), a ring
    diff_updates_memory: chex.ArrayTree  # y_j = u_{j+1} - u_j, same layout
    weights_memory: chex.Array  # rho_j = 1 / Re<y_j, s_j> (0 for an empty or flat pair), (m,)


def _slot(memory: chex.ArrayTree, i: chex.Array) -> chex.ArrayTree:
    return jax.tree.map(lambda x: x[i], memory)


def _scaled(gamma: chex.Array, tree: chex.ArrayTree) -> chex.ArrayTree:
    return jax.tree.map(lambda v: gamma.astype(v.dtype) * v, tree)


def _two_loop(updates, state_memory, gamma, memory_idx, dtype):
    """``H u`` for the L-BFGS inverse-Hessian approximation ``H`` (N&W Algorithm 7.4).

    ``state_memory = (s, y, rho)`` rings of m pairs; ``memory_idx`` is the oldest slot.
    Runs in full precision (float32 or wider) whatever the memory's storage dtype.
    """
    diff_params, diff_updates, rhos = state_memory
    m = rhos.shape[0]
    order = (memory_idx + jnp.arange(m, dtype=jnp.int32)) % m  # oldest ... newest
    vec = jax.tree.map(lambda u: u.astype(numerics.compute_dtype(u.dtype)), updates)  # jnp

    def newest_first(q, i):
        alpha = rhos[i] * numerics.real_vdot(_slot(diff_params, i), q, dtype)
        return add_scale(q, -alpha, _slot(diff_updates, i)), alpha

    vec, alphas = jax.lax.scan(newest_first, vec, order, reverse=True)
    vec = _scaled(gamma, vec)

    def oldest_first(r, i_alpha):
        i, alpha = i_alpha
        beta = rhos[i] * numerics.real_vdot(_slot(diff_updates, i), r, dtype)
        return add_scale(r, alpha - beta, _slot(diff_params, i)), beta

    vec, _ = jax.lax.scan(oldest_first, vec, (order, alphas))
    return vec


def scale_by_lbfgs(
    memory_size: int = 10, scale_init_precond: bool = True
) -> GradientTransformation:
    """Scales the updates by the L-BFGS approximation of the inverse Hessian.

    With :math:`s_j = w_{j+1} - w_j`, :math:`y_j = u_{j+1} - u_j` and :math:`\\rho_j = 1 /
    \\mathrm{Re}\\langle y_j, s_j\\rangle` kept for the last :math:`m` (``memory_size``)
    iterations, the direction is :math:`H_k u_k` with

    .. math::
        H_k = H_{k,k}, \\quad H_{k,j+1} = V_j^\\top H_{k,j} V_j + \\rho_j s_j s_j^\\top
        \\ (j = k-m, \\dots, k-1), \\quad H_{k,k-m} = \\gamma_k I, \\quad
        V_j = I - \\rho_j y_j s_j^\\top,

    the BFGS update applied m times to :math:`\\gamma_k I`, computed without any matrix by
    the two-loop recursion: :math:`q \\leftarrow u_k`; for :math:`j = k-1, \\dots, k-m`:
    :math:`\\alpha_j = \\rho_j \\langle s_j, q\\rangle,\\ q \\leftarrow q - \\alpha_j y_j`;
    then :math:`r \\leftarrow \\gamma_k q`; for :math:`j = k-m, \\dots, k-1`:
    :math:`\\beta_j = \\rho_j \\langle y_j, r\\rangle,\\ r \\leftarrow r + (\\alpha_j -
    \\beta_j) s_j`; :math:`H_k u_k = r`. With ``scale_init_precond``, :math:`\\gamma_k =
    \\langle s_{k-1}, y_{k-1}\\rangle / \\|y_{k-1}\\|^2` and, at the first step,
    :math:`\\gamma_0 = \\min(1, 1/\\|u_0\\|)` (optax's heuristic: the first step lies in the
    unit ball); else :math:`\\gamma_k = 1`. Inner products are :math:`\\mathrm{Re}\\langle
    a, b\\rangle = \\mathrm{Re} \\sum \\bar a b`, so complex params work as in optax.

    The memory is refreshed from the params and updates *this* call receives, then the
    direction computed; put a line search after it (as `lbfgs` does) so that the memory
    sees only accepted steps. The memory is kept in the parameters' dtypes (2m copies of
    the params); the recursion runs in float32 or wider. Updates come back in each
    parameter's dtype.

    Deliberate difference from optax: for low-precision parameters the two loops run in
    float32 (optax rounds every step to the parameters' dtype) and ``weights_memory`` is in
    that real compute dtype; the memory rings keep the parameters' sharding (optax allocates
    them unsharded); every argument is validated. Identical to optax for float32, float64
    and complex parameters.

    Args:
        memory_size: m, the number of pairs kept, an int >= 1.
        scale_init_precond: use the scaled identity :math:`\\gamma_k I` above (else I).

    Returns:
        A `GradientTransformation` with state `ScaleByLBFGSState`; ``update`` needs params.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> tx = dlopt.scale_by_lbfgs(memory_size=5)
        >>> state = tx.init({"w": jnp.zeros(3)})

    References:
        Nocedal and Wright, 2006, "Numerical Optimization", 2nd ed., Springer, Alg. 7.4, 7.5.
        Liu and Nocedal, 1989, "On the limited memory BFGS method for large scale
        optimization", Mathematical Programming 45.
    """
    validation.check_int("memory_size", memory_size, low=1)
    check_flag("scale_init_precond", scale_init_precond)

    def init_fn(params):
        tree_lib.check_float_params(params)
        zeros = tree_lib.zeros_like(params)
        ring = jax.tree.map(lambda z: jnp.broadcast_to(z, (memory_size, *z.shape)), zeros)
        return ScaleByLBFGSState(
            count=jnp.zeros([], jnp.int32),
            params=zeros,
            updates=zeros,
            diff_params_memory=ring,
            diff_updates_memory=ring,
            weights_memory=jnp.zeros((memory_size,), numerics.scalar_dtype(params)),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "scale_by_lbfgs needs params: call update(updates, state, params, ...)."
            )
        params, updates = jax.tree.map(jnp.asarray, (params, updates))  # numpy in, jax dtypes
        dtype = numerics.scalar_dtype(params)
        first = state.count == 0
        memory_idx = state.count % memory_size  # slot k mod m: the oldest pair
        prev_idx = (state.count - 1) % memory_size  # where the pair (s_{k-1}, y_{k-1}) goes
        stored_updates = tree_lib.cast_like(updates, params)
        minus_one = -jnp.ones((), dtype)
        # 1. the new pair, zero at the first step (no previous iterate)
        diff_params = add_scale(params, minus_one, state.params)
        diff_updates = add_scale(stored_updates, minus_one, state.updates)
        diff_params, diff_updates = jax.tree.map(
            lambda d: jnp.where(first, jnp.zeros_like(d), d), (diff_params, diff_updates)
        )
        curvature = numerics.real_vdot(diff_updates, diff_params, dtype)
        weight = jnp.where(curvature == 0.0, 0.0, 1.0 / curvature)
        weight = jnp.where(first, jnp.zeros_like(weight), weight)
        memory = jax.tree.map(
            lambda ring, x: ring.at[prev_idx].set(x),
            (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
            (diff_params, diff_updates, weight),
        )
        # 2. gamma_k, the scale of the initial inverse Hessian
        if scale_init_precond:
            sq = numerics.squared_norm(diff_updates, dtype)
            gamma = jnp.where(sq > 0.0, curvature / sq, jnp.ones((), dtype))
            norm = jnp.sqrt(numerics.squared_norm(jax.lax.stop_gradient(updates), dtype))
            gamma = jnp.where(first, jnp.minimum(1.0, 1.0 / norm), gamma)
        else:
            gamma = jnp.ones((), dtype)
        # 3. the direction H_k u_k, by the two loops
        direction = _two_loop(updates, memory, gamma, memory_idx, dtype)
        dtypes = numerics.out_dtypes(updates, params)
        direction = jax.tree.map(lambda d, t: d.astype(t), direction, dtypes)
        return direction, ScaleByLBFGSState(
            count=tree_lib.safe_increment(state.count),
            params=params,
            updates=stored_updates,
            diff_params_memory=memory[0],
            diff_updates_memory=memory[1],
            weights_memory=memory[2],
        )

    return GradientTransformation(init_fn, update_fn)


# optax's default line search for lbfgs (one shared instance, as optax's default argument)
DEFAULT_LINESEARCH = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformationExtraArgs | GradientTransformation | None = (
        DEFAULT_LINESEARCH
    ),
) -> GradientTransformationExtraArgs:
    """L-BFGS: quasi-Newton steps :math:`w \\leftarrow w - \\eta_k H_k g_k`, with the step
    :math:`\\eta_k` from a line search.

    :math:`H_k g_k` is the two-loop recursion of `scale_by_lbfgs` over the last
    ``memory_size`` pairs :math:`(s_j, y_j) = (w_{j+1} - w_j, g_{j+1} - g_j)`. The default
    line search is `scale_by_zoom_linesearch` (``max_linesearch_steps=20``, first trial
    step 1), which finds :math:`\\eta_k` with the strong Wolfe conditions

    .. math::
        f(w - \\eta d) \\le f(w) - c_1 \\eta \\langle d, g\\rangle, \\qquad
        |\\langle \\nabla f(w - \\eta d), d\\rangle| \\le c_2 |\\langle d, g\\rangle|,
        \\quad d = H_k g_k,

    which keep :math:`\\langle s_k, y_k\\rangle > 0` and so :math:`H_k` positive definite.
    ``update`` takes ``value=``, ``grad=`` and ``value_fn=`` (`value_and_grad_from_state`
    reuses what the search computed). With ``linesearch=None`` the step is
    ``learning_rate`` (or 1).

    Deliberate difference from optax: those of `scale_by_lbfgs` and of the line search, and
    a ``linesearch`` that is not a transform is refused when the optimizer is built.

    Args:
        learning_rate: None (default: the line search alone sets the step) or a fixed
            scale >= 0 / schedule applied before the line search.
        memory_size: m, an int >= 1.
        scale_init_precond: scale the initial inverse Hessian as in `scale_by_lbfgs`.
        linesearch: a line-search transform (`scale_by_zoom_linesearch`,
            `scale_by_backtracking_linesearch`, or optax's), or None for none.

    Returns:
        ``chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1) or
        scale_by_learning_rate(learning_rate), linesearch)``.

    Example:
        >>> import jax.numpy as jnp, dlopt
        >>> f = lambda w: jnp.sum((w - 1.0) ** 2)
        >>> tx, w = dlopt.lbfgs(), jnp.zeros(3)
        >>> state, value_and_grad = tx.init(w), dlopt.value_and_grad_from_state(f)
        >>> for _ in range(3):
        ...     v, g = value_and_grad(w, state=state)
        ...     u, state = tx.update(g, state, w, value=v, grad=g, value_fn=f)
        ...     w = dlopt.apply_updates(w, u)
        >>> w
        Array([1., 1., 1.], dtype=float32)

    References:
        Liu and Nocedal, 1989, "On the limited memory BFGS method for large scale
        optimization", Mathematical Programming 45.
        Nocedal and Wright, 2006, "Numerical Optimization", 2nd ed., Springer, Alg. 7.4, 7.5.
    """
    if learning_rate is not None:
        validation.check_learning_rate(learning_rate)
    if linesearch is not None and not (
        callable(getattr(linesearch, "init", None))
        and callable(getattr(linesearch, "update", None))
    ):
        raise TypeError(
            "linesearch must be a line-search transform (e.g. dlopt.scale_by_zoom_linesearch"
            f"(20)) or None, got linesearch={linesearch!r}."
        )
    base_scaling = scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    return chain(
        scale_by_lbfgs(memory_size, scale_init_precond),
        base_scaling,
        identity() if linesearch is None else linesearch,
    )
