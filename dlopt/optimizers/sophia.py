"""Sophia: clipped second-order steps with a Hutchinson Hessian-diagonal estimate (Liu et al.)."""

from __future__ import annotations

import functools
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
    with_extra_args_support,
)
from dlopt.core.combine import Mask, chain
from dlopt.core.keys import prng_key
from dlopt.core.per_leaf import per_leaf
from dlopt.transforms.regularizers import add_decayed_weights
from dlopt.transforms.scaling import scale_by_learning_rate


class HutchinsonState(NamedTuple):
    key: chex.Array  # the key for the next step, as raw key data (uint32[2] for threefry)


@per_leaf
def hutchinson_estimator_diag_hessian(
    random_seed: jax.Array | None = None,
) -> GradientTransformationExtraArgs:
    """Hutchinson's unbiased estimate of the Hessian diagonal of ``obj_fn`` at ``params``.

    .. math:: \\widehat{\\operatorname{diag} H} = z \\odot (H z), \\qquad
        z_i \\in \\{-1, +1\\} \\ \\text{uniform (Rademacher)}

    with :math:`Hz` a Hessian-vector product (``jax.jvp`` of ``jax.grad(obj_fn)``), one
    probe per step. ``update(updates, state, params, obj_fn=...)`` ignores ``updates`` and
    needs ``params`` and ``obj_fn: params -> scalar loss``. The same draws as optax's;
    deliberate differences: ``state.key`` holds raw key data (a plain array tree), and each
    probe takes its leaf's dtype (optax casts all to the narrowest, so a mixed-precision tree
    fails there).

    Args:
        random_seed: a ``jax.random.PRNGKey``, a ``jax.random.key`` or an int seed (default
            ``PRNGKey(0)``).

    Returns:
        A `GradientTransformationExtraArgs` with state `HutchinsonState`.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> tx = dlopt.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(0))
        >>> params = jnp.array([1.0, 2.0])
        >>> diag, _ = tx.update(params, tx.init(params), params,
        ...                     obj_fn=lambda p: jnp.sum(p**3))
        >>> diag
        Array([ 6., 12.], dtype=float32)

    References:
        Hutchinson, 1989, "A stochastic estimator of the trace of the influence matrix for
        Laplacian smoothing splines"; Liu et al., 2023, arXiv:2305.14342 (Sophia-H).
    """
    given = None if random_seed is None else prng_key(random_seed, name="random_seed")

    def init_fn(params):
        del params
        key = jax.random.PRNGKey(0) if given is None else jax.random.key_data(given)
        return HutchinsonState(key=jnp.copy(key))

    def update_fn(updates, state, params=None, obj_fn=None, **extra_args):
        del updates, extra_args
        if params is None:
            raise ValueError("params must be provided to hutchinson update function.")
        if obj_fn is None:
            raise ValueError("obj_fn must be provided to hutchinson update function.")
        impl = None if given is None else jax.random.key_impl(given)
        key, sub = jax.random.split(jax.random.wrap_key_data(state.key, impl=impl))
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(sub, len(leaves))
        signs = treedef.unflatten(
            [
                jax.random.rademacher(k, x.shape, jnp.float32).astype(x.dtype)
                for k, x in zip(keys, leaves, strict=True)
            ]
        )
        hvp = jax.jvp(jax.grad(obj_fn), (params,), (signs,))[1]
        diag = jax.tree.map(lambda h, z: h * z, hvp, signs)
        return diag, HutchinsonState(key=jax.random.key_data(key))

    return GradientTransformationExtraArgs(init_fn, update_fn)


class SophiaState(NamedTuple):
    count: chex.Array  # int32 step, saturating
    mu: chex.ArrayTree  # momentum, in mu_dtype
    nu: chex.ArrayTree  # EMA of the Hessian diagonal
    hessian_fn_state: Any


def _sophia_leaf(g, mu, nu, *, count, b1, gamma, eps, clip_threshold):
    f = numerics.compute_dtype(g.dtype, mu.dtype)
    mu = numerics.ema(mu.astype(f), g.astype(f), b1)
    u = numerics.unbias(mu, b1, count) / jnp.maximum(
        tree_lib.scalar_like(gamma, nu) * nu, tree_lib.scalar_like(eps, nu)
    ).astype(f)
    if clip_threshold is not None:
        c = tree_lib.scalar_like(clip_threshold, u)
        u = jnp.clip(u, -c, c)
    return u.astype(g.dtype), mu


def scale_by_sophia(
    b1: chex.Numeric = 0.965,
    b2: chex.Numeric = 0.99,
    eps: chex.Numeric = 1e-8,
    gamma: chex.Numeric = 0.01,
    clip_threshold: chex.Numeric | None = 1.0,
    update_interval: chex.Numeric = 10,
    hessian_diagonal_fn: GradientTransformation = hutchinson_estimator_diag_hessian(),  # noqa: B008
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: chex.Numeric = 0,
) -> GradientTransformationExtraArgs:
    """Sophia's step: bias-corrected momentum over the clipped, scaled Hessian diagonal.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1 - \\beta_1) g_t, \\quad
        u_t = \\operatorname{clip}\\left(\\frac{m_t / (1 - \\beta_1^t)}
        {\\max(\\gamma h_{t-1}, \\epsilon)}, -\\rho, \\rho\\right), \\qquad
        h_t = \\beta_2 h_{t-1} + (1 - \\beta_2) \\hat h_t \\ \\text{every } k \\text{ steps}

    with :math:`\\hat h_t` from ``hessian_diagonal_fn`` (default
    `hutchinson_estimator_diag_hessian`, which needs ``obj_fn=`` in ``update``; extra keyword
    arguments of ``update`` go to it), :math:`k` = ``update_interval`` (refreshed at steps 0,
    k, 2k, ... after the step's update is formed) and :math:`\\rho` = ``clip_threshold``
    (None: no clipping). The effective :math:`\\beta_2` is :math:`1 - (1 - \\beta_2)/k`.

    Args:
        b1: :math:`\\beta_1` in [0, 1).
        b2: :math:`\\beta_2` in [0, 1).
        eps: :math:`\\epsilon` >= 0, the floor of the denominator.
        gamma: :math:`\\gamma` >= 0, the Hessian's scale.
        clip_threshold: :math:`\\rho` > 0 (inf or None: no clipping).
        update_interval: :math:`k`, an int >= 1.
        hessian_diagonal_fn: a transform ``(grads, state, params, **kw) -> diag``; average
            it across devices yourself when data-parallel.
        mu_dtype: dtype of :math:`m` (default: each parameter's dtype).
        verbose: print the win rate (the fraction of unclipped coordinates; the authors aim
            for 0.1 to 0.5) every ``print_win_rate_every_n_steps`` steps.
        print_win_rate_every_n_steps: an int >= 0 (0: never).

    Returns:
        A `GradientTransformationExtraArgs` with state `SophiaState`.

    Example:
        >>> import dlopt
        >>> tx = dlopt.chain(dlopt.scale_by_sophia(), dlopt.scale_by_learning_rate(1e-3))

    References:
        Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language
        Model Pre-training", arXiv:2305.14342.
    """
    numerics.check_betas(b1, b2)
    validation.check_non_negative("eps", eps)
    validation.check_non_negative("gamma", gamma)
    if clip_threshold is not None:
        validation.check_positive_or_inf("clip_threshold", clip_threshold)
    validation.check_int("update_interval", update_interval, 1, array_ok=True)
    validation.check_flag("verbose", verbose)
    validation.check_int("print_win_rate_every_n_steps", print_win_rate_every_n_steps,
                         array_ok=True)  # fmt: skip
    validation.check_transformation("hessian_diagonal_fn", hessian_diagonal_fn)
    mu_dtype = numerics.canonical_dtype(mu_dtype)
    hessian_fn = with_extra_args_support(hessian_diagonal_fn)

    def init_fn(params):
        return SophiaState(
            count=jnp.zeros([], jnp.int32),
            mu=tree_lib.zeros_like(params, mu_dtype),
            nu=tree_lib.zeros_like(params),
            hessian_fn_state=hessian_fn.init(params),
        )

    def update_fn(updates, state, params=None, **hess_fn_kwargs):
        if params is None:
            raise ValueError("params must be provided to sophia's update function.")
        count = tree_lib.safe_increment(state.count)
        leaf = functools.partial(
            _sophia_leaf, count=count, b1=b1, gamma=gamma, eps=eps, clip_threshold=clip_threshold
        )
        new, mu = tree_lib.map_unzip(leaf, updates, state.mu, state.nu) or (updates, state.mu)
        if verbose and clip_threshold is not None and print_win_rate_every_n_steps:
            inside = sum(jnp.sum(jnp.abs(u) < clip_threshold) for u in jax.tree.leaves(new))
            win_rate = inside / sum(jnp.size(u) for u in jax.tree.leaves(new))
            jax.lax.cond(
                count % print_win_rate_every_n_steps == 0,
                lambda: jax.debug.print("Sophia optimizer win rate: {}", win_rate),
                lambda: None,
            )

        def refresh(hess_state, nu):
            diag, hess_state = hessian_fn.update(updates, hess_state, params, **hess_fn_kwargs)
            nu = jax.tree.map(lambda h, n: numerics.ema(n, h, b2), diag, nu)
            return hess_state, nu

        hess_state, nu = jax.lax.cond(
            state.count % update_interval == 0,
            refresh,
            lambda h, n: (h, n),
            state.hessian_fn_state,
            state.nu,
        )
        mu = tree_lib.cast_like(mu, state.mu)  # back to mu_dtype
        return new, SophiaState(count=count, mu=mu, nu=nu, hessian_fn_state=hess_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def sophia(
    learning_rate: ScalarOrSchedule,
    b1: chex.Numeric = 0.965,
    b2: chex.Numeric = 0.99,
    eps: chex.Numeric = 1e-8,
    weight_decay: chex.Numeric = 1e-4,
    weight_decay_mask: Mask | None = None,
    gamma: chex.Numeric = 0.01,
    clip_threshold: chex.Numeric | None = 1.0,
    update_interval: chex.Numeric = 10,
    hessian_diagonal_fn: GradientTransformation = hutchinson_estimator_diag_hessian(),  # noqa: B008
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: chex.Numeric = 0,
) -> GradientTransformationExtraArgs:
    """Sophia: a light-weight second-order optimizer, clipped Newton-like steps per coordinate.

    .. math:: w \\leftarrow w - \\eta \\left(u_t + \\lambda w\\right)

    with :math:`u_t` from `scale_by_sophia` (momentum over :math:`\\max(\\gamma h, \\epsilon)`,
    clipped to :math:`\\pm\\rho`) and :math:`\\lambda` decoupled weight decay. The default
    Hessian estimator needs the objective: ``tx.update(grads, state, params,
    obj_fn=lambda p: loss_fn(p, batch))`` (a function of the params alone, returning the
    scalar loss).

    Args:
        learning_rate: :math:`\\eta` >= 0, or a schedule.
        b1, b2, eps, gamma, clip_threshold, update_interval, hessian_diagonal_fn, mu_dtype,
            verbose, print_win_rate_every_n_steps: as in `scale_by_sophia`.
        weight_decay: :math:`\\lambda` >= 0.
        weight_decay_mask: bools (or ``params -> bools``) selecting the decayed leaves.

    Returns:
        ``chain(scale_by_sophia(...), add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate))``.

    Example:
        >>> import jax, jax.numpy as jnp, dlopt
        >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
        >>> params, tx = jnp.zeros(3), dlopt.sophia(0.1, weight_decay=0.0)
        >>> state = tx.init(params)
        >>> # no Hessian estimate yet: m / eps is huge, and clipped to the step's bound 1
        >>> updates, state = tx.update(jax.grad(loss)(params), state, params, obj_fn=loss)
        >>> updates
        Array([0.1, 0.1, 0.1], dtype=float32)

    References:
        Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language
        Model Pre-training", arXiv:2305.14342; Levanter,
        https://github.com/stanford-crfm/levanter (Rademacher probes, as optax).
    """
    validation.check_learning_rate(learning_rate)
    return chain(
        scale_by_sophia(
            b1,
            b2,
            eps,
            gamma,
            clip_threshold,
            update_interval,
            hessian_diagonal_fn,
            mu_dtype,
            verbose,
            print_win_rate_every_n_steps,
        ),  # fmt: skip
        add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
