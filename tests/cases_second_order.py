"""Second-order optimizers (lbfgs, scale_by_lbfgs) and the line searches: table rows.

See `helpers.Case`. No row joins the shared optimizer table (``CASES`` is empty): its runs
feed a fixed gradient sequence to ``update``, while L-BFGS and the line searches evaluate
the objective itself (``value_fn=``). Their parity and convergence tests are in
test_lbfgs.py. ``CONFORMANCE`` rows run the conformance kit on the transforms wrapped by
`with_objective`, which supplies ``value=``, ``grad=`` and ``value_fn=`` (a function cannot
go through ``check_transformation``'s ``extra_args``: the kit jits them). ``EXTRA_ARGS``
gives test_hyperparameters.py the objective arguments per factory (a function of the params),
and ``NONE_IS_VALID`` the (factory, argument) pairs where None is a documented value.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from helpers import Case, Entry

import dlopt


def objective(params: Any) -> jax.Array:
    """A smooth, strictly convex objective on any float pytree: sum(x^2/2 + log(2 cosh x)),
    written with logaddexp so that it stays finite for large x."""
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(params):
        x = x.astype(jnp.float32)
        total = total + jnp.sum(0.5 * x**2 + jnp.logaddexp(x, -x))
    return total


def objective_args(params: Any) -> dict[str, Any]:
    """``value=``, ``grad=`` and ``value_fn=`` for `objective` at ``params``."""
    value, grad = jax.value_and_grad(objective)(params)
    return {"value": value, "grad": grad, "value_fn": objective}


def with_objective(tx: Any) -> dlopt.GradientTransformationExtraArgs:
    """``tx`` whose ``update`` gets `objective_args` of its params added."""

    def update(updates, state, params=None, **extra_args):
        return tx.update(updates, state, params, **objective_args(params), **extra_args)

    return dlopt.GradientTransformationExtraArgs(tx.init, update)


# pmap (and, for the lbfgs chains, vmap: their blocks have entries of their own) would only
# add a compile of ~10 s each; the plain lax.scan check still runs
FAST = {"check_pmap": False}
FASTER = {"check_pmap": False, "check_vmap": False}
CASES: list[Case] = []
CONFORMANCE: list[Entry] = [
    Entry("scale_by_lbfgs", "", lambda: dlopt.scale_by_lbfgs(memory_size=3)),
    Entry("lbfgs", "zoom", lambda: with_objective(dlopt.lbfgs(memory_size=3)), FASTER),
    Entry(
        "lbfgs",
        "backtracking_lr",
        lambda: with_objective(
            dlopt.lbfgs(0.5, 3, linesearch=dlopt.scale_by_backtracking_linesearch(5))
        ),
        FASTER,
    ),
    Entry(
        "scale_by_zoom_linesearch",
        "after_sgd",
        lambda: with_objective(dlopt.chain(dlopt.sgd(1.0), dlopt.scale_by_zoom_linesearch(8))),
        FAST,
    ),
    Entry(
        "scale_by_backtracking_linesearch",
        "store_grad",
        lambda: with_objective(
            dlopt.chain(dlopt.sgd(1.0), dlopt.scale_by_backtracking_linesearch(8, store_grad=True))
        ),
    ),
]
REQUIRED: dict[str, Any] = {"max_linesearch_steps": 10, "max_backtracking_steps": 10}
NO_HYPERPARAMETERS: set[str] = set()
EXTRA_ARGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "lbfgs": objective_args,
    "scale_by_zoom_linesearch": objective_args,
    "scale_by_backtracking_linesearch": objective_args,
}
NONE_IS_VALID: set[tuple[str, str]] = {("scale_by_zoom_linesearch", "approx_dec_rtol")}
