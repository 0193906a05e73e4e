"""AND/OR layers: Fontana, "AND/OR trade-off in artificial neurons: impact on adversarial robustness"
(arXiv 2102.07389, sec. 4), with the details of the author's LeNet code.

A neuron with weights ``w = p - n`` (``p, n >= 0`` its positive and negative parts, ``P = ||p||_1``,
``N = ||n||_1``) and bias ``b`` computes its *neuron input coactivation score*

    nics = (w . x + b) / scale                              (the paper: nics = w . x, scale 1, no bias)

and then an activation of nics.  With ``P, N <= scale`` and inputs in [0, 1], ``w . x / scale`` lies in
[-1, 1]: nics is close to 1 only when every positively weighted input is active at once (an AND).  Three
pieces make a network of such neurons:

* `AndOrDense` and `AndOrConv` output nics.  Their `project` is the per-neuron L1 projection applied
  after every optimiser step (and at init); for a convolution a neuron is an output filter, its weights
  the ``kh x kw x in_channels`` slice.  The bias is clamped to ``[-bias_bound, bias_bound]`` there too.
* `AndActivation` maps nics to ``[0, 1]``: the AND-type activation, high only for nics close to 1.
* Keeping nics as a layer output of its own lets `andor_jax.scramble` read every neuron's nics in the
  extended dataset without knowing anything about these layers.

The L1 projection, two versions (``l1_rule``), with ``B = budget * scale``:

* ``"paper"`` (eq. 4): ``p <- p min(1, B / P)`` and ``n <- n min(1, B / N)``: both norms at most ``B``.
* ``"author"`` (the code): ``p <- p min(1, B / P)``, then ``n <- n min(1, P' / N)`` with
  ``P' = min(P, B)`` the new positive norm, so that ``N <= P <= B``: a neuron can never be inhibited
  more than it can be excited, and nics of inputs in [0, 1] stays below ``P' / scale`` and above
  ``-P' / scale``.  A neuron without positive weights loses its negative ones too.

Both are idempotent (a second application changes nothing) and, for ``P <= B`` and ``N <= B`` (``N <= P``
for the author's), the identity.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from andor_jax.interval import Interval, linear, monotone
from andor_jax.layers.base import Example, Layer
from andor_jax.layers.standard import conv2d

L1_RULES = ("author", "paper")

# The AND-type activation of the author's code (see `and_activation`).
AND_CENTRE = 0.5
AND_SLOPE = 20.0
AND_STEEPENING = 14.0
FLOOR_SLOPE, FLOOR_OFFSET = 0.03, 1.1
CEILING_SLOPE = 0.06


# ---------------------------------------------------------------------------------------------------------
# The L1 projection


def shrink_factor(norm: jax.Array, bound: jax.Array | float) -> jax.Array:
    """``min(1, bound / norm)``, and 1 where ``norm`` is 0."""
    return jnp.minimum(1.0, bound / jnp.maximum(norm, jnp.finfo(jnp.result_type(norm)).tiny))


def l1_project(kernel: jax.Array, bound: float, rule: str = "author") -> jax.Array:
    """Per-neuron L1 projection of the positive and negative parts of ``kernel`` (see the module
    docstring).  The neuron axis is the last (Dense ``(in, out)``, Conv ``(kh, kw, in, out)``): the norms
    are taken over every other axis."""
    if rule not in L1_RULES:
        raise ValueError(f"unknown L1 projection rule {rule!r}; choose one of {L1_RULES}")
    axes = tuple(range(kernel.ndim - 1))
    positive, negative = jnp.maximum(kernel, 0.0), jnp.minimum(kernel, 0.0)
    p_norm, n_norm = positive.sum(axes), -negative.sum(axes)
    n_bound = bound if rule == "paper" else jnp.minimum(p_norm, bound)
    return positive * shrink_factor(p_norm, bound) + negative * shrink_factor(n_norm, n_bound)


def project_andor(layer_params: dict, *, scale: float, budget: float, bias_bound: float, rule: str) -> dict:
    """The constraint set of an AND/OR layer: the kernel's L1 projection with bound ``budget * scale``
    (``budget`` bounds the norms of the effective weights ``w / scale``) and the bias clamped."""
    projected = {**layer_params, "kernel": l1_project(layer_params["kernel"], budget * scale, rule)}
    if "bias" in layer_params:
        projected["bias"] = jnp.clip(layer_params["bias"], -bias_bound, bias_bound)
    return projected


# ---------------------------------------------------------------------------------------------------------
# Layers computing nics


class AndOrNeurons(Layer):
    """What dense and convolutional AND/OR neurons share: their settings, checked at construction, and
    the constraint set the engine projects them onto after every step.

    Attributes:
      features: number of neurons (output filters for a convolution).
      scale: divides the affine map (10 in the author's code).
      bias_bound: the bias is clamped to ``[-bias_bound, bias_bound]`` by `project` (author: 2 for dense
        layers, 0.5 and 1 for the two convolutions).
      budget: L1 bound of the positive (and negative) part of each neuron's effective weights ``W / scale``
        (the paper's 1).
      l1_rule: ``"author"`` or ``"paper"`` (module docstring).
      kernel_init: draws the raw ``W``, as the author's code does (PyTorch's default initialisation,
        then the division by ``scale``): with a scale of 10 every nics starts near 0, on the floor of
        the AND activation.
    """

    features: int
    scale: float = 10.0
    bias_bound: float = 2.0
    budget: float = 1.0
    l1_rule: str = "author"
    kernel_init: Callable = nn.initializers.lecun_normal()
    connection_axes = {"kernel": -2}

    def __post_init__(self):
        name = type(self).__name__
        if self.scale <= 0:
            raise ValueError(f"{name}: scale must be > 0, got {self.scale}")
        if self.budget <= 0:
            raise ValueError(f"{name}: budget must be > 0, got {self.budget}")
        if self.bias_bound < 0:
            raise ValueError(f"{name}: bias_bound must be >= 0, got {self.bias_bound}")
        if self.l1_rule not in L1_RULES:
            raise ValueError(f"{name}: unknown l1_rule {self.l1_rule!r}; choose one of {L1_RULES}")
        super().__post_init__()

    def project(self, layer_params: dict) -> dict:
        """Per-neuron L1 projection and bias clamp (module docstring); applied by the training engine."""
        return project_andor(layer_params, scale=self.scale, budget=self.budget, bias_bound=self.bias_bound,
                             rule=self.l1_rule)


class AndOrDense(AndOrNeurons):
    """Dense AND/OR neurons: ``nics = (x W + b) / scale`` with ``W`` (in, out); attributes of
    `AndOrNeurons`."""

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(4, scale=1.0), (3, 5)),)

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return (x @ kernel + bias) / self.scale

    def affine(self) -> tuple[jax.Array, jax.Array]:
        """The layer as ``(W / scale, b / scale)``: ``nics = x W' + b'`` (used by certification)."""
        params = self.variables["params"]
        return params["kernel"] / self.scale, params["bias"] / self.scale

    def interval(self, bounds: Interval) -> Interval:
        kernel, bias = self.affine()
        return linear(lambda c: c @ kernel, lambda r: r @ jnp.abs(kernel), bias, bounds)


class AndOrConv(AndOrNeurons):
    """Convolutional AND/OR neurons over NHWC inputs: ``nics = (conv(x, W) + b) / scale`` with ``W``
    (kh, kw, in, out).  A neuron is an output filter; its L1 norms run over ``kh x kw x in``.

    Attributes of `AndOrNeurons` (``bias_bound`` 1 by default), then ``kernel_size``, ``strides`` and
    ``padding`` of the convolution (keyword arguments).
    """

    bias_bound: float = 1.0
    kernel_size: tuple[int, int] = (5, 5)
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(3, scale=1.0, kernel_size=(3, 3)), (2, 6, 6, 2)),)

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return (conv2d(x, kernel, self.strides, self.padding) + bias) / self.scale

    def interval(self, bounds: Interval) -> Interval:
        params = self.variables["params"]
        kernel = params["kernel"] / self.scale
        return linear(lambda c: conv2d(c, kernel, self.strides, self.padding),
                      lambda r: conv2d(r, jnp.abs(kernel), self.strides, self.padding),
                      params["bias"] / self.scale, bounds)


# ---------------------------------------------------------------------------------------------------------
# The AND-type activation


def and_activation(x: jax.Array) -> jax.Array:
    """The AND-type activation of the author's code, of ``x = nics``:

        s(x) = 20                 for x < 0.5
             = 20 + 14 x^6        for x >= 0.5       (steeper towards nics = 1)
        y    = sigmoid(s(x) (x - 0.5))
        y    = clip(y, 0.03 (x + 1.1), 1 + 0.06 (x - 1))

    The leaky floor and ceiling keep a gradient (0.03, 0.06) where the sigmoid saturates.

    Non-decreasing everywhere, so intervals map endpoint to endpoint: ``g(x) = s(x) (x - 0.5)`` is
    ``20 (x - 0.5)`` below 0.5 and, above, has ``g'(x) = 84 x^5 (x - 0.5) + 20 + 14 x^6 > 0``; both pieces
    are 0 at 0.5, so ``g`` is continuous and increasing, and so is ``sigmoid(g)``.  ``clip(y, lo, hi)`` is
    ``min(max(y, lo), hi)`` (also where ``lo > hi``, i.e. x < -30.2), and max and min of non-decreasing
    functions are non-decreasing.
    """
    slope = jnp.where(x < AND_CENTRE, AND_SLOPE, AND_SLOPE + AND_STEEPENING * x**6)
    y = jax.nn.sigmoid(slope * (x - AND_CENTRE))
    return jnp.clip(y, FLOOR_SLOPE * (x + FLOOR_OFFSET), 1.0 + CEILING_SLOPE * (x - 1.0))


AND_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "and": and_activation,
    "sigmoid": jax.nn.sigmoid,
}


class AndActivation(Layer):
    """Activation of nics: ``"and"`` (`and_activation`, AND type) or ``"sigmoid"`` (the plain logistic
    function, an OR-type contrast).  Both are non-decreasing, so the interval rule is exact."""

    kind: str = "and"

    @classmethod
    def conformance_examples(cls):
        return tuple(Example(cls(kind), (3, 7), (-1.5, 1.5)) for kind in AND_ACTIVATIONS)

    def __post_init__(self):
        if self.kind not in AND_ACTIVATIONS:
            raise ValueError(f"unknown AND/OR activation {self.kind!r}; choose one of {sorted(AND_ACTIVATIONS)}")
        super().__post_init__()

    def __call__(self, x, *, train: bool = False, rho=None):
        return AND_ACTIVATIONS[self.kind](x)

    def interval(self, bounds: Interval) -> Interval:
        return monotone(AND_ACTIVATIONS[self.kind], bounds)
