"""Layer families, one per module: every layer brings its forward pass, its interval rule and its other
hooks, declared with their defaults in one place: the protocol of `andor_jax.layers.base`."""
from andor_jax.layers.base import Example, Layer, MissingIntervalRuleError, walk
from andor_jax.layers.standard import (
    Activation,
    AvgPool,
    BatchNorm,
    Concat,
    Conv,
    Dense,
    Dropout,
    Flatten,
    MaxPool,
)

__all__ = ["Activation", "AvgPool", "BatchNorm", "Concat", "Conv", "Dense", "Dropout", "Example", "Flatten",
           "Layer", "MaxPool", "MissingIntervalRuleError", "walk"]
