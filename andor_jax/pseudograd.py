"""Pseudo-derivatives for MWD networks (Agrawal, de Alfaro & Helmbold, sec. 3.1 and 6).

MWD units ``exp(-max_i z_i)`` are hard to train with true gradients: the max sends feedback to one input
only, and ``exp(-z)`` is flat far from the centre.  The paper replaces two derivatives in the chain rule:

* ``d/dz exp(-z) = -exp(-z)``       becomes  ``-1 / sqrt(1 + z)``   ("LargeAttractorExp");
* ``d/dz_i max_j z_j = [i = argmax]`` becomes ``exp(z_i - max_j z_j)`` for every ``i``
  ("SharedFeedbackMax"; not normalised: the maximum gets weight 1, the others less).

A mixing parameter ``rho`` in ``[0, 1]`` interpolates the two (the paper's decayed schedule): each primitive
passes back ``rho * pseudo + (1 - rho) * true`` times the incoming cotangent.  ``rho`` is an ordinary traced
argument, so a schedule that changes it recompiles nothing; its own cotangent is zero (it is a switch, not a
parameter).  ``rho = None`` means ``0``: the true derivative; values outside ``[0, 1]`` are clipped.
The forward values never depend on ``rho``.

Both primitives are `jax.custom_vjp` functions, so they support reverse mode (grad, vjp) under jit and vmap,
but not forward mode (jvp, hessian).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def as_rho(rho, dtype) -> jax.Array:
    """``rho`` as a scalar array of ``dtype``, clipped to ``[0, 1]`` (``None`` is the true derivative, ``0``).

    Raises:
      ValueError: if ``rho`` is not a scalar.
    """
    rho = jnp.asarray(0.0 if rho is None else rho, dtype=dtype)
    if rho.ndim != 0:
        raise ValueError(f"rho must be a scalar in [0, 1], got an array of shape {rho.shape}")
    return jnp.clip(rho, 0, 1)


def pseudo_exp_derivative(z: jax.Array, y: jax.Array, rho: jax.Array) -> jax.Array:
    """Mixed derivative of ``y = exp(-z)``: ``rho * (-1 / sqrt(1 + z)) + (1 - rho) * (-y)``."""
    return -(rho * jax.lax.rsqrt(1 + z) + (1 - rho) * y)


def tie_counts(z: jax.Array, z_max: jax.Array, axis: int) -> jax.Array:
    """``#{j : z_j = max z}`` along ``axis`` (kept, size 1); ``z_max`` has ``axis`` kept."""
    return jnp.sum(z == z_max, axis=axis, keepdims=True).astype(z.dtype)


def argmax_share(z: jax.Array, z_max: jax.Array, ties: jax.Array) -> jax.Array:
    """True derivative of ``max``: ``[z_i = max z] / ties`` with ``ties`` the number of tied maxima.

    Tie rule: the cotangent is split equally between tied maxima, the rule `jax.grad` of `jnp.max` uses, so
    the true mode agrees with plain autodiff everywhere, ties included.
    """
    return jnp.where(z == z_max, 1 / ties, 0)


def shared_feedback_weights(z: jax.Array, z_max: jax.Array, rho: jax.Array, ties: jax.Array) -> jax.Array:
    """Mixed derivative of ``max_j z_j`` with respect to every ``z_i``:
    ``rho * exp(z_i - max z) + (1 - rho) * argmax_share(z)_i``."""
    return rho * jnp.exp(z - z_max) + (1 - rho) * argmax_share(z, z_max, ties)


@jax.custom_vjp
def _pseudo_exp(z, rho):
    return jnp.exp(-z)


def _pseudo_exp_fwd(z, rho):
    y = jnp.exp(-z)
    return y, (z, y, rho)


def _pseudo_exp_bwd(residuals, g):
    z, y, rho = residuals
    return g * pseudo_exp_derivative(z, y, rho), jnp.zeros_like(rho)


_pseudo_exp.defvjp(_pseudo_exp_fwd, _pseudo_exp_bwd)


def pseudo_exp(z: jax.Array, rho=None) -> jax.Array:
    """``exp(-z)`` whose backward pass is ``g * (rho * (-1 / sqrt(1 + z)) + (1 - rho) * (-exp(-z)))``.

    Args:
      z: any array, ``z >= 0`` in MWD units (the pseudo-derivative needs ``z > -1``).
      rho: scalar in ``[0, 1]`` (traced): 1 is the pure pseudo-derivative, 0 or None the true one.
    """
    return _pseudo_exp(z, as_rho(rho, z.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _shared_feedback_max(z, rho, axis):
    return jnp.max(z, axis=axis)


def _shared_feedback_max_fwd(z, rho, axis):
    z_max = jnp.max(z, axis=axis)
    return z_max, (z, z_max, rho)


def _shared_feedback_max_bwd(axis, residuals, g):
    z, z_max, rho = residuals
    z_max = jnp.expand_dims(z_max, axis)
    weights = shared_feedback_weights(z, z_max, rho, tie_counts(z, z_max, axis))
    return jnp.expand_dims(g, axis) * weights, jnp.zeros_like(rho)


_shared_feedback_max.defvjp(_shared_feedback_max_fwd, _shared_feedback_max_bwd)


def shared_feedback_max(z: jax.Array, rho=None, axis: int = -1) -> jax.Array:
    """``max_i z_i`` along ``axis`` whose backward pass gives every ``z_i`` the cotangent
    ``g * (rho * exp(z_i - max z) + (1 - rho) * [z_i = max z] / #ties)``.

    Args:
      z: array with at least one axis; ``axis`` is reduced away.
      rho: scalar in ``[0, 1]`` (traced): 1 is the pure shared feedback, 0 or None the true derivative
        (split equally between tied maxima, as `jax.grad` of `jnp.max` does).
      axis: the reduced axis (static).
    """
    if z.ndim == 0:
        raise ValueError("shared_feedback_max needs an array with at least one axis")
    return _shared_feedback_max(z, as_rho(rho, z.dtype), axis % z.ndim)
