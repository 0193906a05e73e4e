"""MWD (max-of-weighted-distance) layers: Agrawal, de Alfaro & Helmbold, "A New Family of Neural Networks
Provably Resistant to Adversarial Attacks" (2019): units eq. (1)-(2), pseudo-gradients sec. 3.1, intervals
sec. 4.

A unit with parameters ``u, w`` (one row of the (out, in) matrices) maps ``x`` to

    U(u, w)(x) = exp(-max_i (u_i (x_i - w_i))^2)          in (0, 1],

an AND-like gate that is 1 only near the centre ``w`` in the coordinates with large scale ``u``.  Its
negation ``1 - U`` is NAND-like.  Layers hold units of one kind: ``'u'``, ``'neg'``, or ``'mixed'``, where
a fixed random bit ``a`` per unit, drawn once at init, picks ``y + a (1 - 2 y)``.

Training uses the pseudo-gradient of `andor_jax.pseudograd` (pseudo-exp after shared-feedback max), mixed
with the true gradient by ``rho``.  `mwd_unit` computes it in one fused `jax.custom_vjp` that never stores
the (batch, out, in) tensor of squared distances: the backward pass recomputes it chunk by chunk.
"""
from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from andor_jax.interval import Interval
from andor_jax.layers.base import Example, Layer
from andor_jax.pseudograd import (argmax_share, as_rho, pseudo_exp, pseudo_exp_derivative,
                                  shared_feedback_max, shared_feedback_weights)

KINDS = ("u", "neg", "mixed")
U_INIT_RANGE = (0.2, 0.7)
W_INIT_RANGE = (0.0, 1.0)
U_CLIP = (0.01, 3.0)
W_CLIP = (0.0, 1.0)
# Elements of one chunk of the (batch, out, in) recomputation in the backward pass: 1 MiB of float32, so
# that a chunk stays in a core's L2 cache while the three sums read it back; accelerators prefer few large
# chunks.  Measured (process CPU time, 784-512-512-512-10 network, batch 100): a gradient with rho = 1 takes
# 131 ms at 2^18 against 155 ms at 2^20 (4 MiB, spilling to L3) and 154 ms at 2^17; with rho = 0, 147
# against 183 ms.
CPU_CHUNK_ELEMENTS = 2**18
ACCELERATOR_CHUNK_ELEMENTS = 2**28
SMALL_BATCH = 64  # see `kept_apart_at_small_batches`


# ---------------------------------------------------------------------------------------------------------
# The unit: forward, fused pseudo-gradient, reference composition


def scaled_difference(x: jax.Array, u: jax.Array, w: jax.Array) -> jax.Array:
    """``u (x - w)`` (broadcasting).  Every rule squares this same expression, so the forward pass and the
    recomputation in the backward pass agree bit for bit (the argmax is found by equality)."""
    return u * (x - w)


def max_square_distance(x: jax.Array, u: jax.Array, w: jax.Array) -> jax.Array:
    """``m[b, o] = max_i (u[o, i] (x[b, i] - w[o, i]))^2`` for ``x`` (batch, in), ``u, w`` (out, in): one
    reduction over the last (input) axis of a (batch, out, in) expression that XLA fuses into the loop."""
    return jnp.max(jnp.square(scaled_difference(x[:, None, :], u, w)), axis=-1)


def mwd_composed(x: jax.Array, u: jax.Array, w: jax.Array, rho=None) -> jax.Array:
    """The unit as the composition ``pseudo_exp(shared_feedback_max((u (x - w))^2))`` of the primitives,
    the authors' formulation.  It materialises (batch, out, in) and keeps it for the backward pass: the
    reference that `mwd_unit` is tested against, and the naive variant of ``benchmarks/bench_mwd.py``."""
    rho = as_rho(rho, x.dtype)
    z = jnp.square(scaled_difference(x[:, None, :], u, w))
    return pseudo_exp(shared_feedback_max(z, rho, axis=-1), rho)


def default_chunk_elements() -> int:
    """`CPU_CHUNK_ELEMENTS` on the CPU, else `ACCELERATOR_CHUNK_ELEMENTS`."""
    return CPU_CHUNK_ELEMENTS if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK_ELEMENTS


def chunk_rows(n: int, row_elements: int, chunk_elements: int) -> int:
    """Rows per chunk so that a chunk of ``row_elements``-element rows holds about ``chunk_elements``
    elements (at least one row), evened out so that the last chunk is nearly full."""
    chunks = math.ceil(n / max(1, min(n, chunk_elements // max(1, row_elements))))
    return math.ceil(n / chunks)


def map_chunks(fn, arrays: tuple, rows: int):
    """``fn`` applied (with `lax.map`, one after another) to consecutive chunks of ``rows`` leading-axis
    rows of every array in ``arrays``; the outputs' chunks are joined and cut back to the original length.
    The last chunk is padded with zeros, so ``fn`` must keep rows independent."""
    n = arrays[0].shape[0]
    chunks = math.ceil(n / rows)

    def chunked(a):
        a = jnp.pad(a, ((0, chunks * rows - n),) + ((0, 0),) * (a.ndim - 1))
        return a.reshape(chunks, rows, *a.shape[1:])

    outputs = lax.map(fn, tuple(chunked(a) for a in arrays))
    return jax.tree.map(lambda a: a.reshape(chunks * rows, *a.shape[2:])[:n], outputs)


def argmax_counts(x: jax.Array, u: jax.Array, w: jax.Array, m: jax.Array, chunk_elements: int) -> jax.Array:
    """``#{i : z[b, o, i] = m[b, o]}``, the number of tied maxima, for the true derivative.

    Recomputed a few batch rows at a time: summing a (batch, out, in) mask in one go materialises it in
    XLA:CPU.  Bit-identical recomputation makes every count at least 1; the floor keeps that explicit.
    """
    def count(args):
        xc, mc = args
        hits = jnp.square(scaled_difference(xc[:, None, :], u, w)) == mc[..., None]
        return jnp.sum(hits.astype(x.dtype), axis=-1)

    return jnp.maximum(map_chunks(count, (x, m), chunk_rows(x.shape[0], u.size, chunk_elements)), 1)


def chunked_gradients(weights_fn, x, u, w, m, dm, chunk_elements: int):
    """Cotangents of ``x, u, w`` given the cotangent ``dm`` (batch, out) of ``m = max_i z_i`` and the
    per-element derivative ``weights_fn(z, m) ~ dm/dz_i`` (the shared-feedback/argmax mixture).

    With ``a = u (x - w)``, ``z = a^2`` and ``h = dm * weights * 2 a`` (the cotangent of ``a``):

        dx[b, i] = sum_o h u,    du[o, i] = sum_b h x - w sum_b h,    dw[o, i] = -u sum_b h.

    All three keep the input axis, so it is cut into chunks processed one after another, each laid out
    (in, batch, out): ``h`` is a cache-sized temporary, and the sums are batched matrix-vector products
    over the chunk's inputs (fast in XLA:CPU, unlike reductions over a major axis).  Nothing of size
    (batch, out, in) is ever stored.
    """
    def block(args):
        xc, uc, wc = args  # (chunk, batch), (chunk, out), (chunk, out)
        a = scaled_difference(xc[:, :, None], uc[:, None, :], wc[:, None, :])
        h = weights_fn(jnp.square(a), m[None]) * (2 * dm)[None] * a
        h_sum = jnp.sum(h, axis=1)
        return jnp.einsum("ibo,io->ib", h, uc), jnp.einsum("ibo,ib->io", h, xc) - wc * h_sum, h_sum

    rows = chunk_rows(x.shape[1], x.shape[0] * u.shape[0], chunk_elements)
    dx, du, h_sum = map_chunks(block, (x.T, u.T, w.T), rows)
    return dx.T, du.T, -u * h_sum.T


GRADIENT_BRANCHES = ("true", "mixed", "pseudo")


def gradient_branch(rho) -> int | None:
    """The index into `GRADIENT_BRANCHES` of a ``rho`` known when tracing (None, a Python or NumPy
    number): 0 for ``rho <= 0``, 2 for ``rho >= 1``, 1 between; None for a traced ``rho`` (a schedule)."""
    if isinstance(rho, jax.core.Tracer):
        return None
    value = 0.0 if rho is None else float(rho)
    return 2 if value >= 1 else (1 if value > 0 else 0)


def mwd_backward(x, u, w, m, rho, g, chunk_elements: int, branch: int | None = None):
    """Cotangents of ``(x, u, w)`` for ``y = exp(-m)``, ``m = max_i (u_i (x_i - w_i))^2``, given ``g = dL/dy``.

    ``dL/dm = g (rho (-1 / sqrt(1 + m)) + (1 - rho) (-y))`` and ``dm/dz_i = rho exp(z_i - m) + (1 - rho)
    [z_i = m] / #ties``: the chain rule through `andor_jax.pseudograd`'s two primitives.  Only the part
    with non-zero weight is computed: the pure pseudo-gradient (``rho = 1``) needs no tie count, the true
    gradient (``rho = 0``) no exponentials.  ``branch`` (`gradient_branch`) picks it when ``rho`` was known
    at trace time (a constant mix, the common case); otherwise a `lax.switch` on the traced ``rho`` does.
    The static choice also keeps the data-parallel gradient all-reduces out of a conditional: with
    several CPU devices, XLA:CPU's all-reduces inside a `lax.switch` branch were seen to deadlock.
    """
    dm = g * pseudo_exp_derivative(m, jnp.exp(-m), rho)

    def gradients(weights_fn):
        return chunked_gradients(weights_fn, x, u, w, m, dm, chunk_elements)

    def true_grads():
        ties = argmax_counts(x, u, w, m, chunk_elements)[None]
        return gradients(lambda z, zmax: argmax_share(z, zmax, ties))

    def mixed_grads():
        ties = argmax_counts(x, u, w, m, chunk_elements)[None]
        return gradients(lambda z, zmax: shared_feedback_weights(z, zmax, rho, ties))

    def pseudo_grads():
        return gradients(lambda z, zmax: jnp.exp(z - zmax))

    branches = (true_grads, mixed_grads, pseudo_grads)
    if branch is not None:
        return branches[branch]()
    return lax.switch(jnp.where(rho >= 1, 2, jnp.where(rho > 0, 1, 0)), branches)


def kept_apart_at_small_batches(y: jax.Array) -> jax.Array:
    """``y`` itself; at batches of at most `SMALL_BATCH` rows, through an identity that XLA:CPU's YNNPACK
    fusion does not cross.

    XLA:CPU (jaxlib 0.10) fuses consecutive MWD layers into one YNNPACK subgraph.  For the 784-512-512-512-10
    network at batches of 65 and more that is the fastest program (0.20-0.30 ms per example forward, against
    0.56-0.84 with the layers kept apart), but at 64 and fewer it runs 2.6-3.3 ms per example; kept apart
    there, 0.19-0.24.  Rounding to float32's own precision changes no value.
    """
    if y.dtype != jnp.float32 or y.shape[0] > SMALL_BATCH:
        return y
    return lax.reduce_precision(y, exponent_bits=8, mantissa_bits=23)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _mwd_unit(x, u, w, rho, chunk_elements, branch):
    return kept_apart_at_small_batches(jnp.exp(-max_square_distance(x, u, w)))


def _mwd_unit_fwd(x, u, w, rho, chunk_elements, branch):
    m = max_square_distance(x, u, w)
    return kept_apart_at_small_batches(jnp.exp(-m)), (x, u, w, m, rho)


def _mwd_unit_bwd(chunk_elements, branch, residuals, g):
    x, u, w, m, rho = residuals
    return (*mwd_backward(x, u, w, m, rho, g, chunk_elements, branch), jnp.zeros_like(rho))


_mwd_unit.defvjp(_mwd_unit_fwd, _mwd_unit_bwd)


def mwd_unit(x: jax.Array, u: jax.Array, w: jax.Array, rho=None, chunk_elements: int | None = None) -> jax.Array:
    """A layer of MWD units, ``y[..., o] = exp(-max_i (u[o, i] (x[..., i] - w[o, i]))^2)``.

    The backward pass is the pseudo-gradient mixed with the true gradient by ``rho`` (1 pure pseudo,
    0 or None true), equal to the chain rule through `mwd_composed` but fused: the residuals are ``x``,
    ``u``, ``w`` and ``m`` (O(batch in + out in + batch out)), and the (batch, out, in) tensor is recomputed
    in cache-sized chunks (`chunked_gradients`).  Reverse mode only (a `jax.custom_vjp`).

    Args:
      x: inputs (..., in).
      u, w: scales and centres, (out, in).
      rho: scalar pseudo-gradient mixing in [0, 1]; a traced ``rho`` (a schedule) changes without
        recompiling, a constant one compiles only the backward pass it selects (`mwd_backward`).
      chunk_elements: size of the backward pass's temporaries in elements (static); None picks
        `default_chunk_elements` (cache-sized on the CPU).
    Returns:
      (..., out) outputs in (0, 1].
    """
    if u.ndim != 2 or u.shape != w.shape or x.ndim < 1 or x.shape[-1] != u.shape[1]:
        raise ValueError(f"MWD units need x (..., in) and u, w (out, in); got x {x.shape}, u {u.shape}, "
                         f"w {w.shape}")
    flat = x.reshape(-1, x.shape[-1])
    y = _mwd_unit(flat, u, w, as_rho(rho, x.dtype), chunk_elements or default_chunk_elements(),
                  gradient_branch(rho))
    return y.reshape(*x.shape[:-1], u.shape[0])


# ---------------------------------------------------------------------------------------------------------
# Interval rule


def mwd_interval(bounds: Interval, u: jax.Array, w: jax.Array) -> Interval:
    """Exact output box of MWD units ``U(u, w)`` over the input box ``[l, r]`` (paper, sec. 4).

    Per input, ``(u_i (x_i - w_i))^2`` is convex in ``x_i``: its maximum over ``[l_i, r_i]`` sits at an
    endpoint, ``sq_max_i = max((u_i (l_i - w_i))^2, (u_i (r_i - w_i))^2)``, its minimum is ``sq_min_i = 0``
    if ``l_i <= w_i <= r_i``, else the smaller endpoint value.  The inputs vary independently and
    ``exp(-max)`` is decreasing, so the unit ranges exactly over

        [exp(-max_i sq_max_i), exp(-max_i sq_min_i)].

    Written through distances: the farthest point of ``[l_i, r_i]`` from ``w_i`` is
    ``max(w_i - l_i, r_i - w_i)`` away and the nearest ``relu(max(l_i - w_i, w_i - r_i))``; as ``|u_i|``,
    relu and the square of a non-negative number are monotone, ``max_i sq_max_i = (max_i |u_i| far_i)^2`` and
    ``max_i sq_min_i = relu(max_i |u_i| (max(l_i - w_i, w_i - r_i)))^2``.  Each is one fused reduction over
    the input axis with no constant operand; the optimisation barrier keeps XLA's CPU backend from merging
    the two, which would materialise the (batch, out, in) tensor and run ten times slower, and
    `fusion_boundary` keeps each reduction's YNNPACK fusion from taking in the exponential after it (2.8x
    faster propagation of the 784-512-512-512-10 network at batch 1000, loaded machine).  Every operation
    is exact or monotone in its rounding, so the box is sound in floating point up to the rounding of ``exp``
    (XLA may evaluate it an ulp apart in different programs); a degenerate box gives the forward value.
    """
    units = u.shape[0]
    lower = bounds.lower.reshape(-1, bounds.lower.shape[-1])[:, None, :]
    upper = bounds.upper.reshape(-1, bounds.upper.shape[-1])[:, None, :]
    farthest = fusion_boundary(jnp.max(jnp.abs(u) * jnp.maximum(w - lower, upper - w), axis=-1))
    lower, upper, u, w, farthest = jax.lax.optimization_barrier((lower, upper, u, w, farthest))
    nearest = jax.nn.relu(fusion_boundary(jnp.max(jnp.abs(u) * jnp.maximum(lower - w, w - upper), axis=-1)))
    shape = (*bounds.lower.shape[:-1], units)
    return Interval(jnp.exp(-jnp.square(farthest)).reshape(shape), jnp.exp(-jnp.square(nearest)).reshape(shape))


def fusion_boundary(y: jax.Array) -> jax.Array:
    """``y`` itself, through an identity (rounding to its own precision) that XLA:CPU's YNNPACK fusion does
    not cross: a max-reduction over the input axis fused with the elementwise operations after it runs
    about 2.5x slower on the CPU than the two kept apart (measured for one 512x512 layer at batch 1000)."""
    info = jnp.finfo(y.dtype)
    return lax.reduce_precision(y, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def negated(y: jax.Array, negate) -> jax.Array:
    """``y + a (1 - 2 y)`` for bits ``a``: ``1 - y`` where ``negate`` is set, else ``y`` (written as a
    select, so that ``1 - y`` is exactly what the interval rule bounds)."""
    return jnp.where(negate, 1 - y, y)


def negated_interval(bounds: Interval, negate) -> Interval:
    """Exact image of a box under `negated`: ``[1 - r, 1 - l]`` where ``negate`` is set."""
    return Interval(jnp.where(negate, 1 - bounds.upper, bounds.lower),
                    jnp.where(negate, 1 - bounds.lower, bounds.upper))


# ---------------------------------------------------------------------------------------------------------
# Layer


def uniform_between(low: float, high: float):
    """Initialiser drawing uniformly from ``[low, high)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init


class MWD(Layer):
    """A layer of ``features`` MWD units of one ``kind``: ``'u'`` (``U``), ``'neg'`` (``1 - U``) or
    ``'mixed'`` (per unit, ``U`` or ``1 - U`` at random).

    Parameters ``u`` and ``w``, (features, in), start as ``u ~ U(0.2, 0.7)``, ``w ~ U(0, 1)`` (the
    authors' code).  A mixed layer draws its bits ``negate`` (features,) from the ``params`` RNG at init
    and keeps them in the ``constants`` collection: outside ``params`` the optimiser never sees them, and
    they travel with the other variables (pass every collection of ``init`` to ``apply``).
    """

    features: int
    kind: str = "u"
    has_pseudo_gradient = True
    connection_axes = {"u": -1, "w": -1}

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(4, "neg"), (3, 6)), Example(cls(4, "mixed"), (3, 6)))

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        u = self.param("u", uniform_between(*U_INIT_RANGE), (self.features, x.shape[-1]))
        w = self.param("w", uniform_between(*W_INIT_RANGE), (self.features, x.shape[-1]))
        if self.kind == "mixed" and self.is_initializing():
            self.variable("constants", "negate",
                          lambda: jax.random.bernoulli(self.make_rng("params"), 0.5, (self.features,)))
        return negated(mwd_unit(x, u, w, rho), self.negate_bits())

    def negate_bits(self):
        """Which units are negated: ``False`` ('u'), ``True`` ('neg') or the stored bits ('mixed')."""
        if self.kind not in KINDS:
            raise ValueError(f"unknown MWD kind {self.kind!r}; choose one of {KINDS}")
        if self.kind != "mixed":
            return self.kind == "neg"
        if not self.has_variable("constants", "negate"):
            raise ValueError("a mixed MWD layer needs its 'constants' collection: pass every collection "
                             "returned by init (not only 'params') to apply")
        return self.variables["constants"]["negate"]

    def interval(self, bounds: Interval) -> Interval:
        params = self.variables["params"]
        return negated_interval(mwd_interval(bounds, params["u"], params["w"]), self.negate_bits())

    @staticmethod
    def project(layer_params: dict, epoch=0.0) -> dict:
        """The authors' post-step constraint: ``w`` clipped to [0, 1], ``u`` to [0.01, 3.0]."""
        return {**layer_params, "u": jnp.clip(layer_params["u"], *U_CLIP),
                "w": jnp.clip(layer_params["w"], *W_CLIP)}
