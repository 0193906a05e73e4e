"""Interval bound propagation (IBP) and certified accuracy.

Attacks give upper bounds on robust accuracy; IBP gives lower bounds that hold against every attack
(Gowal et al. 2018; for MWD networks, Agrawal, de Alfaro & Helmbold, sec. 5).  Starting from the input box
``B_0 = [clip(x - eps, lo, hi), clip(x + eps, lo, hi)]`` every layer maps a box to a box containing the
image of its input box, using its own ``interval`` rule (see `andor_jax.layers`).

An example is *certified* at ``eps`` when, for every class ``k != y``, the lower bound of the margin
``z_y - z_k`` over the input box is positive.  When the last layer is affine, ``z = W h + b``, the margin
is itself affine in the penultimate activations ``h``:

    z_y - z_k = (w_y - w_k) . h + (b_y - b_k),

so with ``h`` in ``[c - r, c + r]`` its exact lower bound over that box is
``(w_y - w_k) . c + b_y - b_k - |w_y - w_k| . r``.  This is never looser, and usually much tighter, than
the plain comparison ``lower(z_y) > upper(z_k)`` of the paper, which stays available as
``margin="plain"`` (the only choice when the last layer is not affine, e.g. an MWD output layer).
Strictly increasing output activations (a sigmoid after the last affine layer) preserve the order of the
outputs, so the margins are bounded before them.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks.compaction import compacted_size
from andor_jax.interval import Interval
from andor_jax.layers.base import MissingIntervalRuleError, Path, chain_interval, chains, layer_interval, trace

__all__ = ["MissingIntervalRuleError", "certified", "certified_accuracy", "input_box", "last_affine_layer",
           "layer_intervals", "margin_lower_bounds", "propagate"]


def propagate(model: nn.Module, variables, bounds: Interval) -> Interval:
    """The output box of the whole network for the input box ``bounds`` (the model's own interval rule:
    for a `Sequential`, every layer's rule in turn, into composites)."""
    return model.apply(variables, bounds, method=layer_interval)


def layer_intervals(model: nn.Module, variables, bounds: Interval) -> dict[Path, Interval]:
    """Every layer's output box keyed by path (``()``: the network's), nested layers included; aligned
    with the ``outputs`` of `andor_jax.models.Sequential.outputs`, for soundness checks."""
    return model.apply(variables, bounds, method=lambda module, b: trace(module, "interval", b).outputs)


def input_box(x: jax.Array, eps, domain: tuple[float, float]) -> Interval:
    """The L-inf ball of radius ``eps`` around ``x`` intersected with the input domain."""
    return Interval.around(x, eps, *domain)


def margin_lower_bounds(model: nn.Module, variables, x: jax.Array, y: jax.Array, eps,
                        domain: tuple[float, float], margin: str = "affine") -> jax.Array:
    """Lower bounds of ``z_y - z_k`` for every class ``k`` over the input box, shape (batch, classes);
    the entry ``k = y`` is ``+inf`` so that ``all(bounds > 0)`` means certified."""
    box = input_box(x, eps, domain)
    affine_index = last_affine_layer(model)
    if margin == "affine" and affine_index is None:
        last = top_chain(model)[-1][1] if top_chain(model) else model
        raise ValueError(f"margin='affine' needs an affine last layer (optionally followed by strictly "
                         f"increasing activations), but the last layer is {type(last).__name__}; "
                         f"use margin='plain'")
    if margin not in ("affine", "plain"):
        raise ValueError(f"margin must be 'affine' or 'plain', not {margin!r}")

    def bound(module, box):
        if margin == "plain":
            out = layer_interval(module, box)
            true_lower = jnp.take_along_axis(out.lower, y[:, None], axis=1)
            return true_lower - out.upper
        chain = top_chain(module)
        hidden = chain_interval(chain[:affine_index], box)
        kernel, bias = chain[affine_index][1].affine()
        difference = kernel[:, y].T[:, :, None] - kernel[None]          # (batch, in, classes): w_y - w_k
        centre = jnp.einsum("bi,bik->bk", hidden.centre, difference)
        radius = jnp.einsum("bi,bik->bk", hidden.radius, jnp.abs(difference))
        offset = 0.0 if bias is None else bias[y][:, None] - bias[None]
        return centre + offset - radius

    lower = model.apply(variables, box, method=bound)
    return jnp.where(jax.nn.one_hot(y, lower.shape[-1], dtype=bool), jnp.inf, lower)


def top_chain(model: nn.Module) -> tuple:
    """The model's layers as one chain ``((name, layer), ...)``, or ``()`` when it is not a single chain."""
    model_chains = chains(model)
    return model_chains[0] if len(model_chains) == 1 else ()


def last_affine_layer(model: nn.Module) -> int | None:
    """Position in the model's chain of its last affine layer (`Layer.affine`) if only order-preserving
    layers follow it, else None."""
    chain = top_chain(model)
    index = len(chain) - 1
    while index >= 0 and getattr(chain[index][1], "preserves_order", False):
        index -= 1
    return index if index >= 0 and getattr(chain[index][1], "affine", None) is not None else None


def certified(model: nn.Module, variables, x, y, eps, domain, margin: str = "affine") -> jax.Array:
    """Per example: is every input within ``eps`` (L-inf, inside the domain) classified as ``y``?"""
    return jnp.all(margin_lower_bounds(model, variables, x, y, eps, domain, margin) > 0, axis=-1)


_certified_check = jax.jit(certified, static_argnames=("model", "domain", "margin"))


def certified_accuracy(model: nn.Module, variables, x: np.ndarray, y: np.ndarray, eps_grid: Sequence[float], *,
                       domain: tuple[float, float], margin: str | None = None,
                       batch_size: int = 1000) -> dict[float, float]:
    """Fraction of ``(x, y)`` certified at each ``eps``; batched and jit-compiled once for all eps (and for
    every later call with the same model, domain and margin).

    Interval propagation is monotone in the input box (a larger box gives larger boxes at every layer),
    so an example that fails at some eps fails at every larger one: the eps grid is walked upwards and only
    the examples still certified are propagated again.  A last, partial batch is padded only up to the next
    multiple of an eighth of ``batch_size`` (`andor_jax.attacks.compaction.compacted_size`: at most eight
    compiled batch sizes).  ``margin=None`` picks ``"affine"`` when the last layer is affine (possibly
    followed by order-preserving activations), else ``"plain"``.
    """
    if margin is None:
        margin = "plain" if last_affine_layer(model) is None else "affine"
    if any(e < 0 for e in eps_grid):
        raise ValueError(f"eps must be >= 0, got {list(eps_grid)}")
    domain = tuple(float(bound) for bound in domain)
    remaining = np.arange(len(x))
    accuracy = {}
    for e in sorted(float(v) for v in eps_grid):
        passed = []
        for start in range(0, len(remaining), batch_size):
            chunk = remaining[start:start + batch_size]
            padded = np.resize(chunk, compacted_size(len(chunk), min(batch_size, len(x))))
            ok = np.asarray(_certified_check(model, variables, jnp.asarray(x[padded]), jnp.asarray(y[padded]),
                                             jnp.float32(e), domain, margin))
            passed.append(chunk[ok[:len(chunk)]])
        remaining = np.concatenate(passed) if passed else remaining
        accuracy[e] = len(remaining) / len(x)
    return {float(e): accuracy[float(e)] for e in eps_grid}
