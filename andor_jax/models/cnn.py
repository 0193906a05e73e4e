"""Small convolutional baseline."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from andor_jax.layers import Activation, Conv, Dense, Flatten, MaxPool
from andor_jax.models.base import Sequential


def get_model(channels: Sequence[int] = (16, 32), dense: int = 128, num_classes: int = 10,
              activation: str = "relu") -> Sequential:
    """``(conv 3x3 -> activation -> max-pool 2) * len(channels)``, a dense hidden layer and the logits.
    Expects NHWC inputs (keep the data unflattened)."""
    layers: list[nn.Module] = []
    for width in channels:
        layers += [Conv(width, (3, 3), padding="SAME"), Activation(activation), MaxPool((2, 2))]
    return Sequential((*layers, Flatten(), Dense(dense), Activation(activation), Dense(num_classes)))
