"""Per-example losses that attacks maximise.

Each maps logits ``z`` of shape (batch, classes) and integer labels ``y`` of shape (batch,) to a (batch,)
array; a larger value means a point closer to (or further past) misclassification.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _label_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]


def _best_other_logit(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``max_{k != y} z_k``."""
    others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.max(others, axis=-1)


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``-log softmax(z)_y``."""
    return -_label_logit(jax.nn.log_softmax(logits, axis=-1), y)


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """The Carlini-Wagner margin ``max_{k != y} z_k - z_y`` (Carlini & Wagner 2017); positive exactly when
    the input is misclassified."""
    return _best_other_logit(logits, y) - _label_logit(logits, y)


def squared_error(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``sum_k (z_k - onehot(y)_k)^2``: the training loss of square-loss models such as MWD networks
    (Agrawal, de Alfaro & Helmbold), whose outputs are used without a softmax."""
    return jnp.sum((logits - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)) ** 2, axis=-1)


def difference_of_logits_ratio(logits: jax.Array, y: jax.Array) -> jax.Array:
    """DLR (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks"): ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``, with ``z_pi1 >= z_pi2 >=
    ...`` the sorted logits.  Invariant to shifting and scaling the logits; needs at least three classes."""
    top = jnp.sort(logits, axis=-1)[..., ::-1]
    return margin(logits, y) / (top[..., 0] - top[..., 2] + 1e-12)


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "margin": margin,
    "squared": squared_error,
    "dlr": difference_of_logits_ratio,
}
