"""The LeNet-like network of Fontana (arXiv 2102.07389, sec. 5) with ordinary layers: the control of the
AND/OR network (`andor_jax.models.andor_lenet`), and the layout both share (`lenet_layers`)."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from andor_jax.layers import Activation, Concat, Conv, Dense, Flatten, MaxPool
from andor_jax.models.base import Sequential

LENET_CONVS = (12, 16)      # filters of the two 5x5 convolutions, each followed by a 2x2 max-pool
LENET_DENSE = (120, 84)     # hidden dense layers


def lenet_layers(conv: Callable[[int, int], nn.Module], dense: Callable[[int, int], nn.Module],
                 activation: Callable[[], nn.Module], num_classes: int, skip: bool = False) -> tuple:
    """The layers from factories ``conv(features, position)``, ``dense(features, position)`` (position:
    0, 1, ... among the affine layers) and ``activation()``:

        conv 12 k5 -> max-pool 2 -> act -> conv 16 k5 -> max-pool 2 -> act -> flatten
        -> fc 120 -> act -> fc 84 -> act -> fc num_classes (the logits: no activation)

    On 28x28x1 inputs (valid convolutions) the flattened features are 4 x 4 x 16 = 256.  Pooling comes
    before the activation: for a non-decreasing activation the two orders give the same values, and this
    one evaluates the activation on 4 times fewer elements.

    With ``skip`` (the author's code), the last layer reads the activations of fc 120 beside those of
    fc 84: ``fc 120 -> act -> Concat((), (fc 84, act)) -> fc num_classes`` (120 + 84 = 204 inputs), so
    fc 120's neurons connect to fc 84 inside the branch and to the last layer through the skip.
    """
    layers: list[nn.Module] = []
    for position, features in enumerate(LENET_CONVS):
        layers += [conv(features, position), MaxPool((2, 2)), activation()]
    layers.append(Flatten())
    first, second = enumerate(LENET_DENSE, start=len(LENET_CONVS))
    layers += [dense(first[1], first[0]), activation()]
    branch = (dense(second[1], second[0]), activation())
    layers += [Concat(((), branch))] if skip else list(branch)
    return (*layers, dense(num_classes, len(LENET_CONVS) + len(LENET_DENSE)))


def get_model(num_classes: int = 10, activation: str = "relu", skip: bool = False) -> Sequential:
    """The control: `lenet_layers` of ordinary `Conv`, `Dense` and `Activation` layers (any name of
    `andor_jax.layers.standard.ACTIVATIONS`), no projection."""
    return Sequential(lenet_layers(conv=lambda features, _: Conv(features, (5, 5)),
                                   dense=lambda features, _: Dense(features),
                                   activation=lambda: Activation(activation),
                                   num_classes=num_classes, skip=skip))
