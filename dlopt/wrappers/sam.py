"""SAM: sharpness-aware minimization, as adversarial steps wrapped around an outer optimizer."""

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
    apply_updates,
    with_extra_args_support,
)


class SAMState(NamedTuple):
    steps_since_sync: chex.Array  # int32 adversarial steps since the last outer step
    opt_state: Any  # the outer optimizer's state
    adv_state: Any  # the adversarial optimizer's state
    cache: chex.ArrayTree | None  # the outer params during adversarial steps (None if opaque)


def _select(pred: chex.Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def _leafwise(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """``fn`` leaf by leaf in float32 (or wider), cast back to the first tree's dtypes."""

    def one(x, *others):
        f = numerics.compute_dtype(tree_lib.dtype_of(x), *map(tree_lib.dtype_of, others))
        out = fn(jnp.asarray(x).astype(f), *(jnp.asarray(o).astype(f) for o in others))
        return out.astype(tree_lib.dtype_of(x))

    return jax.tree.map(one, tree, *rest)


def sam(
    optimizer: GradientTransformation,
    adv_optimizer: GradientTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformationExtraArgs:
    """Sharpness-aware minimization: ascend to a nearby worst point, descend from there.

    Every ``sync_period`` (:math:`k`) calls, :math:`k - 1` adversarial steps from the outer
    params :math:`w`, then one outer step from :math:`w` with the last adversarial gradient:

    .. math::
        \\tilde w_0 = w, \\quad
        \\tilde w_{j+1} = \\tilde w_j - \\mathrm{adv}(\\nabla f(\\tilde w_j)), \\quad
        w \\leftarrow w + \\mathrm{opt}(\\nabla f(\\tilde w_{k-1}))

    where :math:`\\mathrm{adv}`, :math:`\\mathrm{opt}` are the updates of ``adv_optimizer`` and
    ``optimizer`` (the adversarial update is subtracted: it ascends). The paper's SAM is
    ``sam(opt, chain(normalize(), sgd(rho)), sync_period=2)``: :math:`\\tilde w = w + \\rho
    g / \\|g\\|`, then :math:`w \\leftarrow w + \\mathrm{opt}(\\nabla f(\\tilde w))`.

    By default (``opaque_mode=False``) each call to ``update`` is one of these steps, so the
    training loop sees the adversarial params (call ``update`` with the gradient at the
    current params; the params after every :math:`k`-th call are the outer ones).
    With ``opaque_mode=True`` one call runs all :math:`k - 1` adversarial steps internally,
    calling ``grad_fn(params, j)`` (pass it to ``update``), and returns only the outer
    update, so side effects such as BatchNorm statistics stay in step with the outer params.

    Deliberate differences from optax: with ``sync_period=1`` this is the outer optimizer
    (optax applies each update to the params of the step before); the transparent mode
    selects with ``jnp.where`` (optax blends arithmetically, so an inf in the unused branch
    gives NaN); extra keyword arguments of ``update`` reach both optimizers; arguments are
    validated.

    Args:
        optimizer: the outer optimizer (dlopt's or optax's).
        adv_optimizer: the adversarial optimizer, whose updates are subtracted (e.g.
            ``chain(normalize(), sgd(rho))``).
        sync_period: :math:`k`, an int >= 1: calls per outer step.
        reset_state: re-initialize the adversarial optimizer's state after each outer step.
        opaque_mode: run the adversarial steps inside ``update`` (needs ``grad_fn``).
        batch_axis_name: in opaque mode under ``pmap``, the axis the adversarial gradients
            are averaged over with ``jax.lax.pmean``.

    Returns:
        A `GradientTransformationExtraArgs` with state `SAMState`; ``update(grads, state,
        params, *, grad_fn=None, **extra_args)``.

    Example:
        >>> import dlopt
        >>> tx = dlopt.sam(dlopt.sgd(0.1), dlopt.chain(dlopt.normalize(), dlopt.sgd(0.05)))

    References:
        Foret, Kleiner, Mobahi and Neyshabur, 2021, "Sharpness-Aware Minimization for
        Efficiently Improving Generalization", ICLR.
    """
    validation.check_transformation("optimizer", optimizer)
    validation.check_transformation("adv_optimizer", adv_optimizer)
    validation.check_int("sync_period", sync_period, 1)
    validation.check_flag("reset_state", reset_state)
    validation.check_flag("opaque_mode", opaque_mode)
    if batch_axis_name is not None and not isinstance(batch_axis_name, str):
        raise TypeError(f"batch_axis_name must be a str or None, got {batch_axis_name=!r}.")
    outer = with_extra_args_support(optimizer)
    adversary = with_extra_args_support(adv_optimizer)

    def init_fn(params):
        return SAMState(
            steps_since_sync=jnp.zeros([], jnp.int32),
            opt_state=outer.init(params),
            adv_state=adversary.init(params),
            cache=None if opaque_mode else tree_lib.copy(params),
        )

    def adversarial_step(grads, adv_state, params, extra_args):
        ascent, adv_state = adversary.update(grads, adv_state, params, **extra_args)
        return jax.tree.map(jnp.negative, ascent), adv_state

    def transparent_update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
        del grad_fn
        if params is None:
            raise ValueError("sam needs params: call update(grads, state, params).")
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == sync_period - 1
        cache = _select(first, params, state.cache)
        adv_updates, adv_state = adversarial_step(updates, state.adv_state, params, extra_args)
        outer_updates, opt_state = outer.update(updates, state.opt_state, cache, **extra_args)
        # the outer step starts from the cached outer params: u = cache + step - params
        outer_updates = _leafwise(lambda u, c, p: c - p + u, outer_updates, cache, params)
        if reset_state:
            adv_state = _select(last, adversary.init(params), adv_state)
        else:
            adv_state = _select(last, state.adv_state, adv_state)
        return _select(last, outer_updates, adv_updates), SAMState(
            steps_since_sync=(state.steps_since_sync + 1) % sync_period,
            opt_state=_select(last, opt_state, state.opt_state),
            adv_state=adv_state,
            cache=cache,
        )

    def opaque_update_fn(updates, state, params=None, *, grad_fn=None, **extra_args):
        if grad_fn is None:
            raise ValueError("sam with opaque_mode=True needs update(..., grad_fn=fn).")
        if params is None:
            raise ValueError("sam needs params: call update(grads, state, params, grad_fn=...).")
        adv_params, grads, adv_state = params, updates, state.adv_state
        for j in range(sync_period - 1):
            adv_updates, adv_state = adversarial_step(grads, adv_state, adv_params, extra_args)
            adv_params = apply_updates(adv_params, adv_updates)
            grads = grad_fn(adv_params, j)
            if batch_axis_name is not None:
                grads = jax.lax.pmean(grads, axis_name=batch_axis_name)
        if reset_state:
            adv_state = adversary.init(params)
        updates, opt_state = outer.update(grads, state.opt_state, params, **extra_args)
        return updates, SAMState(jnp.zeros([], jnp.int32), opt_state, adv_state, None)

    update_fn = opaque_update_fn if opaque_mode else transparent_update_fn
    return GradientTransformationExtraArgs(init_fn, update_fn)
