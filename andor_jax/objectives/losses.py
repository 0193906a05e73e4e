"""Losses of a batch of outputs against integer labels, and accuracy; found by name (``train.loss``)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (log-softmax + NLL) over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def squared_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error against one-hot targets, summed over classes and averaged over the batch (the loss of
    the MWD paper and its sigmoid baseline)."""
    targets = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.sum((outputs - targets) ** 2, axis=-1).mean()


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": cross_entropy,
    "squared_error": squared_error,
}


def get_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of the batch whose largest output is at its label."""
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)
