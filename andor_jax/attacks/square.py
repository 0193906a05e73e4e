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
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from andor_jax.attacks import common
from andor_jax.attacks.losses import margin
from andor_jax.attacks.oracle import LogitsFn, Oracle

HALVING_QUERIES = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # for a budget of 10,000 queries


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


@functools.partial(jax.jit, static_argnames=("oracle", "n_queries", "image_shape"))
def _square(oracle: Oracle, x, y, key, eps, domain, p_init, *, n_queries, image_shape) -> common.AttackResult:
    batch = x.shape[0]
    height, width, channels = image_shape
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]

    def evaluate(delta, query_key):
        x_query = common.clip_to_domain(x + delta.reshape(x.shape), domain)
        logits = oracle.logits(x_query, query_key)
        return x_query, -margin(logits, y), common.misclassified(logits, y)

    clean_key, stripes_key, init_key, loop_key = jax.random.split(key, 4)
    clean_broken = common.misclassified(oracle.logits(x, clean_key), y)
    stripes = jax.random.rademacher(stripes_key, (batch, 1, width, channels), x.dtype)
    delta = jnp.broadcast_to(eps * stripes, (batch, height, width, channels))
    x_query, best_margin, broken_now = evaluate(delta, init_key)
    x_best = jnp.where(common.per_example(clean_broken, x), x, x_query)
    broken = clean_broken | broken_now

    query_keys = jax.random.split(loop_key, (n_queries, 2))  # per query: the search's draw, the model's draw

    def unfinished(state):
        query, *_, broken = state
        return (query < n_queries) & ~jnp.all(broken)

    def one_query(state):
        query, delta, x_best, best_margin, broken = state
        draw_key, model_key = query_keys[query]
        p = square_fraction(query, n_queries, p_init)
        side = jnp.clip(jnp.round(jnp.sqrt(p * height * width)).astype(jnp.int32), 1, min(height, width))
        # one uniform draw per example gives the window's corner and its signs (one PRNG call per query)
        draw = jax.random.uniform(draw_key, (batch, 2 + channels), x.dtype)
        top = jnp.minimum(jnp.floor(draw[:, 0] * (height - side + 1)), height - side).reshape(batch, 1, 1, 1)
        left = jnp.minimum(jnp.floor(draw[:, 1] * (width - side + 1)), width - side).reshape(batch, 1, 1, 1)
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        signs = jnp.where(draw[:, 2:] < 0.5, -1.0, 1.0).astype(x.dtype).reshape(batch, 1, 1, channels)
        candidate = jnp.where(window, eps * signs, delta)
        x_query, candidate_margin, fooled = evaluate(candidate, model_key)
        accept = ~broken & ((candidate_margin < best_margin) | fooled)
        delta = jnp.where(common.per_example(accept, delta), candidate, delta)
        x_best = jnp.where(common.per_example(accept, x), x_query, x_best)
        best_margin = jnp.where(accept, candidate_margin, best_margin)
        return query + 1, delta, x_best, best_margin, broken | (accept & fooled)

    state = (1, delta, x_best, best_margin, broken)
    _, _, x_best, _, broken = jax.lax.while_loop(unfinished, one_query, state)
    return common.AttackResult(x_best, broken)


def square(logits_fn: LogitsFn | Oracle, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
           domain=(0.0, 1.0), n_queries: int = 1000, p_init: float = 0.8,
           image_shape: tuple[int, int, int] | None = None) -> common.AttackResult:
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
    """
    oracle, eps, domain = common.prepare(logits_fn, x, y, key, eps=eps, domain=domain, norm="linf")
    common.check_positive_int("n_queries", n_queries)
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must lie in (0, 1], got {p_init}")
    if image_shape is None:
        image_shape = image_shape_of(jnp.shape(x)[1:])
    image_shape = tuple(int(size) for size in image_shape)
    if len(image_shape) != 3 or int(np.prod(image_shape)) != int(np.prod(jnp.shape(x)[1:])):
        raise ValueError(f"image_shape {image_shape} is not an (H, W, C) layout of inputs of shape "
                         f"{jnp.shape(x)[1:]}")
    return _square(oracle, x, y, key, eps, domain, common.as_scalar(p_init, x), n_queries=n_queries,
                   image_shape=image_shape)
