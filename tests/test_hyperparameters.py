"""Every hyperparameter of every exported factory is checked when the factory is called.

For each exported transform factory (the same introspection as the conformance table) and
each of its numeric parameters, the probes are a string, None (unless None is a documented
value), NaN, +inf and a negative magnitude:

* a string, None and NaN never make sense: building must raise, naming the parameter;
* +inf and a negative value may be mathematically valid (``clip(inf)`` clips nothing,
  ``scale(-0.1)`` is a descent step): building either raises naming the parameter, or the
  transform is valid and its first step is finite.

String-valued options (``mode``, ``state_rounding``, ...) are probed with a bogus string.
A new factory needs no entry here unless it has a required argument that is not in
`REQUIRED` (the test then says so), or takes no hyperparameters at all (`NO_HYPERPARAMETERS`).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import cases_adam_family
import cases_contrib_b
import cases_large_batch
import cases_modern
import cases_schedule_free
import cases_second_order
import cases_shampoo
import jax
import jax.numpy as jnp
import pytest
from support.exports import exported_transform_factories

import dlopt

# Valid values for required (no-default) arguments, by name.
REQUIRED: dict[str, Any] = {
    "learning_rate": 1e-2,
    "decay": 0.9,
    "max_delta": 1.0,
    "max_norm": 1.0,
    "threshold": 1.0,
    "clipping": 0.1,
    "step_size": -0.1,
    "step_size_fn": lambda count: -0.1 * jnp.ones_like(count, jnp.float32),
    "rate": 1e-3,
    "weight_decay": 1e-3,
    "tx": dlopt.sgd(0.1),
    "inner": dlopt.sgd(0.1),
    "max_consecutive_errors": 3,
    "every_k": 2,
    "init_step": ("heuristic", 1e-6),  # scale_by_dog
    "measure": lambda updates: updates,
}
GROUPS = (
    cases_adam_family, cases_large_batch, cases_modern, cases_schedule_free, cases_second_order,
    cases_contrib_b, cases_shampoo,
)  # fmt: skip
for group in GROUPS:
    REQUIRED |= group.REQUIRED
# Factories whose arguments are all transforms, trees or callables: nothing numeric to probe.
NO_HYPERPARAMETERS = {
    "chain",
    "named_chain",
    "identity",
    "stateless",
    "with_extra_args_support",
    "masked",
    "partition",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
    "fused",
    # optax API wrappers (issue 21): transforms, callables and masks only
    "multi_transform",
    "flatten",
    "monitor",
    "snapshot",
    "selective_transform",
    "stateless_with_tree_map",
    "conditionally_mask",
    "conditionally_transform",
}.union(*(group.NO_HYPERPARAMETERS for group in GROUPS))
NUMERIC_HINTS = ("Numeric", "float", "int", "Schedule", "Array")
EXTRA_ARGS = {"value": jnp.asarray(1.0, jnp.float32)}
# Per factory, a function of the params giving more extra arguments (value_fn=, grad=, ...),
# and the (factory, argument) pairs where None is a documented value (accepted, not raised).
FACTORY_EXTRA_ARGS = {k: v for group in GROUPS for k, v in getattr(group, "EXTRA_ARGS", {}).items()}
# Per factory, the gradients it takes from the plain ones (DP-SGD's per-example batch)
FACTORY_GRADS = {k: v for group in GROUPS for k, v in getattr(group, "GRADS", {}).items()}
NONE_IS_VALID = set().union(*(getattr(group, "NONE_IS_VALID", set()) for group in GROUPS))
PARAMS = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).reshape(3, 2), "b": jnp.ones(2)}
GRADS = jax.tree.map(lambda p: 0.3 * p + 0.1, PARAMS)


def _is_numeric(param: inspect.Parameter) -> bool:
    if isinstance(param.default, bool):
        return False
    if isinstance(param.default, int | float):
        return True
    hint = str(param.annotation)
    return any(h in hint for h in NUMERIC_HINTS) and "bool" not in hint.split("|")[0]


def _probes(factory: str, param: inspect.Parameter) -> list[tuple[str, Any, bool]]:
    """``(label, value, must_raise)`` for one parameter of ``factory``."""
    if isinstance(param.default, str):
        return [("bogus string", "no-such-option", True)]
    if not _is_numeric(param):
        return []
    base = param.default if isinstance(param.default, int | float) else REQUIRED.get(param.name)
    magnitude = abs(float(base)) if isinstance(base, int | float) and base else 1.0
    probes = [("string", str(magnitude), True), ("nan", math.nan, True)]
    if param.default is not None:
        # None is a documented value when the annotation names it (optax's
        # adafactor(clipping_threshold=None) turns clipping off), or NONE_IS_VALID says so
        none_valid = "None" in str(param.annotation) or (factory, param.name) in NONE_IS_VALID
        probes.append(("None", None, not none_valid))
    probes += [("inf", math.inf, False), ("negative", -magnitude, False)]
    return probes


def _cases() -> list[tuple[str, str, str, Any, bool]]:
    cases = []
    for name in sorted(exported_transform_factories() - NO_HYPERPARAMETERS):
        for param in inspect.signature(getattr(dlopt, name)).parameters.values():
            for label, value, must_raise in _probes(name, param):
                cases.append((name, param.name, label, value, must_raise))
    return cases


CASES = _cases()


def _build(factory_name: str, **override: Any):
    factory = getattr(dlopt, factory_name)
    kwargs = {}
    for param in inspect.signature(factory).parameters.values():
        if param.default is inspect.Parameter.empty and param.name not in override:
            assert param.name in REQUIRED, (
                f"add a valid value for {factory_name}'s required argument {param.name!r} "
                "to REQUIRED in tests/test_hyperparameters.py"
            )
            kwargs[param.name] = REQUIRED[param.name]
    return factory(**{**kwargs, **override})


def _first_step_is_finite(tx, factory: str) -> bool:
    tx = dlopt.with_extra_args_support(tx)
    extra = EXTRA_ARGS | FACTORY_EXTRA_ARGS.get(factory, lambda params: {})(PARAMS)
    grads = FACTORY_GRADS.get(factory, lambda g: g)(GRADS)
    updates, state = tx.update(grads, tx.init(PARAMS), PARAMS, **extra)
    leaves = jax.tree.leaves((updates, state))
    return all(
        bool(jnp.all(jnp.isfinite(x))) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)
    )


def test_every_factory_builds_with_its_defaults_and_steps():
    for name in sorted(exported_transform_factories() - NO_HYPERPARAMETERS):
        assert _first_step_is_finite(_build(name), name), name


def test_the_probe_table_is_not_empty():
    assert len({c[0] for c in CASES}) >= 25 and len(CASES) >= 300


@pytest.mark.parametrize(
    "factory, argument, label, value, must_raise",
    CASES,
    ids=[f"{f}-{a}-{label}" for f, a, label, _, _ in CASES],
)
def test_bad_hyperparameters_fail_at_construction_naming_the_argument(
    factory, argument, label, value, must_raise
):
    try:
        tx = _build(factory, **{argument: value})
    except (TypeError, ValueError) as error:
        assert argument in str(error), f"{factory}({argument}={value!r}) raised: {error}"
        return
    assert not must_raise, f"{factory}({argument}={value!r}) was accepted"
    assert _first_step_is_finite(tx, factory), (
        f"{factory}({argument}={value!r}) was accepted but its first step is not finite; "
        "reject it at construction, naming the argument"
    )
