"""The classifier of CARSO on MNIST (Ballarin 2022, thesis sec. 4; the author's code, see
``shared/notes/carso.md``): 784-200-80-10, fully connected.

    x in [0, 1]^784 -> standardise -> [Dense -> Mish -> BatchNorm -> Dropout(0.15)] x 2 -> Dense -> Mish

Every layer has an interval rule (the standardisation is a strictly increasing affine map per pixel, Mish
has the rule of `andor_jax.layers.standard.Activation`, BatchNorm at inference is affine, Dropout is the
identity at inference), so the classifier alone is certifiable by interval bound propagation.  The inputs
are standardised inside the model (mean 0.1307, std 0.3081, the usual MNIST statistics) so that attacks
and bounds still work in the [0, 1] pixel domain.  Training minimises the cross-entropy of the softmax of
the post-Mish outputs (the author's log-softmax + NLL).

The thesis text puts dropout and BatchNorm *before* each hidden layer; the author's code, followed here,
applies Dense -> Mish -> BatchNorm -> Dropout.  BatchNorm momentum 0.9 is PyTorch's default 0.1 in Flax's
convention (running = momentum * running + (1 - momentum) * batch).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from andor_jax.interval import Interval
from andor_jax.layers import Activation, BatchNorm, Dense, Dropout
from andor_jax.layers.base import Example, Layer

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class Standardise(Layer):
    """``(x - mean) / std`` elementwise: a strictly increasing affine map, so its interval rule maps the
    endpoints, ``[(l - mean) / std, (u - mean) / std]``, and it preserves the order of its inputs."""

    mean: float = MNIST_MEAN
    std: float = MNIST_STD
    preserves_order = True

    def __call__(self, x, *, train: bool = False, rho=None):
        return (x - self.mean) / self.std

    def interval(self, bounds: Interval) -> Interval:
        return Interval(self(bounds.lower), self(bounds.upper))

    @classmethod
    def conformance_examples(cls) -> tuple[Example, ...]:
        return (Example(cls(), (4, 6)), Example(cls(mean=0.5, std=2.0), (3, 5), (-1.0, 1.0)))


def layers(hidden: Sequence[int] = (200, 80), num_classes: int = 10, dropout: float = 0.15,
           mean: float = MNIST_MEAN, std: float = MNIST_STD, batch_norm_momentum: float = 0.9) -> tuple:
    """The layer sequence: `Standardise`, then ``Dense -> Mish -> BatchNorm -> Dropout`` per hidden width,
    then ``Dense -> Mish`` (the logits).  Expects flattened inputs (``data.flatten = True``)."""
    sequence: list[nn.Module] = [Standardise(mean, std)]
    for width in hidden:
        sequence += [Dense(width), Activation("mish"), BatchNorm(momentum=batch_norm_momentum), Dropout(dropout)]
    return (*sequence, Dense(num_classes), Activation("mish"))


def representation_paths(hidden: Sequence[int] = (200, 80)) -> list[str]:
    """The paths of the post-Mish outputs of every Dense layer in `layers` (CARSO's representation, in this
    order: 200 + 80 + 10 = 290 values for the thesis's widths): ``layers_2``, ``layers_6``, ``layers_10``."""
    per_hidden = 4  # Dense, Mish, BatchNorm, Dropout
    return [f"layers_{1 + per_hidden * index + 1}" for index in range(len(hidden) + 1)]


def get_model(**kwargs) -> nn.Module:
    """The classifier as a `Sequential` of `layers` (keyword arguments as `layers`)."""
    from andor_jax.models import Sequential

    return Sequential(layers(**kwargs))
