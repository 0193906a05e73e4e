"""Krotov-Hopfield hidden units learnt by a local winner-take-all rule, and the power activation of
their readout.

Krotov & Hopfield, "Unsupervised learning by competing hidden units" (PNAS 2019); Holzhausen et al.,
"Exploring biologically inspired mechanisms of adversarial robustness" (arXiv 2405.00679).

A unit ``mu`` has weights ``W_mu`` (the kernel has shape (units, inputs)) and receives the current

    I_mu = sum_i sgn(W_mu,i) |W_mu,i|^(p-1) v_i,

which is ``<W_mu, v>`` in the geometry of the Lp norm (p = 2: the plain dot product).  Each input ``v``
is first scaled to unit Lp norm, as Holzhausen et al.'s code does (``normalise_inputs``).  The
learning rule (`local_update`) lives here beside the forward pass; `andor_jax.objectives.krotov` makes
it an objective of the training engine.  After learning the layer is frozen and read out through
`Power` (``relu(I)^n``) and a linear layer trained by backprop.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from andor_jax.interval import Interval, linear, monotone
from andor_jax.layers.base import Example, Layer

TINY = 1e-30  # Krotov's ``prec``: the update is divided by max(max|dW|, TINY)


def abs_power(x: jax.Array, exponent: float) -> jax.Array:
    """``|x|^exponent``, by repeated multiplication when the exponent is a whole number (p = 2, 3: several
    times faster than the exp/log of a float power on a CPU)."""
    if float(exponent).is_integer():
        return jax.lax.integer_pow(jnp.abs(x), int(exponent))
    return jnp.abs(x) ** exponent


def lp_norm(x: jax.Array, p: float) -> jax.Array:
    """``||x||_p`` over the last axis."""
    return jnp.sum(abs_power(x, p), axis=-1) ** (1.0 / p)


def lp_normalise(x: jax.Array, p: float) -> jax.Array:
    """Each row scaled to unit Lp norm (a zero row stays zero)."""
    norm = lp_norm(x, p)[..., None]
    return x / jnp.where(norm > 0, norm, 1.0)


def effective_weights(kernel: jax.Array, p: float) -> jax.Array:
    """``sgn(W) |W|^(p-1)``: the weights the currents are linear in."""
    return jnp.sign(kernel) * abs_power(kernel, p - 1)


def currents(kernel: jax.Array, v: jax.Array, p: float) -> jax.Array:
    """``I[b, mu] = sum_i sgn(W_mu,i) |W_mu,i|^(p-1) v[b, i]`` for a batch ``v`` (batch, inputs)."""
    return v @ effective_weights(kernel, p).T


def winner_gains(current: jax.Array, k: int, delta: float) -> jax.Array:
    """Per example (row), ``g = 1`` for the unit with the largest current, ``-delta`` for the k-th
    largest (anti-Hebbian), 0 elsewhere (Krotov & Hopfield eq. 10)."""
    # The barrier keeps XLA:CPU's fast top-k kernel: fused with its consumers, top-k becomes a full
    # sort of every row (30x slower at 100 x 2000).
    _, ranked = jax.lax.optimization_barrier(jax.lax.top_k(current, k))
    units = jnp.arange(current.shape[-1])
    return ((units == ranked[:, :1]).astype(current.dtype)
            - delta * (units == ranked[:, k - 1:k]).astype(current.dtype))


def local_update(kernel: jax.Array, v: jax.Array, *, p: float, k: int, delta: float, radius: float = 1.0,
                 current: jax.Array | None = None) -> jax.Array:
    """Krotov's weight change over a batch, divided by its largest entry.

    With currents ``I`` and gains ``g`` (`winner_gains`) of the batch ``v``,

        dW_mu,i = sum_b g_b,mu (R^p v_b,i - I_b,mu W_mu,i),

    i.e. ``dW = R^p g^T v - (sum_b g I) W`` as in Krotov's reference code (R = 1 there), returned as
    ``dW / max(max|dW|, 1e-30)``; the caller multiplies by the learning rate.  A unit whose updates keep
    the same sign converges to ``||W_mu||_p = R``.  ``current``: the batch's currents when the caller has
    them already (the forward pass computed them).
    """
    current = currents(kernel, v, p) if current is None else current
    gains = winner_gains(current, k, delta)
    drive = jnp.sum(gains * current, axis=0)
    change = radius ** p * (gains.T @ v) - drive[:, None] * kernel
    return change / jnp.maximum(jnp.max(jnp.abs(change)), TINY)


def convergence(kernel: jax.Array, p: float, radius: float = 1.0, tolerance: float = 0.01) -> dict[str, jax.Array]:
    """The acceptance diagnostic of a learnt layer (Holzhausen et al.'s code):

    ``off_norm_fraction``: the fraction of units with ``| ||W_mu||_p - R | > tolerance`` (accepted below
    10 %); ``negative_units``: the number of units whose mean weight is below ``-R/2`` (accepted: none).

    The second test cannot fail for images: a unit of unit Lp norm over d inputs has a mean weight of at
    least ``-R d^(-1/p)`` (-0.108 R for p = 3, d = 784).  So the diagnostic also gives, without changing the
    acceptance, ``inhibitory_fraction``: the fraction of units whose current is negative for a uniform
    input, ``sum_i sgn(W_mu,i) |W_mu,i|^(p-1) < 0``.  Such a unit is inhibitory on non-negative images and
    silent after ``relu``; measured on Fashion-MNIST with k = 7, 99.9 % of the units ended so (every one the
    same dark blob), and the readout on them reached 51.7 %.
    """
    off = jnp.abs(lp_norm(kernel, p) - radius) > tolerance
    return {"off_norm_fraction": jnp.mean(off.astype(jnp.float32)),
            "negative_units": jnp.sum(jnp.mean(kernel, axis=-1) < -radius / 2).astype(jnp.float32),
            "inhibitory_fraction": jnp.mean(jnp.sum(effective_weights(kernel, p), axis=-1) < 0, dtype=jnp.float32)}


def accepted(diagnostic: dict, max_off_fraction: float = 0.1) -> bool:
    """Whether a `convergence` diagnostic passes: under 10 % of units off norm, no negative unit."""
    return float(diagnostic["off_norm_fraction"]) < max_off_fraction and float(diagnostic["negative_units"]) == 0


def lp_normalise_interval(bounds: Interval, p: float) -> Interval:
    """Interval rule of `lp_normalise`.

    For ``x`` in ``[l, u]``: ``|x_i| <= max(|l_i|, |u_i|) = a_i`` and ``|x_i| >= b_i`` (0 if the box holds
    0 on axis i, else ``min(|l_i|, |u_i|)``), so ``||x||_p`` lies in ``[||b||_p, ||a||_p]``.  The quotient
    ``x_i / n`` is monotone in each argument on that box (n > 0), so its extremes are among the four corner
    quotients; it also lies in ``[-1, 1]``.  Where ``||b||_p = 0`` the box may reach the zero row (mapped to
    0), and ``[-1, 1]`` is used.
    """
    lower, upper = bounds
    outer = jnp.maximum(jnp.abs(lower), jnp.abs(upper))
    inner = jnp.where((lower <= 0) & (upper >= 0), 0.0, jnp.minimum(jnp.abs(lower), jnp.abs(upper)))
    small, large = lp_norm(inner, p)[..., None], lp_norm(outer, p)[..., None]
    safe_small = jnp.where(small > 0, small, 1.0)
    safe_large = jnp.where(large > 0, large, 1.0)
    corners = jnp.stack([lower / safe_small, lower / safe_large, upper / safe_small, upper / safe_large])
    reaches_zero = small <= 0
    new_lower = jnp.where(reaches_zero, -1.0, jnp.clip(jnp.min(corners, axis=0), -1.0, 1.0))
    new_upper = jnp.where(reaches_zero, 1.0, jnp.clip(jnp.max(corners, axis=0), -1.0, 1.0))
    return Interval(new_lower, new_upper)


class KrotovHopfield(Layer):
    """Hidden units of Krotov & Hopfield: outputs the currents ``I`` (batch, units) of the (Lp-normalised)
    inputs.  The kernel (units, inputs) starts from N(0, 1) as in both reference codes; it is learnt by
    `andor_jax.objectives.krotov`, never by backprop (which would see the currents' true gradient)."""

    units: int
    p: float = 3.0
    radius: float = 1.0
    normalise_inputs: bool = True
    kernel_init: Callable = nn.initializers.normal(1.0)

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(4), (3, 6)), Example(cls(3, p=2.0, normalise_inputs=False), (2, 5), (-1.0, 1.0)))

    def prepare(self, x: jax.Array) -> jax.Array:
        """The inputs the units see: each row scaled to unit Lp norm when ``normalise_inputs``."""
        return lp_normalise(x, self.p) if self.normalise_inputs else x

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        kernel = self.param("kernel", self.kernel_init, (self.units, x.shape[-1]))
        return currents(kernel, self.prepare(x), self.p)

    def interval(self, bounds: Interval) -> Interval:
        """The normalisation's rule (`lp_normalise_interval`), then the linear map by the effective weights
        ``sgn(W)|W|^(p-1)`` in centre/radius form."""
        weights = effective_weights(self.variables["params"]["kernel"], self.p)
        if self.normalise_inputs:
            bounds = lp_normalise_interval(bounds, self.p)
        return linear(lambda c: c @ weights.T, lambda r: r @ jnp.abs(weights).T, None, bounds)


def rectified_power(x: jax.Array, exponent: float) -> jax.Array:
    """``relu(x)^n``: the readout activation of Krotov & Hopfield and Holzhausen et al. (n = 4.5)."""
    return jax.nn.relu(x) ** exponent


class Power(Layer):
    """``relu(x)^n`` elementwise.  Non-decreasing (constant below 0), so its interval rule maps the
    endpoints; it is not strictly increasing, hence does not preserve order."""

    exponent: float = 4.5

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(), (3, 7), (-2.0, 2.0)), Example(cls(2.0), (2, 4), (-1.0, 1.0)))

    def __call__(self, x, *, train: bool = False, rho=None):
        return rectified_power(x, self.exponent)

    def interval(self, bounds: Interval) -> Interval:
        return monotone(lambda x: rectified_power(x, self.exponent), bounds)
