"""Differentiable approximations by random perturbations (optax.perturbations), and the
noise distributions they sample: `Gumbel`, `Normal`, and the diagonal Gaussian `multi_normal`.

For ``f`` possibly not differentiable, noise ``mu`` and scale ``sigma``,

    f_sigma(x) = E_{z ~ mu} f(x + sigma z)

is smooth. `make_perturbed_fun` returns a Monte-Carlo estimate of ``f_sigma`` whose JAX
derivatives of every order are unbiased estimates of ``f_sigma``'s, computed from values of
``f`` only: the score-function (REINFORCE) estimator written with the DiCE "magic box"
``exp(l - stop_gradient(l))`` of the sample's log-density ``l``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.stats.norm as gaussian

from dlopt import tree as tree_math


class Normal:
    """The standard normal: ``sample`` draws, ``log_prob(z) = -z^2 / 2`` (up to a constant)."""

    def sample(
        self, key: jax.typing.ArrayLike, sample_shape: tuple[int, ...] = (), dtype: Any = float
    ) -> jax.Array:
        return jax.random.normal(key, sample_shape, dtype)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        return -0.5 * inputs**2


class Gumbel:
    """The standard Gumbel: ``log_prob(z) = -z - exp(-z)``. With it, the perturbed argmax is
    the softmax (Berthet et al., 2020)."""

    def sample(
        self, key: jax.typing.ArrayLike, sample_shape: tuple[int, ...] = (), dtype: Any = float
    ) -> jax.Array:
        return jax.random.gumbel(key, sample_shape, dtype)

    def log_prob(self, inputs: jax.Array) -> jax.Array:
        return -inputs - jnp.exp(-inputs)


def _magicbox(x: jax.Array) -> jax.Array:
    """DiCE's magic box: 1 in value, ``d(box)/dx = box`` under differentiation."""
    return jnp.exp(x - jax.lax.stop_gradient(x))


def make_perturbed_fun(
    fun: Callable[[Any], Any],
    num_samples: int = 1000,
    sigma: jax.typing.ArrayLike = 0.1,
    noise=Gumbel(),  # noqa: B008 - optax's default, a stateless object
    use_baseline=True,
) -> Callable[[jax.Array, Any], Any]:
    """A differentiable stochastic estimate of ``f_sigma(x) = E_z f(x + sigma z)``.

    The returned ``g(key, x)`` averages over ``num_samples`` draws ``z ~ noise`` the value
    ``box(l(z)) f(x + sigma z)`` (``l`` the summed ``noise.log_prob``, the shifted input held
    constant), plus ``(1 - box) f(x)`` with ``use_baseline`` (a control variate: zero in value,
    it lowers the gradient's variance).

    >>> import jax, jax.numpy as jnp
    >>> from dlopt.perturbations import make_perturbed_fun
    >>> f = lambda x: jnp.sum(jnp.maximum(x, 0.0))
    >>> g = jax.grad(make_perturbed_fun(f, 1000, 0.1), argnums=1)(jax.random.key(0), jnp.zeros(3))
    >>> bool(jnp.all((g > 0.3) & (g < 0.9)))
    True

    References:
        Berthet et al., `Learning with Differentiable Perturbed Optimizers
        <https://arxiv.org/abs/2002.08676>`_, 2020. Foerster et al., `DiCE: The Infinitely
        Differentiable Monte Carlo Estimator <https://arxiv.org/abs/1802.05098>`_, 2018.
    """

    def estimate_one(key: jax.Array, x: Any, baseline: Any) -> Any:
        sample = tree_math.random_like(key, x, sampler=noise.sample)
        shifted = jax.lax.stop_gradient(jax.tree.map(lambda x, z: x + sigma * z, x, sample))
        sample = jax.tree.map(lambda x, y: (y - x) / sigma, x, shifted)
        box = _magicbox(tree_math.sum(jax.tree.map(noise.log_prob, sample)))
        out = tree_math.scale(box, fun(shifted))
        return tree_math.add_scale(out, 1 - box, baseline) if use_baseline else out

    def perturbed(key: jax.Array, x: Any) -> Any:
        baseline = fun(jax.lax.stop_gradient(x)) if use_baseline else None
        keys = jax.random.split(key, num_samples)
        out = jax.vmap(estimate_one, in_axes=(0, None, None))(keys, x, baseline)
        return jax.tree.map(lambda y: jnp.mean(y, axis=0), out)

    return perturbed


class MultiNormalDiagFromLogScale:
    """A Gaussian with mean ``loc`` and diagonal scale ``exp(log_scale)``, exposing its
    parameters (``params = [loc, log_scale]``) for evolution-strategy style estimators."""

    def __init__(self, loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike):
        self._log_scale = jnp.asarray(log_scale)
        self._scale = jnp.exp(log_scale)
        self._mean = jnp.asarray(loc)
        self._param_shape = jax.lax.broadcast_shapes(self._mean.shape, self._scale.shape)

    def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
        """``loc + exp(log_scale) * eps``, ``eps ~ N(0, I)`` of shape ``(*shape, *param)``."""
        sample_shape = tuple(shape) + self._param_shape
        scale = jnp.broadcast_to(self._scale, sample_shape)
        return jax.random.normal(key, shape=sample_shape) * scale + jnp.broadcast_to(
            self._mean, sample_shape
        )

    def log_prob(self, x: jax.typing.ArrayLike) -> jax.Array:
        """The log-density of ``x``, summed over the parameter axes."""
        x = jnp.asarray(x)
        shape = jnp.broadcast_shapes(x.shape, self._param_shape)
        log_prob = gaussian.logpdf(
            jnp.broadcast_to(x, shape),
            loc=jnp.broadcast_to(self._mean, shape),
            scale=jnp.broadcast_to(self._scale, shape),
        )
        return jnp.sum(log_prob, axis=[-(i + 1) for i in range(len(self._param_shape))])

    @property
    def log_scale(self) -> jax.Array:
        return self._log_scale

    @property
    def params(self) -> Sequence[jax.Array]:
        return [self._mean, self._log_scale]


def multi_normal(
    loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike
) -> MultiNormalDiagFromLogScale:
    """A diagonal Gaussian ``N(loc, diag(exp(log_scale))^2)`` (optax.multi_normal).

    >>> import jax, jax.numpy as jnp
    >>> import dlopt
    >>> dist = dlopt.multi_normal(jnp.zeros(2), jnp.zeros(2))
    >>> dist.sample((5,), jax.random.key(0)).shape
    (5, 2)
    """
    return MultiNormalDiagFromLogScale(loc=loc, log_scale=log_scale)
