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

import math
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
# Initialisation

INITS = ("pytorch", "sparse")


def sparse_init(key: jax.Array, shape: tuple[int, ...], density: float, norm: float,
                negative: float = 0.0) -> jax.Array:
    """A kernel (neuron axis last) whose neurons each have ``P = norm`` and ``N = negative * norm``: a
    share ``density`` of the weights is positive (always including the neuron's largest draw, so none is
    empty) and, when ``negative > 0``, another share ``density`` of them negative, each with a magnitude
    uniform in (0, 1]; the rest are 0.  Then each neuron's parts are scaled to those L1 norms.

    With ``norm`` the budget (``budget * scale`` raw) and inputs in [0, 1], a neuron's nics is ``budget``
    times (the mean input over its positive weights minus ``negative`` times that over its negative
    ones).  Chosen so that this sweeps the AND activation's sensitive range around 0.5 (``negative`` 0
    for the sparse first layer, about 0.7 with budget 2 where most inputs are active), a neuron starts
    where its gradient is alive instead of on the floor (or above the ceiling).
    """
    select_key, magnitude_key = jax.random.split(key)
    draws = jax.random.uniform(select_key, shape)
    axes = tuple(range(len(shape) - 1))
    positive = (draws < density) | (draws == jnp.max(draws, axis=axes, keepdims=True))
    negative_mask = (draws >= density) & (draws < 2 * density) if negative > 0 else jnp.zeros(shape, bool)
    magnitudes = jax.random.uniform(magnitude_key, shape, minval=1e-3, maxval=1.0)

    def part(mask, target):
        values = jnp.where(mask, magnitudes, 0.0)
        total = jnp.sum(values, axis=axes, keepdims=True)
        return values * (target / jnp.where(total > 0, total, 1.0))

    return part(positive, norm) - part(negative_mask, negative * norm)


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
        (the paper's 1); with ``budget_final`` its value at epoch 0.
      budget_final, budget_decay_epochs: the budget schedule of the author's code (`budget_at`): the bound
        falls from ``budget`` towards ``budget_final`` as ``1 - tanh(2 epoch / budget_decay_epochs)``
        (his 10 (2 - tanh(2 epoch / 100)) raw: budget 2, final 1, 100 epochs).  None: constant.
      l1_rule: ``"author"`` or ``"paper"`` (module docstring).
      init_scheme: how the raw ``W`` and ``b`` are drawn (`INITS`): ``"pytorch"``, the author's (PyTorch's
        default, uniform in ``+-1/sqrt(fan_in)``; with a scale of 10 every nics starts near 0, on the
        floor of the AND activation, where no gradient moves it: issue 14), or ``"sparse"``
        (`sparse_init`: each neuron at its L1 budget with a few positive weights and, with
        ``init_negative``, a few negative ones, so that its nics spans the activation's sensitive range
        from the first step).
      init_density: the share of a neuron's weights that ``"sparse"`` makes positive (and negative).
      init_negative: ``N / P`` of a ``"sparse"`` neuron at initialisation.
      raw_output: output ``W x + b`` instead of nics (the author's logits: the last layer's raw
        pre-activation, up to ``+-budget * scale``, rather than nics bounded near ``+-budget``).
    """

    features: int
    scale: float = 10.0
    bias_bound: float = 2.0
    budget: float = 1.0
    budget_final: float | None = None
    budget_decay_epochs: float = 100.0
    l1_rule: str = "author"
    init_scheme: str = "pytorch"
    init_density: float = 0.2
    init_negative: float = 0.0
    raw_output: bool = False
    connection_axes = {"kernel": -2}

    def __post_init__(self):
        name = type(self).__name__
        if self.scale <= 0:
            raise ValueError(f"{name}: scale must be > 0, got {self.scale}")
        if self.budget <= 0:
            raise ValueError(f"{name}: budget must be > 0, got {self.budget}")
        if self.budget_final is not None and not (self.budget_final > 0 and self.budget_decay_epochs > 0):
            raise ValueError(f"{name}: budget_final and budget_decay_epochs must be > 0, got "
                             f"{self.budget_final} and {self.budget_decay_epochs}")
        if self.bias_bound < 0:
            raise ValueError(f"{name}: bias_bound must be >= 0, got {self.bias_bound}")
        if self.l1_rule not in L1_RULES:
            raise ValueError(f"{name}: unknown l1_rule {self.l1_rule!r}; choose one of {L1_RULES}")
        if self.init_scheme not in INITS:
            raise ValueError(f"{name}: unknown init_scheme {self.init_scheme!r}; choose one of {INITS}")
        if not 0 < self.init_density <= 1:
            raise ValueError(f"{name}: init_density must be in (0, 1], got {self.init_density}")
        if not 0 <= self.init_negative <= 1:
            raise ValueError(f"{name}: init_negative must be in [0, 1] (N <= P), got {self.init_negative}")
        super().__post_init__()

    @property
    def output_scale(self) -> float:
        """What the affine map is divided by: ``scale``, or 1 for a ``raw_output`` layer."""
        return 1.0 if self.raw_output else self.scale

    def make_params(self, kernel_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """The layer's ``kernel`` and ``bias`` parameters, drawn as ``init_scheme`` says."""
        if self.init_scheme == "pytorch":
            bound = 1.0 / math.sqrt(math.prod(kernel_shape[:-1]))
            uniform = lambda key, shape: jax.random.uniform(key, shape, minval=-bound, maxval=bound)  # noqa: E731
            return self.param("kernel", uniform, kernel_shape), self.param("bias", uniform, kernel_shape[-1:])
        kernel = self.param("kernel", lambda key, shape: sparse_init(
            key, shape, self.init_density, self.budget * self.scale, self.init_negative), kernel_shape)
        return kernel, self.param("bias", nn.initializers.zeros, kernel_shape[-1:])

    def budget_at(self, epoch) -> jax.Array | float:
        """The L1 budget at training time ``epoch``: ``budget`` without a schedule, else
        ``budget_final + (budget - budget_final) (1 - tanh(2 epoch / budget_decay_epochs))``."""
        if self.budget_final is None:
            return self.budget
        decay = 1.0 - jnp.tanh(2.0 * jnp.asarray(epoch, jnp.float32) / self.budget_decay_epochs)
        return self.budget_final + (self.budget - self.budget_final) * decay

    def project(self, layer_params: dict, epoch=0.0) -> dict:
        """Per-neuron L1 projection at the budget of ``epoch`` (`budget_at`) and bias clamp (module
        docstring); applied by the training engine at initialisation and after every step."""
        return project_andor(layer_params, scale=self.scale, budget=self.budget_at(epoch),
                             bias_bound=self.bias_bound, rule=self.l1_rule)


class AndOrDense(AndOrNeurons):
    """Dense AND/OR neurons: ``nics = (x W + b) / scale`` with ``W`` (in, out); attributes of
    `AndOrNeurons`."""

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(4, scale=1.0), (3, 5)),
                Example(cls(3, init_scheme="sparse", init_negative=0.5, raw_output=True), (2, 6)))

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        kernel, bias = self.make_params((x.shape[-1], self.features))
        return (x @ kernel + bias) / self.output_scale

    def affine(self) -> tuple[jax.Array, jax.Array]:
        """The layer as ``(W / s, b / s)``, ``s`` the `output_scale`: ``output = x W' + b'`` (used by
        certification)."""
        params = self.variables["params"]
        return params["kernel"] / self.output_scale, params["bias"] / self.output_scale

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
        kernel, bias = self.make_params((*self.kernel_size, x.shape[-1], self.features))
        return (conv2d(x, kernel, self.strides, self.padding) + bias) / self.output_scale

    def interval(self, bounds: Interval) -> Interval:
        params = self.variables["params"]
        kernel = params["kernel"] / self.output_scale
        return linear(lambda c: conv2d(c, kernel, self.strides, self.padding),
                      lambda r: conv2d(r, jnp.abs(kernel), self.strides, self.padding),
                      params["bias"] / self.output_scale, bounds)


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


def on_floor(x: jax.Array) -> jax.Array:
    """Where `and_activation` of nics ``x`` is its leaky floor ``0.03 (x + 1.1)`` (the sigmoid below it,
    about x < 0.345): the output barely depends on the input and the gradient is the floor's 0.03."""
    return jax.nn.sigmoid(AND_SLOPE * (x - AND_CENTRE)) <= FLOOR_SLOPE * (x + FLOOR_OFFSET)


def on_ceiling(x: jax.Array) -> jax.Array:
    """Where `and_activation` of nics ``x`` is saturated high (about x > 0.69): on its leaky ceiling
    ``1 + 0.06 (x - 1)`` or, for x > 1, where the sigmoid is 1 in floating point and the gradient 0."""
    return and_activation(x) >= 1.0 + CEILING_SLOPE * (jnp.minimum(x, 1.0) - 1.0) - 1e-6


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
