"""Per-example losses that attacks maximise.

Each maps logits ``z`` of shape (batch, classes) and integer labels ``y`` of shape (batch,) to a (batch,)
array; a larger value means a point closer to (or further past) misclassification.  A targeted loss
(`TARGETED_LOSSES`) also takes a (batch,) target class ``t != y`` and grows as ``z_t`` overtakes ``z_y``;
`loss_function` picks one or the other.
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


def _logit_of(logits: jax.Array, classes: jax.Array) -> jax.Array:
    return jnp.take_along_axis(logits, classes[:, None], axis=-1)[:, 0]


def targeted_margin(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """``z_t - z_y``: positive exactly when the target class beats the label."""
    return _logit_of(logits, target) - _label_logit(logits, y)


def targeted_cross_entropy(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """``log softmax(z)_t``: the (negated) cross-entropy towards the target class."""
    return _logit_of(jax.nn.log_softmax(logits, axis=-1), target)


def targeted_difference_of_logits_ratio(logits: jax.Array, y: jax.Array, target: jax.Array) -> jax.Array:
    """Targeted DLR (Croce & Hein 2020, sec. 3.2): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``
    with ``z_pi1 >= z_pi2 >= ...`` the sorted logits.  Shift- and scale-invariant; needs four classes."""
    top = jnp.sort(logits, axis=-1)[..., ::-1]
    return targeted_margin(logits, y, target) / (top[..., 0] - 0.5 * (top[..., 2] + top[..., 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "margin": margin,
    "squared": squared_error,
    "dlr": difference_of_logits_ratio,
}

TARGETED_LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "ce": targeted_cross_entropy,
    "margin": targeted_margin,
    "dlr": targeted_difference_of_logits_ratio,
}


def loss_function(name: str, target: jax.Array | None = None) -> LossFn:
    """The loss ``name`` as ``(logits, y) -> (batch,)``: `LOSSES`'s, or, given (batch,) target classes,
    `TARGETED_LOSSES`'s towards them (for use inside a trace: ``target`` is closed over)."""
    if target is None:
        return LOSSES[name]
    return lambda logits, y: TARGETED_LOSSES[name](logits, y, target)


def top_targets(logits: jax.Array, y: jax.Array, count: int) -> jax.Array:
    """(batch, count) classes other than ``y`` in decreasing order of their logit: the targets of a targeted
    attack, the most promising first (AutoAttack's choice, from the clean logits)."""
    others = jnp.where(jax.nn.one_hot(y, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.argsort(-others, axis=-1, stable=True)[:, :count]
