"""Layer families.  One family per module; every layer brings its forward pass and its interval rule.

The contract every layer honours (see ``DESIGN.md``):

* ``__call__(self, x, *, train: bool = False)`` is the forward pass (a Flax Linen compact method);
* ``interval(self, bounds: Interval) -> Interval`` maps a box of inputs to a box containing every
  output, reading the layer's parameters from ``self.variables``.  A layer that cannot bound its output
  does not define ``interval``, and interval propagation then raises an error naming it.
"""
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

__all__ = ["Activation", "AvgPool", "BatchNorm", "Concat", "Conv", "Dense", "Dropout", "Flatten", "MaxPool"]
