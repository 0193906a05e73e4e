"""Fully connected baseline: flatten, then ``Dense -> activation`` per hidden width, then the logits."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from andor_jax.layers import Activation, Dense, Flatten
from andor_jax.models.base import Sequential


def get_model(hidden: Sequence[int] = (512, 512, 512), num_classes: int = 10, activation: str = "relu",
              output_activation: str | None = None) -> Sequential:
    """Flatten, ``Dense(width) -> Activation(activation)`` per entry of ``hidden``, ``Dense(num_classes)``
    (passed through ``output_activation`` when one is named, e.g. sigmoid outputs for a squared loss)."""
    layers: list[nn.Module] = [Flatten()]
    for width in hidden:
        layers += [Dense(width), Activation(activation)]
    layers.append(Dense(num_classes))
    if output_activation:
        layers.append(Activation(output_activation))
    return Sequential(tuple(layers))
