"""The conformance kit: the properties every well-behaved `GradientTransformation` must have.

`check_transformation` runs them all on one transform and raises an ``AssertionError`` that
names the property that failed and where (which step, which leaf path). Run it on your own
transforms (dlopt's, optax's or hand-written ones) in your test suite:

    >>> import dlopt
    >>> from dlopt.testing import check_transformation
    >>> check_transformation(dlopt.sgd(0.1, momentum=0.9))

The properties, in the order they are checked (the names are those in the error messages):

- ``init is pure``: two ``init(params)`` calls give the same state.
- ``update is pure``: two eager ``update`` calls on the same inputs give the same outputs.
- ``jit == no-jit``: ``jax.jit(init)`` and ``jax.jit(update)`` match the eager calls.
- Then, at every one of ``steps`` jitted steps: ``no retrace across steps`` (one trace for
  all steps), ``updates match params' structure, shapes and dtypes``, ``state structure,
  shapes and dtypes are stable across updates`` and ``finite grads give finite updates and
  state`` (also for gradient magnitudes 1e-3 ... 1e3, drawn by hypothesis when installed; the
  state may keep an untouched infinite initial value such as reduce-on-plateau's
  ``best = inf``, never a NaN).
- ``zero gradients leave params unchanged``: from a fresh state, zero grads give zero updates
  (skipped with ``decays_weights=True``, e.g. for adamw).
- ``None leaves pass through``: a ``None`` leaf in params and grads comes back as ``None``.
- ``vmap with replicated state`` and ``pmap with replicated state``: members with their own
  gradients and one shared initial state, each running a ``lax.scan`` over the steps, give
  each member's own step-by-step results; ``state is a lax.scan carry`` is checked alone when
  those are off or fail.

The module imports only jax, numpy and chex; hypothesis is imported when it is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import keystr, tree_flatten_with_path

from dlopt.core import validation

INIT_PURE = "init is pure"
UPDATE_PURE = "update is pure"
JIT = "jit == no-jit"
UPDATES_MATCH = "updates match params' structure, shapes and dtypes"
STATE_STABLE = "state structure, shapes and dtypes are stable across updates"
FINITE = "finite grads give finite updates and state"
NO_RETRACE = "no retrace across steps"
SCAN = "state is a lax.scan carry"
ZERO_GRADS = "zero gradients leave params unchanged"
NONE_LEAVES = "None leaves pass through"
VMAP = "vmap with replicated state"
PMAP = "pmap with replicated state"
PROPERTIES = (
    INIT_PURE, UPDATE_PURE, JIT, UPDATES_MATCH, STATE_STABLE, FINITE,
    NO_RETRACE, SCAN, ZERO_GRADS, NONE_LEAVES, VMAP, PMAP,
)  # fmt: skip

_PREFIX = "check_transformation: property"


def default_params(seed: int = 0) -> dict:
    """The params `check_transformation` uses by default: a small mixed float32 pytree.

    A dict with a (2, 3) matrix, a (3,) vector, a scalar and a nested list, N(0, 1) values
    (few distinct shapes: the eager run compiles each primitive once per shape).
    """
    rng = np.random.default_rng(seed)

    def leaf(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    nested = [leaf(3), [leaf(2, 3)]]
    return {"matrix": leaf(2, 3), "vector": leaf(3), "scalar": leaf(), "nested": nested}


def random_like(tree: chex.ArrayTree, seed: int, scale: float = 1.0) -> chex.ArrayTree:
    """N(0, scale^2) values shaped and typed like ``tree``; ``None`` leaves stay ``None``."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(scale * rng.standard_normal(jnp.shape(x)), jnp.asarray(x).dtype),
        tree,
    )


@contextlib.contextmanager
def _checking(prop: str) -> Iterator[None]:
    """Turns any error raised inside into an ``AssertionError`` naming ``prop``."""
    try:
        yield
    except AssertionError as e:
        if str(e).startswith(_PREFIX):
            raise
        raise AssertionError(f'{_PREFIX} "{prop}" failed: {e}') from e
    except Exception as e:  # a crash inside a property is that property failing
        raise AssertionError(f'{_PREFIX} "{prop}" failed: {type(e).__name__}: {e}') from e


def _leaves(tree: chex.ArrayTree) -> list[tuple[str, Any]]:
    return [(keystr(path), leaf) for path, leaf in tree_flatten_with_path(tree)[0]]


def _structure_diff(actual: Any, expected: Any, name: str) -> str | None:
    if jax.tree.structure(actual) == jax.tree.structure(expected):
        return None
    paths_a = {p for p, _ in _leaves(actual)}
    paths_e = {p for p, _ in _leaves(expected)}
    if paths_e - paths_a:
        return f"{name} lacks the leaf {name}{sorted(paths_e - paths_a)[0]}"
    if paths_a - paths_e:
        return f"{name} has an unexpected leaf {name}{sorted(paths_a - paths_e)[0]}"
    a, e = str(jax.tree.structure(actual)), str(jax.tree.structure(expected))
    return f"{name} has tree structure {a[:300]}, expected {e[:300]}"


def _pairs(actual: Any, expected: Any, name: str, context: str) -> list[tuple]:
    """``(path, actual leaf, expected leaf)``, after checking that the structures match."""
    diff = _structure_diff(actual, expected, name)
    if diff:
        raise AssertionError(f"{context}: {diff}.")
    return [(p, a, e) for (p, a), (_, e) in zip(_leaves(actual), _leaves(expected), strict=True)]


def _assert_same_types(actual: Any, expected: Any, name: str, context: str) -> None:
    """Same tree structure (``None`` leaves included), and same shape and dtype per leaf."""
    for path, a, e in _pairs(actual, expected, name, context):
        if jnp.shape(a) != jnp.shape(e) or jnp.asarray(a).dtype != jnp.asarray(e).dtype:
            raise AssertionError(
                f"{context}: {name}{path} is {jax.typeof(a)}, expected {jax.typeof(e)}."
            )


def _assert_close(
    actual: Any, expected: Any, name: str, context: str, rtol: float, atol: float
) -> None:
    """``|actual - expected| <= atol + rtol |expected|`` leaf by leaf (NaN equals NaN)."""
    for path, a, e in _pairs(actual, expected, name, context):
        a64, e64 = _numeric(a), _numeric(e)
        if a64.shape != e64.shape or not np.allclose(a64, e64, rtol, atol, equal_nan=True):
            err = np.max(np.abs(a64 - e64)) if a64.shape == e64.shape else "shapes differ"
            raise AssertionError(
                f"{context}: {name}{path} differs (max abs difference {err}; "
                f"rtol={rtol}, atol={atol}).\n  got      {a64.ravel()[:6]}\n"
                f"  expected {e64.ravel()[:6]}"
            )


def _numeric(x: Any) -> np.ndarray:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x).astype(np.float64)


def _assert_finite(tree: Any, name: str, context: str, sentinels: Any = None) -> None:
    """No NaN or inf in ``tree``; an inf equal to the same leaf of ``sentinels`` is allowed
    (an untouched initial value such as ``best = inf``)."""
    allowed = [("", None)] * len(_leaves(tree)) if sentinels is None else _leaves(sentinels)
    for (path, x), (_, init) in zip(_leaves(tree), allowed, strict=True):
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact):
            continue
        values = _numeric(x)
        bad = ~np.isfinite(values)
        if init is not None:
            bad &= ~(np.isinf(values) & (values == _numeric(init)))
        if bad.any():
            raise AssertionError(f"{context}: {name}{path} is not finite: {values}.")


def _stack(trees: list[Any]) -> Any:
    """Stacks leaves on a new leading axis, on the host (no per-shape compiles)."""

    def stack(*xs):
        if jnp.issubdtype(jnp.asarray(xs[0]).dtype, jax.dtypes.prng_key):
            return jnp.stack(xs)
        return jnp.asarray(np.stack([np.asarray(x) for x in xs]))

    return jax.tree.map(stack, *trees)


def _unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: _numeric(x)[i], tree)


def _weak_type_change(before: Any, after: Any) -> str:
    for (path, b), (_, a) in zip(_leaves(before), _leaves(after), strict=False):
        if jax.typeof(b).weak_type != jax.typeof(a).weak_type:
            return (
                f" state{path} went from {jax.typeof(b)} to {jax.typeof(a)} (a leaf made from "
                "a Python scalar or jnp.asarray(0) is weakly typed; give init an explicit dtype)."
            )
    return ""


def check_transformation(
    tx: Any,
    params: chex.ArrayTree | None = None,
    *,
    steps: int = 3,
    seed: int = 0,
    extra_args: Mapping[str, Any] | None = None,
    decays_weights: bool = False,
    check_none_leaves: bool = True,
    check_vmap: bool = True,
    check_pmap: bool = True,
    num_devices: int = 2,
    random_examples: int = 5,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Checks that ``tx`` has every property of a well-behaved gradient transformation.

    Runs ``steps`` updates with random N(0, 1) gradients on ``params`` and checks the
    properties listed in this module's docstring. Costs about five compiles of ``update``.

    Args:
        tx: any ``(init, update)`` pair (dlopt's or optax's transforms, or your own).
        params: the parameters to test with (default: `default_params(seed)`).
        steps: number of updates per run (>= 2, so retraces can be seen).
        seed: seeds the gradients (and the default params).
        extra_args: keyword arguments passed to every ``update`` call, e.g. ``{"value": 1.0}``
            for reduce-on-plateau.
        decays_weights: ``tx`` moves params even when the gradient is zero (stateless weight
            decay, as in adamw); skips the zero-gradient property.
        check_none_leaves: run ``tx`` on ``(params, None)``; turn off for transforms built
            with a mask or label tree shaped exactly like ``params``.
        check_vmap: check ``jax.vmap`` over a batch with replicated state.
        check_pmap: check ``jax.pmap`` over ``num_devices`` local devices with replicated state
            (uses as many as exist, so one device runs it on one device).
        num_devices: devices (and vmap batch size) to use.
        random_examples: hypothesis examples of gradient magnitudes for the finiteness check
            (0 turns them off).
        rtol: relative tolerance of the jit/scan/vmap/pmap comparisons.
        atol: absolute tolerance of those comparisons and of "zero gradients, zero updates".

    Returns:
        None; raises an ``AssertionError`` naming the failed property.

    Example:
        >>> import dlopt
        >>> from dlopt.testing import check_transformation
        >>> check_transformation(dlopt.sgd(0.1, momentum=0.9))
    """
    validation.check_int("steps", steps, 2)  # two steps at least, to see retraces
    validation.check_int("num_devices", num_devices, 1)
    params = default_params(seed) if params is None else params
    extra = dict(extra_args or {})
    grads = [random_like(params, seed + 1 + k) for k in range(steps)]
    traces = [0]

    def update(g, s, p, kw):
        return tx.update(g, s, p, **kw)

    def traced_update(g, s, p, kw):
        traces[0] += 1
        return update(g, s, p, kw)

    jit_update = jax.jit(traced_update)

    with _checking(INIT_PURE):
        state0 = tx.init(params)
        _assert_close(tx.init(params), state0, "state", "two init(params) calls differ", 0, 0)

    with _checking(UPDATE_PURE):
        eager = update(grads[0], state0, params, extra)
        again = update(grads[0], state0, params, extra)
        context = "two eager update calls on the same inputs differ"
        _assert_close(again, eager, "(updates, state)", context, 0, 0)

    with _checking(JIT):
        context = "jax.jit(init)(params) differs from init(params)"
        _assert_close(jax.jit(tx.init)(params), state0, "state", context, rtol, atol)
        first = jit_update(grads[0], state0, params, extra)
        context = "jax.jit(update) differs from the eager update on the first step"
        _assert_close(first, eager, "(updates, state)", context, rtol, atol)

    with _checking(FINITE):
        _assert_finite(state0, "state", "after init", sentinels=state0)

    loop_updates, state, previous = [], state0, state0
    for k in range(steps):
        with _checking(NO_RETRACE):
            updates, state = first if k == 0 else jit_update(grads[k], state, params, extra)
            if traces[0] > 1:
                raise AssertionError(
                    f"jax.jit(update) was traced {traces[0]} times in {k + 1} steps with "
                    f"unchanged shapes and dtypes; the state's abstract values changed."
                    + _weak_type_change(state0, previous)
                )
        with _checking(UPDATES_MATCH):
            _assert_same_types(updates, params, "updates", f"step {k + 1}")
        with _checking(STATE_STABLE):
            _assert_same_types(state, state0, "state", f"after step {k + 1}, vs init")
        with _checking(FINITE):
            _assert_finite(updates, "updates", f"step {k + 1}")
            _assert_finite(state, "state", f"step {k + 1}", sentinels=state0)
        loop_updates.append(updates)
        previous = state

    if random_examples > 0:
        with _checking(FINITE):
            _check_finite_magnitudes(jit_update, state0, params, extra, steps, random_examples)

    if not decays_weights:
        with _checking(ZERO_GRADS):
            zeros = jax.tree.map(lambda p: jnp.asarray(np.zeros_like(p)), params)
            s = state0
            for k in range(steps):
                u, s = jit_update(zeros, s, params, extra)
                context = f"zero grads from a fresh state, step {k + 1}: params would move"
                _assert_close(u, zeros, "updates", context, 0.0, atol)

    if check_none_leaves:
        with _checking(NONE_LEAVES):
            p_none = (params, None)
            # Eager: the same primitives on the same shapes as the eager check, so no compiles.
            u, _ = update((grads[0], None), tx.init(p_none), p_none, extra)
            diff = _structure_diff(u, p_none, "updates")
            if diff:
                raise AssertionError(f"with params (params, None): {diff}.")
            context = "with a None leaf added, the other leaves' updates changed"
            _assert_close(u[0], loop_updates[0], "updates", context, rtol, atol)

    _check_scan_and_batches(
        update, jit_update, state0, params, extra, grads, (state, _stack(loop_updates)),
        seed=seed, check_vmap=check_vmap, check_pmap=check_pmap, num_devices=num_devices,
        rtol=rtol, atol=atol,
    )  # fmt: skip


def _run_loop(jit_update, state, params, extra, grads) -> tuple[Any, Any]:
    updates = []
    for g in grads:
        u, state = jit_update(g, state, params, extra)
        updates.append(u)
    return state, _stack(updates)


def _check_scan_and_batches(
    update, jit_update, state0, params, extra, grads, loop, *, seed, check_vmap, check_pmap,
    num_devices, rtol, atol,
) -> None:  # fmt: skip
    """``lax.scan`` over the steps equals the step-by-step ``loop``; so does each member of a
    vmapped (pmapped) scan, every member with its own gradients and the same initial state.

    The scan runs inside vmap and pmap (one compile each, not two); when a batched check fails,
    the plain scan runs on its own, so a scan problem is reported as one.
    """

    def scanned(s, gs, p, kw):
        return jax.lax.scan(lambda s, g: update(g, s, p, kw)[::-1], s, gs)

    def plain_scan():
        with _checking(SCAN):
            out = jax.jit(scanned)(state0, _stack(grads), params, extra)
            context = "lax.scan over the steps differs from the step-by-step loop"
            _assert_close(out, loop, "(state, updates)", context, rtol, atol)

    if not (check_vmap or check_pmap):
        plain_scan()
        return
    n = max(2, num_devices) if check_vmap else num_devices
    seqs = [grads] + [
        [random_like(params, seed + 1 + k + 1000 * i) for k in range(len(grads))]
        for i in range(1, n)
    ]
    refs = [loop] + [_run_loop(jit_update, state0, params, extra, seq) for seq in seqs[1:]]
    args = (_stack([state0] * n), _stack([_stack(seq) for seq in seqs]), _stack([params] * n))

    def compare_members(prop, run, size, who):
        try:
            with _checking(prop):
                out = run()
                for i in range(size):
                    context = f"{who} {i} of {size} (a lax.scan) differs from its own loop"
                    ref = refs[i]
                    _assert_close(_unstack(out, i), ref, "(state, updates)", context, rtol, atol)
        except AssertionError:
            plain_scan()  # raises if the scan alone is the problem
            raise

    in_axes = (0, 0, 0, None)
    if check_vmap:
        vmapped = jax.jit(jax.vmap(scanned, in_axes=in_axes))
        compare_members(VMAP, lambda: vmapped(*args, extra), n, "member")
    if check_pmap:
        devices = jax.local_devices()[:num_devices]
        d = len(devices)
        pmapped = jax.pmap(scanned, in_axes=in_axes, devices=devices)
        on_devices = jax.tree.map(lambda x: x[:d], args)
        compare_members(PMAP, lambda: pmapped(*on_devices, extra), d, "pmap device")


def _check_finite_magnitudes(jit_update, state0, params, extra, steps, examples) -> None:
    """Gradients of magnitude 10**-3 ... 10**3 give finite updates and state for ``steps``."""

    def run(seed: int, log10_scale: float) -> None:
        scale = float(10.0**log10_scale)
        s = state0
        for k in range(steps):
            g = random_like(params, 10_000 + seed * steps + k, scale)
            u, s = jit_update(g, s, params, extra)
            context = f"gradient scale {scale:.3g}, step {k + 1}"
            _assert_finite(u, "updates", context)
            _assert_finite(s, "state", context, sentinels=state0)

    try:
        from hypothesis import HealthCheck, example, given, settings
        from hypothesis import strategies as st
        from hypothesis.control import currently_in_test_context
    except ImportError:  # hypothesis is a test dependency only: fall back to a fixed grid
        currently_in_test_context = None
    if currently_in_test_context is None or currently_in_test_context():
        # No hypothesis, or already inside a @given test (hypothesis forbids nesting).
        for i, log10_scale in enumerate(np.linspace(-3.0, 3.0, examples)):
            run(i, float(log10_scale))
        return

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @example(0, -3.0)
    @example(0, 3.0)  # the extremes always, then random magnitudes between
    @given(st.integers(0, 1000), st.floats(-3.0, 3.0))
    def magnitudes(seed: int, log10_scale: float) -> None:
        run(seed, log10_scale)

    magnitudes()
