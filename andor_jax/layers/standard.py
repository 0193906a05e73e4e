"""Standard layers with interval rules: dense, convolution, activations, pooling, normalisation.

Interval rules follow Gowal et al. 2018 ("On the effectiveness of interval bound propagation"):
affine maps in centre/radius form, monotone maps on the endpoints.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from andor_jax.interval import Interval, linear, monotone
from andor_jax.layers.base import Example, Layer, apply_chain, chain_interval, concatenate

MISH_ARGMIN = -1.1923179967766  # the unique minimiser of mish(x) = x tanh(softplus(x))


def mish(x: jax.Array) -> jax.Array:
    """Mish (Misra 2019): ``x * tanh(softplus(x))``."""
    return x * jnp.tanh(jax.nn.softplus(x))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "mish": mish,
    "identity": lambda x: x,
}


class Dense(Layer):
    """Affine layer ``y = x W + b`` with ``W`` of shape (in, out)."""

    features: int
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    connection_axes = {"kernel": -2}

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(4), (3, 5), (-1.0, 1.0)),)

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        y = x @ kernel
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y

    def interval(self, bounds: Interval) -> Interval:
        params = self.variables["params"]
        kernel = params["kernel"]
        return linear(lambda c: c @ kernel, lambda r: r @ jnp.abs(kernel), params.get("bias"), bounds)

    def affine(self) -> tuple[jax.Array, jax.Array | None]:
        """The layer as ``(W, b)`` with ``y = x W + b``; certification bounds logit margins through it."""
        params = self.variables["params"]
        return params["kernel"], params.get("bias")


def _convolution(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: str) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=tuple(strides), padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: str) -> jax.Array:
    """2-D convolution of NHWC inputs with an HWIO kernel.

    A single-channel input at unit strides without padding (the first layer of an MNIST network) goes
    through `single_channel_conv`, whose input gradient is an overlap-add: XLA:CPU runs the transposed
    convolution onto one channel several times slower than the forward (a LeNet's conv1 took 61-86 ms of a
    182 ms input gradient at batch 500, the overlap-add 22-34 ms).  The values are the same convolution's.
    """
    if x.shape[-1] == 1 and tuple(strides) == (1, 1) and padding == "VALID":
        return single_channel_conv(x, kernel)
    return _convolution(x, kernel, strides, padding)


def overlap_add_input_gradient(dy: jax.Array, kernel: jax.Array) -> jax.Array:
    """The input cotangent of a VALID, unit-stride convolution from its output cotangent ``dy``: each output
    position's cotangent spread over its window, ``dx[b, y + i, x + j, c] = sum_o dy[b, y, x, o] k[i, j, c, o]``
    summed over the positions that cover the pixel."""
    kh, kw = kernel.shape[:2]
    spread = jnp.einsum("bhwo,ijco->ijbhwc", dy, kernel)
    return sum(jnp.pad(spread[i, j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
               for i in range(kh) for j in range(kw))


@jax.custom_vjp
def single_channel_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv2d` of a one-channel input, unit strides, VALID; its input gradient by `overlap_add_input_gradient`,
    its kernel gradient XLA's own."""
    return _convolution(x, kernel, (1, 1), "VALID")


def _single_channel_conv_forward(x, kernel):
    return _convolution(x, kernel, (1, 1), "VALID"), (x, kernel)


def _single_channel_conv_backward(residuals, dy):
    x, kernel = residuals
    _, kernel_pullback = jax.vjp(lambda k: _convolution(x, k, (1, 1), "VALID"), kernel)
    return overlap_add_input_gradient(dy, kernel), kernel_pullback(dy)[0]


single_channel_conv.defvjp(_single_channel_conv_forward, _single_channel_conv_backward)


class Conv(Layer):
    """2-D convolution over NHWC inputs, kernel (kh, kw, in, out)."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str = "VALID"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    connection_axes = {"kernel": -2}

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(2, (2, 2), strides=(2, 2), padding="SAME"), (2, 5, 5, 2), (-1.0, 1.0)),)

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        y = conv2d(x, kernel, self.strides, self.padding)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y

    def interval(self, bounds: Interval) -> Interval:
        params = self.variables["params"]
        kernel = params["kernel"]
        return linear(lambda c: conv2d(c, kernel, self.strides, self.padding),
                      lambda r: conv2d(r, jnp.abs(kernel), self.strides, self.padding),
                      params.get("bias"), bounds)


STRICTLY_INCREASING = frozenset({"leaky_relu", "sigmoid", "tanh", "softplus", "identity"})


class Activation(Layer):
    """Elementwise activation chosen by name (one of `ACTIVATIONS`)."""

    kind: str = "relu"

    @classmethod
    def conformance_examples(cls):
        return tuple(Example(cls(kind), (3, 7), (-3.0, 3.0)) for kind in ("relu", "mish", "tanh"))

    @property
    def preserves_order(self) -> bool:
        """Strictly increasing, so ``f(a) > f(b)`` iff ``a > b``: a certificate on its inputs' ordering
        is a certificate on its outputs' ordering."""
        return self.kind in STRICTLY_INCREASING

    def setup(self):
        if self.kind not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.kind!r}; choose one of {sorted(ACTIVATIONS)}")

    def __call__(self, x, *, train: bool = False, rho=None):
        return ACTIVATIONS[self.kind](x)

    def interval(self, bounds: Interval) -> Interval:
        fn = ACTIVATIONS[self.kind]
        if self.kind != "mish":
            return monotone(fn, bounds)
        # Mish decreases on (-inf, a] and increases on [a, inf): the minimum over [l, u] is mish(a) when
        # a lies inside, else the smaller endpoint value; the maximum is always at an endpoint.
        f_lower, f_upper = fn(bounds.lower), fn(bounds.upper)
        contains_min = (bounds.lower <= MISH_ARGMIN) & (MISH_ARGMIN <= bounds.upper)
        lower = jnp.where(contains_min, fn(jnp.asarray(MISH_ARGMIN)), jnp.minimum(f_lower, f_upper))
        return Interval(lower, jnp.maximum(f_lower, f_upper))


class Flatten(Layer):
    """Flattens every axis but the batch axis."""

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(), (2, 3, 3, 2)),)

    def __call__(self, x, *, train: bool = False, rho=None):
        return x.reshape(x.shape[0], -1)

    def interval(self, bounds: Interval) -> Interval:
        return Interval(self(bounds.lower), self(bounds.upper))


class _Pool(Layer):
    """Pooling over NHWC windows by ``reduce`` (a monotone map, so endpoints map to endpoints)."""

    window: tuple[int, int] = (2, 2)
    strides: tuple[int, int] | None = None
    reduce = None  # class attribute of each subclass: nn.max_pool or nn.avg_pool

    @classmethod
    def conformance_examples(cls):
        if cls.reduce is None:
            return ()
        return (Example(cls((3, 3), (2, 2)), (2, 7, 7, 2), (-1.0, 1.0)),)

    def __call__(self, x, *, train: bool = False, rho=None):
        return self.reduce(x, self.window, strides=self.strides or self.window)

    def interval(self, bounds: Interval) -> Interval:
        return monotone(self, bounds)


class MaxPool(_Pool):
    """Max pooling over NHWC windows (monotone in every input)."""

    reduce = staticmethod(nn.max_pool)


class AvgPool(_Pool):
    """Average pooling over NHWC windows (a non-negative linear map, hence monotone)."""

    reduce = staticmethod(nn.avg_pool)


class Dropout(Layer):
    """Inverted dropout; the identity at inference (and so is its interval rule)."""

    rate: float = 0.5

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(0.3), (3, 6)),)

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        return nn.Dropout(self.rate, deterministic=not train)(x)

    def interval(self, bounds: Interval) -> Interval:
        return bounds


class BatchNorm(Layer):
    """Batch normalisation over the last axis (Ioffe & Szegedy 2015).

    Training normalises with batch statistics and updates the running averages in the ``batch_stats``
    collection; inference uses the running averages, an affine map per channel
    ``y = a x + c`` with ``a = scale / sqrt(var + eps)`` and ``c = bias - a mean``.
    """

    momentum: float = 0.99
    epsilon: float = 1e-5

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(), (4, 5), (-1.0, 1.0)),)

    @nn.compact
    def __call__(self, x, *, train: bool = False, rho=None):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if train:
            axes = tuple(range(x.ndim - 1))
            batch_mean, batch_var = jnp.mean(x, axes), jnp.var(x, axes)
            if not self.is_initializing():
                mean.value = self.momentum * mean.value + (1 - self.momentum) * batch_mean
                var.value = self.momentum * var.value + (1 - self.momentum) * batch_var
        else:
            batch_mean, batch_var = mean.value, var.value
        return (x - batch_mean) * (scale / jnp.sqrt(batch_var + self.epsilon)) + bias

    def interval(self, bounds: Interval) -> Interval:
        params, stats = self.variables["params"], self.variables["batch_stats"]
        slope = params["scale"] / jnp.sqrt(stats["var"] + self.epsilon)
        offset = params["bias"] - slope * stats["mean"]
        return linear(lambda c: c * slope, lambda r: r * jnp.abs(slope), offset, bounds)


class Concat(Layer):
    """Runs several branches on the same input and concatenates their outputs on the last axis.

    A branch is a sequence of layers; an empty sequence is the identity (a skip connection).  The AND/OR
    network of Fontana's code feeds the outputs of two consecutive dense layers together into the last one:
    ``Concat(((), (Dense(84), Activation(...))))`` after the first.  The branches' layers are children
    (`andor_jax.layers.base`): ``branches_{b}_{j}`` is layer ``j`` of branch ``b``, and every walk reaches
    them; ``train`` and ``rho`` reach them too.
    """

    branches: Sequence[Sequence[nn.Module]]

    @classmethod
    def conformance_examples(cls):
        return (Example(cls(((), (Dense(4), Dropout(0.2), Activation("tanh")))), (3, 5), (-1.0, 1.0)),)

    @property
    def children(self):
        return tuple(tuple((f"branches_{b}_{j}", layer) for j, layer in enumerate(branch))
                     for b, branch in enumerate(self.branches))

    def __call__(self, x, *, train: bool = False, rho=None):
        return concatenate([apply_chain(chain, x, train=train, rho=rho) for chain in self.children])

    def interval(self, bounds: Interval) -> Interval:
        return concatenate([chain_interval(chain, bounds) for chain in self.children])
