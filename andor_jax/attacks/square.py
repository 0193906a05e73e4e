"""The Square attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square attack: a query-efficient
black-box adversarial attack via random search"), L-inf: gradient-free, so it is the check for gradient
masking (a gradient-free attack that beats gradient attacks means the gradients are uninformative).

It minimises the margin ``z_y - max_{k != y} z_k`` by random search over perturbations with entries ±eps:
- start from vertical stripes: ``delta[:, w, c] = ±eps`` drawn per column and channel;
- each query redraws, per example, one square window of side ``s = round(sqrt(p H W))`` (at least 1, at most
  the image) at a uniform position, setting it to ±eps per channel, and keeps the change if the margin falls;
- ``p`` starts at ``p_init`` and is halved at query ``{10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000}``
  (those counts being for a budget of 10,000 queries and rescaled to ``n_queries``).
Every evaluated point is ``clip(x + delta)`` (domain clip), inside the ball.  An input counts as broken if the
clean point or an evaluated point is misclassified; it is then no longer changed.

Broken inputs leave the batch every ``compact_every`` queries (`andor_jax.attacks.compaction`), as the
authors' implementation queries only the inputs not yet fooled.  Each input draws its stripes and windows
from its own PRNG stream (its key folded with the query number), so which inputs share a batch, and so the
compaction, never changes its search.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks import common, compaction
from andor_jax.attacks.losses import margin
from andor_jax.attacks.oracle import LogitsFn, Oracle

HALVING_QUERIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # for a budget of 10,000 queries


class SearchState(NamedTuple):
    """Per input (leading axis): the search's current perturbation, its best evaluated point and margin,
    and whether it is broken."""

    delta: jax.Array
    x_best: jax.Array
    best_margin: jax.Array
    broken: jax.Array


def square_fraction(query: jax.Array, n_queries: int, p_init) -> jax.Array:
    """``p`` at ``query``: ``p_init`` halved once per threshold of `HALVING_QUERIES` passed, after rescaling
    the query count to a budget of 10,000."""
    rescaled = (query * 10000) // n_queries
    return p_init * 0.5 ** jnp.sum(rescaled > jnp.asarray(HALVING_QUERIES))


def image_shape_of(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(H, W, C)`` for the squares: NHWC inputs as they are, NHW as one channel, flat inputs as a square
    one-channel image when their size is a perfect square (784 -> 28x28), otherwise as a 1 x d strip."""
    if len(input_shape) == 3:
        return tuple(input_shape)
    if len(input_shape) == 2:
        return (*input_shape, 1)
    size = int(np.prod(input_shape))
    side = math.isqrt(size)
    return (side, side, 1) if side * side == size else (1, size, 1)


def _evaluate(oracle: Oracle, x, y, delta, domain, key):
    """The point ``clip(x + delta)``, its negated margin (the search minimises the margin) and whether it is
    misclassified."""
    x_query = common.clip_to_domain(x + delta.reshape(x.shape), domain)
    logits = oracle.logits(x_query, key)
    return x_query, -margin(logits, y), common.misclassified(logits, y)


@functools.partial(jax.jit, static_argnames=("oracle", "image_shape"))
def _start(oracle: Oracle, x, y, example_keys, key, eps, domain, *, image_shape) -> SearchState:
    """Query 0: the clean check and the stripes, each input's stripes drawn from its own key."""
    height, width, channels = image_shape
    clean_key, init_key = jax.random.split(key)
    clean_broken = common.misclassified(oracle.logits(x, clean_key), y)
    stripes = jax.vmap(lambda k: jax.random.rademacher(jax.random.fold_in(k, 0), (1, width, channels), x.dtype))(
        example_keys)
    delta = jnp.broadcast_to(eps * stripes, (x.shape[0], height, width, channels))
    x_query, best_margin, broken_now = _evaluate(oracle, x, y, delta, domain, init_key)
    x_best = jnp.where(common.per_example(clean_broken, x), x, x_query)
    return SearchState(delta, x_best, best_margin, clean_broken | broken_now)


@functools.partial(jax.jit, static_argnames=("oracle", "n_queries", "image_shape"))
def _search(oracle: Oracle, x, y, example_keys, state: SearchState, model_key, eps, domain, p_init, first_query,
            stop_query, *, n_queries, image_shape) -> SearchState:
    """Queries ``first_query, ..., stop_query - 1`` (fewer once every input is broken)."""
    height, width, channels = image_shape
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]

    def unfinished(carry):
        query, state = carry
        return (query < stop_query) & ~jnp.all(state.broken)

    def one_query(carry):
        query, state = carry
        p = square_fraction(query, n_queries, p_init)
        side = jnp.clip(jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32), 1, min(height, width))
        # one uniform draw per input gives the window's corner and its signs
        draw = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, query), (2 + channels,), x.dtype))(
            example_keys)
        top = jnp.minimum(jnp.floor(draw[:, 0] * (height - side + 1)), height - side).reshape(-1, 1, 1, 1)
        left = jnp.minimum(jnp.floor(draw[:, 1] * (width - side + 1)), width - side).reshape(-1, 1, 1, 1)
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        signs = jnp.where(draw[:, 2:] < 0.5, -1.0, 1.0).astype(x.dtype).reshape(-1, 1, 1, channels)
        candidate = jnp.where(window, eps * signs, state.delta)
        x_query, candidate_margin, fooled = _evaluate(oracle, x, y, candidate, domain,
                                                      jax.random.fold_in(model_key, query))
        accept = ~state.broken & ((candidate_margin < state.best_margin) | fooled)
        return query + 1, SearchState(jnp.where(common.per_example(accept, candidate), candidate, state.delta),
                                      jnp.where(common.per_example(accept, x), x_query, state.x_best),
                                      jnp.where(accept, candidate_margin, state.best_margin),
                                      state.broken | (accept & fooled))

    _, state = jax.lax.while_loop(unfinished, one_query, (first_query, state))
    return state


def square(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
           domain=(0.0, 1.0), n_queries: int = 1000, p_init: float = 0.8,
           image_shape: tuple[int, int, int] | None = None, compact_every: int | None = 25) -> common.AttackResult:
    """The L-inf Square attack against ``logits_fn`` (see the module docstring); it never differentiates.

    Args:
      logits_fn: the model, ``x -> logits`` (batch, classes), or an `Oracle`.
      x: (batch, ...) inputs inside ``domain``.
      y: (batch,) integer labels.
      key: PRNG key for the random search.
      eps: L-inf radius.
      domain: the input box ``(lo, hi)``.
      n_queries: model queries per example, the initial stripes included (the clean check is extra).
      p_init: initial fraction of the image covered by a square.
      image_shape: ``(H, W, C)`` the squares live in; None infers it (`image_shape_of`).
      compact_every: queries between two compactions of the batch (broken inputs leave it); None keeps the
        whole batch to the end.  Compaction needs concrete arrays: inside a caller's ``jax.jit`` the batch is
        never compacted.  Either way the verdict and the points are the same for a deterministic model.
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm="linf")
    common.check_positive_int("n_queries", n_queries)
    if compact_every is not None:
        common.check_positive_int("compact_every", compact_every)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must lie in (0, 1], got {p_init}")
    if image_shape is None:
        image_shape = image_shape_of(jnp.shape(x)[1:])
    image_shape = tuple(int(size) for size in image_shape)
    if len(image_shape) != 3 or int(np.prod(image_shape)) != int(np.prod(jnp.shape(x)[1:])):
        raise ValueError(f"image_shape {image_shape} is not an (H, W, C) layout of inputs of shape "
                         f"{jnp.shape(x)[1:]}")
    examples_key, start_key, model_key = jax.random.split(key, 3)
    example_keys = jax.random.split(examples_key, jnp.shape(x)[0])
    state = _start(oracle, x, y, example_keys, start_key, eps, domain, image_shape=image_shape)

    def search(operands, state, first_query, stop_query):
        return _search(oracle, *operands, state, model_key, eps, domain, common.as_scalar(p_init, x), first_query,
                       stop_query, n_queries=n_queries, image_shape=image_shape)

    operands = (x, y, example_keys)
    if compact_every is None or common.traced(x, y, key, eps):
        state = search(operands, state, 1, n_queries)
    else:
        state = compaction.run_compacting(search, operands, state, start=1, stop=n_queries, every=compact_every,
                                          finished=lambda state: state.broken)
    return common.AttackResult(state.x_best, state.broken)
