"""The `Interval` pytree: an axis-aligned box ``[lower, upper]`` of activations.

Interval bound propagation (Gowal et al. 2018; Agrawal, de Alfaro & Helmbold, sec. 5) pushes a box of
inputs through a network layer by layer.  Every layer family implements its own rule
``interval(self, bounds: Interval) -> Interval`` beside its forward pass; this module only holds the
container and the two generic rules that many layers share.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Interval(NamedTuple):
    """A box ``lower <= x <= upper`` (elementwise).  NamedTuples are pytrees, so intervals pass through
    `jax.jit`, `jax.vmap` and `jax.tree.map` unchanged."""

    lower: jax.Array
    upper: jax.Array

    @property
    def centre(self) -> jax.Array:
        return (self.upper + self.lower) / 2

    @property
    def radius(self) -> jax.Array:
        return (self.upper - self.lower) / 2

    @classmethod
    def from_centre_radius(cls, centre: jax.Array, radius: jax.Array) -> "Interval":
        return cls(centre - radius, centre + radius)

    @classmethod
    def around(cls, x: jax.Array, eps, lo: float, hi: float) -> "Interval":
        """The L-inf ball of radius ``eps`` around ``x`` intersected with the input domain ``[lo, hi]``."""
        return cls(jnp.clip(x - eps, lo, hi), jnp.clip(x + eps, lo, hi))


def monotone(fn: Callable[[jax.Array], jax.Array], bounds: Interval) -> Interval:
    """Rule for an elementwise non-decreasing ``fn``: ``[fn(l), fn(u)]`` is exact."""
    return Interval(fn(bounds.lower), fn(bounds.upper))


def linear(apply_weights: Callable[[jax.Array], jax.Array], apply_abs_weights: Callable[[jax.Array], jax.Array],
           bias, bounds: Interval) -> Interval:
    """Rule for an affine map ``W x + b`` in centre/radius form.

    With ``c = (u + l) / 2`` and ``r = (u - l) / 2``, the image of the box is contained in
    ``W c + b ± |W| r``, and this box is the tightest one (it is exact for a single affine layer).
    """
    centre = apply_weights(bounds.centre)
    if bias is not None:
        centre = centre + bias
    radius = apply_abs_weights(bounds.radius)
    return Interval.from_centre_radius(centre, radius)
