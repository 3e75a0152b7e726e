"""L-BFGS and the line searches: optax parity, torch's LBFGS minimum, the two-loop recursion
against the matrix it stands for, the Wolfe conditions, and the objective-passing contract."""

from __future__ import annotations

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from support.optimizers import optax_signature_prefix

import dlopt
from dlopt.optimizers.lbfgs import _two_loop

# --- problems


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _classification(n=40, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    labels = rng.integers(0, k, n)
    inputs = centers[labels] + 1.5 * rng.standard_normal((n, d))
    return inputs, labels


X, Y = _classification()


def softmax_regression(params):
    """Mean cross-entropy of a linear softmax classifier plus a small L2 penalty (a pytree)."""
    x = jnp.asarray(X, params["w"].dtype)
    logits = x @ params["w"] + params["b"][None, :]
    picked = jnp.take_along_axis(logits, jnp.asarray(Y)[:, None], axis=1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked) + 1e-2 * jnp.sum(params["w"] ** 2)


MAT = jnp.array([[1, -2], [3, 4], [-4 + 2j, 5 - 3j], [-2 - 2j, 6]], jnp.complex64)
RHS = jnp.array([1.0, 2j, -1 + 1j, 0.5], jnp.complex64)


def complex_objective(z):
    """A smooth real function of complex z: |A z - b|^2 + |z|^4 (the matrix of optax's
    test_lbfgs_complex; its |A z|^1.5 has an unbounded Hessian at the minimum, where
    iterates that differ by an ulp give gradients that differ by 1e-4)."""
    return jnp.sum(jnp.abs(MAT @ z - RHS) ** 2) + jnp.sum(jnp.abs(z) ** 4)


PROBLEMS = {
    "rosenbrock": (rosenbrock, jnp.array([-1.2, 1.0, 0.5, -0.3, 0.8])),
    "softmax": (softmax_regression, {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}),
    "complex": (complex_objective, jnp.array([1 - 1j, 0 + 1j], jnp.complex64)),
}


def run(lib, tx, fn, w0, steps=30, from_state=True):
    """``steps`` L-BFGS iterations in one jitted scan; returns (iterates, final state).

    ``from_state``: value and gradient from `value_and_grad_from_state` (reusing the line
    search's last evaluation), else a fresh ``jax.value_and_grad`` conjugated as optax's
    tests do for complex parameters.
    """
    value_and_grad = lib.value_and_grad_from_state(fn)

    def step(carry, _):
        w, state = carry
        if from_state:
            value, grad = value_and_grad(w, state=state)
        else:
            value, grad = jax.value_and_grad(fn)(w)
            grad = jax.tree.map(jnp.conj, grad)
        updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=fn)
        w = lib.apply_updates(w, updates)
        return (w, state), w

    @jax.jit
    def go(w):
        (_, state), ws = jax.lax.scan(step, (w, tx.init(w)), length=steps)
        return ws, state

    if lib is optax:
        with jax.numpy_dtype_promotion("standard"):
            return go(w0)
    return go(w0)


def _zoom_options(lib):
    return lib.scale_by_zoom_linesearch(
        15, max_learning_rate=2.0, approx_dec_rtol=None, initial_guess_strategy="keep"
    )


# (problem, build(lib), from_state); dlopt's and optax's builds are the same call (on CPU
# the iterates agree to the last bit; the tolerance leaves room for other backends)
PARITY = {
    "rosenbrock-default": ("rosenbrock", lambda lib: lib.lbfgs(), True),
    "rosenbrock-backtracking_store_grad": (
        "rosenbrock",
        lambda lib: lib.lbfgs(
            memory_size=4,
            linesearch=lib.scale_by_backtracking_linesearch(30, store_grad=True),
        ),
        True,
    ),
    "rosenbrock-no_linesearch": (
        "rosenbrock",
        lambda lib: lib.lbfgs(1e-3, 3, scale_init_precond=False, linesearch=None),
        False,
    ),
    "softmax-zoom_keep_capped": (
        "softmax",
        lambda lib: lib.lbfgs(memory_size=5, linesearch=_zoom_options(lib)),
        True,
    ),
    "complex-default": ("complex", lambda lib: lib.lbfgs(), False),
    "complex-backtracking": (
        "complex",
        lambda lib: lib.lbfgs(linesearch=lib.scale_by_backtracking_linesearch(20)),
        False,
    ),
}


@pytest.mark.parametrize("name", PARITY)
def test_iterates_and_state_match_optax(name):
    problem, build, from_state = PARITY[name]
    fn, w0 = PROBLEMS[problem]
    ours, our_state = run(dlopt, build(dlopt), fn, w0, from_state=from_state)
    theirs, their_state = run(optax, build(optax), fn, w0, from_state=from_state)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)
    # the whole state: memory rings, weights, step size, value, gradient, search info
    chex.assert_trees_all_close(
        jax.tree.leaves(our_state), jax.tree.leaves(their_state), rtol=1e-6, atol=1e-7
    )
    assert float(fn(jax.tree.map(lambda x: x[-1], ours))) < float(fn(w0))


def test_interop_both_ways_matches_optax():
    # dlopt's L-BFGS with optax's line search (dlopt.chain forwards value_fn= to it), and
    # dlopt's blocks inside optax.chain, both against optax.lbfgs on the pytree problem
    fn, w0 = PROBLEMS["softmax"]
    theirs, _ = run(optax, optax.lbfgs(), fn, w0, steps=10)
    mixed_one = dlopt.lbfgs(
        linesearch=optax.scale_by_zoom_linesearch(20, initial_guess_strategy="one")
    )
    # optax.chain forwards extra arguments only to optax's own ExtraArgs class: mark ours
    search = dlopt.scale_by_zoom_linesearch(20, initial_guess_strategy="one")
    mixed_two = optax.chain(
        dlopt.scale_by_lbfgs(), optax.scale(-1.0), optax.GradientTransformationExtraArgs(*search)
    )
    with jax.numpy_dtype_promotion("standard"):
        one, _ = run(dlopt, mixed_one, fn, w0, steps=10)
    two, _ = run(dlopt, mixed_two, fn, w0, steps=10)
    chex.assert_trees_all_close(one, theirs, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(two, theirs, rtol=1e-6, atol=1e-7)


# --- torch


def _torch_lbfgs(torch_fn, x0, history_size=10):
    """torch.optim.LBFGS with the strong-Wolfe search, run to convergence in one step()."""
    params = [torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True) for x in x0]
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=500, max_eval=5000, tolerance_grad=1e-12,
        tolerance_change=1e-15, history_size=history_size, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = torch_fn(*params)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return [p.detach().numpy() for p in params], torch_fn(*params).item()


def _dlopt_lbfgs(fn, w0, max_steps=300, tol=1e-10):
    """dlopt.lbfgs (memory 10) in float64 until the gradient norm is below ``tol``."""
    tx = dlopt.lbfgs()
    value_and_grad = dlopt.value_and_grad_from_state(fn)

    def cond(carry):
        k, _, _, grad_norm = carry
        return (k < max_steps) & (grad_norm > tol)

    def body(carry):
        k, w, state, _ = carry
        value, grad = value_and_grad(w, state=state)
        updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=fn)
        w = dlopt.apply_updates(w, updates)
        return k + 1, w, state, optax.tree.norm(jax.grad(fn)(w))

    start = (0, w0, tx.init(w0), jnp.asarray(jnp.inf, jnp.float64))
    _, w, _, _ = jax.jit(lambda c: jax.lax.while_loop(cond, body, c))(start)
    return w


def test_same_minimum_as_torch_lbfgs_strong_wolfe():
    # The iterates differ from the first step, so only the minimum is compared: torch's
    # first trial step is min(1, 1/||g||_1) along -g (optax and dlopt scale the first
    # direction by min(1, 1/||g||_2) and try step 1), torch drops pairs with y's <= 1e-10,
    # and its strong-Wolfe search (a port of minFunc's) brackets and interpolates with
    # different safeguards and stopping rules, so each search accepts a different step.
    xs, ys = (np.asarray(a, np.float64) for a in (X, Y == 1))

    def torch_rosenbrock(x):
        return torch.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    def torch_logistic(w, b):
        z = torch.from_numpy(xs) @ w + b
        y = torch.from_numpy(ys.astype(np.float64))
        return torch.mean(torch.nn.functional.softplus(z) - y * z) + 1e-2 * torch.sum(w**2)

    def logistic(params):
        z = jnp.asarray(xs) @ params[0] + params[1]
        return jnp.mean(jax.nn.softplus(z) - jnp.asarray(ys, z.dtype) * z) + 1e-2 * jnp.sum(
            params[0] ** 2
        )

    with jax.enable_x64(True):
        x0 = jnp.array([-1.2, 1.0, -0.5], jnp.float64)
        w = _dlopt_lbfgs(rosenbrock, x0)
        (tw,), tv = _torch_lbfgs(torch_rosenbrock, [x0])
        np.testing.assert_allclose(np.asarray(w), tw, rtol=0, atol=1e-6)
        np.testing.assert_allclose(float(rosenbrock(w)), tv, rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.asarray(w), np.ones(3), atol=1e-6)

        p0 = (jnp.zeros(5, jnp.float64), jnp.zeros((), jnp.float64))
        p = _dlopt_lbfgs(logistic, p0)
        (tw, tb), tv = _torch_lbfgs(torch_logistic, list(p0))
        np.testing.assert_allclose(np.asarray(p[0]), tw, rtol=0, atol=1e-6)
        np.testing.assert_allclose(float(p[1]), tb, rtol=0, atol=1e-6)
        np.testing.assert_allclose(float(logistic(p)), tv, rtol=1e-10)


# --- the two-loop recursion is H u for the L-BFGS matrix (Nocedal and Wright, eq. 7.19)


def _materialized_inverse_hessian(s, y, gamma, oldest):
    """H = V^T ... (gamma I) ... V + sum rho s s^T, built pair by pair, oldest first."""
    m, d = s.shape
    order = [(oldest + j) % m for j in range(m)]
    h = gamma * np.eye(d)
    for i in order:
        rho = 1.0 / (y[i] @ s[i])
        v = np.eye(d) - rho * np.outer(y[i], s[i])
        h = v.T @ h @ v + rho * np.outer(s[i], s[i])
    return h


@pytest.mark.parametrize("oldest", [0, 1, 3])
def test_two_loop_recursion_is_the_lbfgs_inverse_hessian(oldest):
    rng = np.random.default_rng(oldest)
    m, shapes = 4, [(3, 2), (5,)]
    d = sum(int(np.prod(s)) for s in shapes)
    s = rng.standard_normal((m, d))
    y = s + 0.3 * rng.standard_normal((m, d))  # y's > 0 for each pair, as after a Wolfe step
    u = rng.standard_normal(d)
    gamma = 0.7

    def as_tree(flat):  # flat (..., d) -> {"a": (..., 3, 2), "b": (..., 5)}
        lead = flat.shape[:-1]
        return {"a": jnp.asarray(flat[..., :6].reshape(*lead, 3, 2), jnp.float32),
                "b": jnp.asarray(flat[..., 6:], jnp.float32)}  # fmt: skip

    rho = jnp.asarray(1.0 / np.einsum("md,md->m", y, s), jnp.float32)
    out = _two_loop(as_tree(u), (as_tree(s), as_tree(y), rho), jnp.float32(gamma), oldest,
                    jnp.float32)  # fmt: skip
    expected = as_tree(_materialized_inverse_hessian(s, y, gamma, oldest) @ u)
    chex.assert_trees_all_close(out, expected, rtol=1e-4, atol=1e-5)


# --- the line searches meet their conditions


def test_zoom_step_satisfies_strong_wolfe_and_backtracking_armijo():
    fn, w = rosenbrock, jnp.array([-1.2, 1.0, 0.5])
    value, grad = jax.value_and_grad(fn)(w)
    u = -0.01 * grad  # a descent direction whose step 1 is far from the Wolfe step
    slope = float(jnp.vdot(u, grad))
    c1, c2 = 1e-4, 0.5
    zoom = dlopt.scale_by_zoom_linesearch(30, curv_rtol=c2, approx_dec_rtol=None)
    back = dlopt.scale_by_backtracking_linesearch(30, slope_rtol=c1, max_learning_rate=5.0)
    for tx, strong in ((zoom, True), (back, False)):
        step, state = jax.jit(
            lambda u, s, tx=tx: tx.update(u, s, w, value=value, grad=grad, value_fn=fn)
        )(u, tx.init(w))
        eta = float(state.learning_rate)
        assert eta > 0 and float(state.info.decrease_error) == 0.0
        assert float(fn(w + step)) <= float(value) + c1 * eta * slope
        chex.assert_trees_all_close(step, eta * u, rtol=1e-6)
        if strong:
            assert float(state.info.curvature_error) == 0.0
            assert abs(float(jnp.vdot(jax.grad(fn)(w + step), u))) <= c2 * abs(slope)
            chex.assert_trees_all_close(state.value, fn(w + step), rtol=1e-5)
            chex.assert_trees_all_close(state.grad, jax.grad(fn)(w + step), rtol=1e-5)


# --- low precision


def test_bf16_params_keep_dtypes_and_descend():
    fn = lambda p: jnp.sum((p["w"].astype(jnp.float32) - 1.0) ** 2)  # noqa: E731
    params = {"w": jnp.linspace(-1.0, 1.0, 6, dtype=jnp.float32).astype(jnp.bfloat16)}
    tx = dlopt.lbfgs(memory_size=3)
    state = tx.init(params)
    types = jax.tree.map(lambda x: (x.shape, x.dtype), state)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(fn)(p)
        u, s = tx.update(g, s, p, value=v, grad=g, value_fn=fn)
        return dlopt.apply_updates(p, u), s, u

    for _ in range(3):
        params, state, updates = step(params, state)
        assert updates["w"].dtype == jnp.bfloat16
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == types
    assert float(fn(params)) < 1e-3


# --- signatures, state fields and the objective-passing contract

SAME_SIGNATURE = [
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
    "scale_by_backtracking_linesearch",
    "value_and_grad_from_state",
]


@pytest.mark.parametrize("name", SAME_SIGNATURE)
def test_signature_matches_optax(name):
    optax_signature_prefix(getattr(dlopt, name), getattr(optax, name))


def test_lbfgs_signature_matches_optax():
    # optax's default line search is an instance (of optax's zoom search), so the defaults
    # cannot compare equal: names, kinds and the other defaults must; the default search's
    # behaviour is compared in test_iterates_and_state_match_optax[rosenbrock-default].
    def spec(fn):
        params = inspect.signature(fn).parameters.values()
        return [(p.name, p.kind, p.default if p.name != "linesearch" else "zoom") for p in params]

    assert spec(dlopt.lbfgs) == spec(optax.lbfgs)
    default = inspect.signature(dlopt.lbfgs).parameters["linesearch"].default
    assert isinstance(default, dlopt.GradientTransformationExtraArgs)


@pytest.mark.parametrize(
    "name",
    ["ScaleByLBFGSState", "ScaleByZoomLinesearchState", "ZoomLinesearchInfo",
     "ScaleByBacktrackingLinesearchState"],
)  # fmt: skip
def test_state_fields_match_optax(name):
    assert getattr(dlopt, name)._fields == getattr(optax, name)._fields


def test_value_and_grad_from_state_reuses_and_refuses():
    fn = lambda w: jnp.sum(w**2)  # noqa: E731
    w = jnp.array([1.0, 2.0])
    tx = dlopt.chain(dlopt.sgd(1.0), dlopt.scale_by_backtracking_linesearch(15, store_grad=True))
    state = tx.init(w)
    value, grad = dlopt.value_and_grad_from_state(fn)(w, state=state)  # inf stored: computes
    chex.assert_trees_all_close((value, grad), (5.0, 2 * w))
    updates, state = tx.update(grad, state, w, value=value, grad=grad, value_fn=fn)
    w = dlopt.apply_updates(w, updates)
    wrong = dlopt.value_and_grad_from_state(lambda w: jnp.sum(w))  # must not be called
    value, grad = jax.jit(wrong)(w, state=state)
    chex.assert_trees_all_close((value, grad), (fn(w), 2 * w), rtol=1e-6)
    with pytest.raises(ValueError, match="store_grad=True"):
        dlopt.value_and_grad_from_state(fn)(w, state=dlopt.adam(0.1).init(w))
    two = dlopt.chain(dlopt.scale_by_zoom_linesearch(5), dlopt.scale_by_zoom_linesearch(5))
    with pytest.raises(KeyError, match="exactly one line search"):
        dlopt.value_and_grad_from_state(fn)(w, state=two.init(w))


def test_update_needs_the_objective_and_only_its_arguments():
    w = jnp.ones(2)
    fn = lambda w, batch: jnp.sum(w * batch)  # noqa: E731
    for tx in (dlopt.lbfgs(), dlopt.scale_by_backtracking_linesearch(5)):
        state = tx.init(w)
        with pytest.raises(TypeError, match="value_fn"):
            tx.update(w, state, w, value=1.0, grad=w)
        with pytest.raises(TypeError, match="Unexpected keyword arguments.*unused"):
            tx.update(w, state, w, value=2.0, grad=w, value_fn=fn, batch=w, unused=1)
        tx.update(w, state, w, value=2.0, grad=w, value_fn=fn, batch=w)  # batch goes to fn
    with pytest.raises(ValueError, match="needs params"):
        dlopt.scale_by_lbfgs().update(w, dlopt.scale_by_lbfgs().init(w))


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: dlopt.lbfgs(linesearch=3), "linesearch"),
        (lambda: dlopt.lbfgs(scale_init_precond=None), "scale_init_precond"),
        (lambda: dlopt.lbfgs(memory_size=0), "memory_size"),
        (lambda: dlopt.scale_by_backtracking_linesearch(5, store_grad="yes"), "store_grad"),
        (lambda: dlopt.scale_by_backtracking_linesearch(5, decrease_factor=1.5), "decrease_factor"),
        (lambda: dlopt.scale_by_zoom_linesearch(0), "max_linesearch_steps"),
        (lambda: dlopt.scale_by_zoom_linesearch(5, verbose=1), "verbose"),
        (lambda: dlopt.scale_by_zoom_linesearch(5, slope_rtol=1.0), "slope_rtol"),
    ],
)
def test_bad_options_are_named(build, name):
    with pytest.raises((TypeError, ValueError), match=name):
        build()


def test_documented_special_values_are_accepted():
    dlopt.scale_by_zoom_linesearch(5, max_learning_rate=None, approx_dec_rtol=None)
    dlopt.scale_by_zoom_linesearch(5, curv_rtol=jnp.inf, max_learning_rate=np.inf)
    dlopt.scale_by_backtracking_linesearch(5, increase_factor=float("inf"), slope_rtol=0.0)
    dlopt.scale_by_backtracking_linesearch(0, decrease_factor=1.0, max_learning_rate=np.inf)
    dlopt.lbfgs(learning_rate=optax.constant_schedule(0.5), memory_size=1, linesearch=None)


def test_a_low_precision_value_fn_can_be_reused_from_state():
    fn = lambda w: jnp.sum(w**2).astype(jnp.bfloat16)  # noqa: E731
    w = jnp.array([1.0, 2.0])
    state = dlopt.lbfgs().init(w)  # value = inf stored in float32: the cond recomputes
    value, grad = jax.jit(dlopt.value_and_grad_from_state(fn))(w, state=state)
    assert value.dtype == jnp.float32 and float(value) == 5.0
    chex.assert_trees_all_close(grad, 2 * w)


def test_memory_is_sharded_like_the_params():
    mesh = jax.make_mesh((8,), ("d",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    params = {"w": jax.device_put(jnp.ones((16, 2)), sharding), "b": jnp.zeros(2)}
    tx = dlopt.scale_by_lbfgs(memory_size=3)
    state = tx.init(params)
    spec = (None, "d")
    assert tuple(state.diff_params_memory["w"].sharding.spec[:2]) == spec
    assert tuple(state.diff_updates_memory["w"].sharding.spec[:2]) == spec
    # one jitted L-BFGS + zoom step on an explicitly sharded mesh (inner products replicated)
    fn = lambda p: jnp.sum((p["w"] - 2.0) ** 2) + jnp.sum(p["b"] ** 2)  # noqa: E731
    opt = dlopt.lbfgs(memory_size=3)

    @jax.jit
    def step(p, s):
        v, g = jax.value_and_grad(fn)(p)
        return opt.update(g, s, p, value=v, grad=g, value_fn=fn)

    updates, opt_state = step(params, opt.init(params))
    assert tuple(opt_state[0].diff_params_memory["w"].sharding.spec[:2]) == spec
    assert float(fn(dlopt.apply_updates(params, updates))) < float(fn(params))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    assert tx.init(abstract).diff_params_memory["w"].shape == (3, 16, 2)
