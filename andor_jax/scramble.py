"""Extended and scrambled datasets, hyper-saturation, participation factor and loss2: Fontana, "AND/OR
trade-off in artificial neurons: impact on adversarial robustness" (arXiv 2102.07389, sec. 3-5).

Every function here walks the tree of layers of any model (`andor_jax.layers.base.walk`: AND/OR, MWD, the
baselines, layers nested in a `Concat`), and names layers by their paths.

* **EDS** (extended dataset): every layer's real inputs and outputs for a batch, keyed by path, ``()`` the
  whole network (`extended_dataset`, a `andor_jax.layers.base.Trace`).
* **SDS** (scrambled dataset) of a layer's values ``v`` (batch, *neurons): each neuron's value is drawn
  from an independent uniformly random example of the batch (`scramble`), so every neuron keeps its
  marginal distribution and the correlations between neurons are broken.  *Type A* scrambles the input
  only and propagates it through the network (`sds_type_a`); *type B*, at every layer, scrambles the real
  inputs of that layer (its EDS inputs) and passes them through this layer only (`sds_type_b`).
  Several independent scrambles are drawn at once (vmapped over keys): a leading scramble axis.
* A **neuron layer** is a layer with connection weights (`Layer.connection_axes`); its outputs are its
  neurons' nics (AND/OR layers), pre-activations (`Dense`, `Conv`) or unit values (MWD).  A neuron of a
  convolution is an output channel, and its statistics pool the batch and the spatial positions.  Its
  *consumers* are the neuron layers its outputs reach through parameter-free layers and composites
  (`connections`): with a skip connection, several.
* **hypersat** (eq. 5): ``hypersat_i = E[K(nics_i) | EDS] - E[K(nics_i) | SDS]`` with
  ``K(x) = |tanh(4 (x - 0.5))|`` (`saturation`): large when the neuron's inputs co-occur more than by chance.
* **participation factor**: with ``L = mean |f(x)|`` over the batch and the network's outputs, the sum of
  ``|dL / dw|`` over the neuron's outgoing connections ``w``, into every consumer (`participation`).
* **loss2** (eq. 6): ``1 - sum_i hypersat_i partf_i / N`` over the ``N`` neurons that have outgoing
  connections (`loss2`); the participation factors are weights, not differentiated.

Scrambled values never carry a gradient (`jax.lax.stop_gradient`).  For type B the statistics of a layer
are also computed from its real inputs with the gradient stopped, so each layer's term of loss2 is a
function of that layer's parameters only: the local training signal of the paper (sec. 3).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from andor_jax.layers.base import Path, Trace, chains, format_path, get_path, layer_at, leaves, trace

PyTree = dict
SCRAMBLE_KINDS = ("A", "B")
SCRAMBLE_UNITS = ("element", "location", "channel")


# ---------------------------------------------------------------------------------------------------------
# EDS and SDS


def extended_dataset(model: nn.Module, variables: PyTree, x: jax.Array, *, rho=None) -> Trace:
    """EDS: every layer's inputs and outputs for the batch ``x``, keyed by path (``()``: the network)."""
    return model.apply(variables, x, method=lambda module, x: trace(module, "__call__", x, rho=rho))


def apply_layer(model: nn.Module, variables: PyTree, path: Path, x: jax.Array, *, rho=None) -> jax.Array:
    """The layer at ``path`` of ``model`` alone applied to ``x`` (as its composite calls it)."""
    return model.apply(variables, x, method=lambda module, x: layer_at(module, path)(x, rho=rho))


def bit_generator_key(key: jax.Array) -> jax.Array:
    """A key of JAX's ``"rbg"`` implementation (XLA's RngBitGenerator) seeded from ``key``.  Scrambles
    draw their many random bits with it: the default threefry, evaluated over large shapes, takes
    seconds of XLA compilation per call site on a CPU, the bit generator a fraction of one, at the same
    run time."""
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def random_indices(key: jax.Array, shape: tuple[int, ...], n: int) -> jax.Array:
    """Independent uniform draws from ``{0, ..., n - 1}`` (``n < 2^16``), as ``floor(r n / 2^32)`` of 32
    random bits ``r`` from `bit_generator_key` (Lemire's multiply-high; each value has probability
    ``1/n`` within ``n / 2^32``).  Half the random bits of `jax.random.randint`, which draws two words per
    value: the random numbers are most of the run time of scrambling convolution maps on a CPU.

    The product is formed exactly in 32 bits: with ``r = h 2^16 + l``, ``floor(r n / 2^32) =
    floor((h n + floor(l n / 2^16)) / 2^16)``, and ``h n + l n / 2^16 < 2^32`` for ``n < 2^16``.
    """
    if not 0 < n < 2**16:
        raise ValueError(f"random_indices draws from 1 to 65535 values, not {n}")
    bits = jax.random.bits(bit_generator_key(key), shape, jnp.uint32)
    n = jnp.uint32(n)
    high, low = bits >> 16, bits & jnp.uint32(0xFFFF)
    return ((high * n + ((low * n) >> 16)) >> 16).astype(jnp.int32)


def scramble(key: jax.Array, values: jax.Array, *, size: int | None = None, unit: str = "element") -> jax.Array:
    """One scrambled dataset of ``size`` examples (default: the batch size) from ``values`` (batch, ...):

        SDS[e, n] = values[r(e, n), n]     with r(e, n) uniform on the batch, independent for each (e, n).

    The scrambling unit ``n`` (the same for dense values (batch, features): a feature):

    * ``"element"``: every entry of ``values.shape[1:]``, the paper's neurons (for NHWC maps, (h, w, c));
    * ``"location"``: a spatial position (h, w) of NHWC maps, its channel vector copied from one example;
    * ``"channel"``: a channel of NHWC maps, its whole spatial map copied from one example.

    The result carries no gradient.
    """
    if unit not in SCRAMBLE_UNITS:
        raise ValueError(f"unknown scrambling unit {unit!r}; choose one of {SCRAMBLE_UNITS}")
    batch, neurons = values.shape[0], values.shape[1:]
    size = batch if size is None else size
    index_shape = neurons
    if unit == "location" and values.ndim > 2:
        index_shape = (*neurons[:-1], 1)
    elif unit == "channel" and values.ndim > 2:
        index_shape = (1,) * (values.ndim - 2) + neurons[-1:]
    index = random_indices(key, (size, *index_shape), batch)
    return jax.lax.stop_gradient(jnp.take_along_axis(values, jnp.broadcast_to(index, (size, *neurons)), axis=0))


def scramble_many(keys: jax.Array, values: jax.Array, *, size: int | None = None,
                  unit: str = "element") -> jax.Array:
    """Independent scrambles of ``values``, one per key: shape (len(keys), size, ...)."""
    return jax.vmap(lambda key: scramble(key, values, size=size, unit=unit))(keys)


def sds_type_a(model: nn.Module, variables: PyTree, x: jax.Array, keys: jax.Array, *, size: int | None = None,
               unit: str = "element", rho=None) -> Trace:
    """Type A SDS: the input scrambled (once per key) and propagated through the whole network.  Keyed
    like `extended_dataset`, each entry with a leading scramble axis: (len(keys), size, ...)."""
    return jax.vmap(lambda key: extended_dataset(
        model, variables, scramble(key, x, size=size, unit=unit), rho=rho))(keys)


def sds_layer(model: nn.Module, variables: PyTree, path: Path, inputs: jax.Array, keys: jax.Array, *,
              size: int | None = None, unit: str = "element", rho=None) -> jax.Array:
    """Type B SDS of the layer at ``path``: the layer applied to scrambles of its real ``inputs`` (its EDS
    inputs), one per key: (len(keys), size, ...)."""
    scrambled = scramble_many(keys, inputs, size=size, unit=unit)
    outputs = apply_layer(model, variables, path, scrambled.reshape(-1, *scrambled.shape[2:]), rho=rho)
    return outputs.reshape(*scrambled.shape[:2], *outputs.shape[1:])


def sds_type_b(model: nn.Module, variables: PyTree, eds: Trace, keys: jax.Array, *,
               size: int | None = None, unit: str = "element", rho=None) -> dict[Path, jax.Array]:
    """Type B SDS of every leaf layer (composites are their leaves), keyed by path: each the layer applied
    to scrambles of its real inputs, (len(keys), size, ...)."""
    return {path: sds_layer(model, variables, path, eds.inputs[path], keys, size=size, unit=unit, rho=rho)
            for path, _, _ in leaves(model)}


# ---------------------------------------------------------------------------------------------------------
# Neuron layers, the layers they feed, and their nics under EDS and SDS

# The last axis of a layer's input, as blocks side by side; a block is ``repeat`` copies of its segments
# ``(producer, channels)`` side by side: input feature k of a block comes from channel
# ``k mod sum(channels)`` of its segments (a flatten of NHWC maps puts the channel fastest).  The producer
# is the path of the neuron layer whose outputs these are, or None (the network input, other layers).
Segment = tuple[Path | None, int]
Layout = tuple[tuple[int, tuple[Segment, ...]], ...]


class Connections(NamedTuple):
    """How the neuron layers of a network connect (`connections`).

    Attributes:
      channels: neurons of every neuron layer, by path.
      consumers: every neuron layer -> the neuron layers its outputs feed (empty: the network's outputs).
      layouts: every neuron layer -> the `Layout` of its input axis (which producer feeds which input).
    """

    channels: dict[Path, int]
    consumers: dict[Path, tuple[Path, ...]]
    layouts: dict[Path, Layout]


def connection_params(layer: nn.Module, layer_params: PyTree) -> dict[str, jax.Array]:
    """The connection weights among a layer's parameters (`Layer.connection_axes`)."""
    axes = getattr(layer, "connection_axes", {})
    return {name: value for name, value in layer_params.items() if name in axes}


def connections(model: nn.Module, variables: PyTree, x: jax.Array) -> Connections:
    """The neuron layers of ``model`` and what they feed, followed through parameter-free layers (which
    keep channels, or flatten NHWC maps) and composites (each chain from the composite's input; the chains'
    outputs side by side).  Shapes come from an abstract trace of ``x``: nothing is computed.

    Raises ValueError when a neuron layer feeds a layer with parameters but no connection weights (e.g.
    `BatchNorm`), or a parameter-free layer that is neither: outgoing connections are then undefined.
    """
    params = variables["params"]
    shapes = jax.eval_shape(lambda v, x: extended_dataset(model, v, x), variables, x)
    channels, layouts = {}, {}

    def fresh(producer: Path | None, width: int) -> Layout:
        return ((1, ((producer, width),)),)

    def fed_by_neurons(layout: Layout) -> bool:
        return any(producer is not None for _, segments in layout for producer, _ in segments)

    def through(path: Path, layer: nn.Module, layer_params: PyTree, layout: Layout) -> Layout:
        if chains(layer):
            out = ()
            for chain in chains(layer):
                chain_layout = layout
                for name, child in chain:
                    chain_layout = through((*path, name), child, layer_params.get(name, {}), chain_layout)
                out += chain_layout
            return out
        before, after = shapes.inputs[path].shape, shapes.outputs[path].shape
        if connection_params(layer, layer_params):
            channels[path], layouts[path] = after[-1], layout
            return fresh(path, after[-1])
        described = f"{format_path(path)} ({type(layer).__name__})"
        if layer_params and fed_by_neurons(layout):
            raise ValueError(f"layer {described} has parameters but no connection weights and is fed by neuron "
                             f"layers: their outgoing connections are undefined")
        if before[-1] == after[-1]:
            return layout
        if len(after) == 2 and len(before) > 2 and after[-1] == math.prod(before[1:]) and len(layout) == 1:
            (repeat, segments), = layout
            return ((repeat * math.prod(before[1:-1]), segments),)
        if fed_by_neurons(layout):
            raise ValueError(f"layer {described} maps {before} to {after}: the channels of the neuron layers "
                             f"feeding it cannot be followed through it")
        return fresh(None, after[-1])

    through((), model, params, fresh(None, shapes.inputs[()].shape[-1]))
    consumers = {producer: tuple(consumer for consumer, layout in layouts.items()
                                 if any(p == producer for _, segments in layout for p, _ in segments))
                 for producer in channels}
    return Connections(channels, consumers, layouts)


def neuron_layers(model: nn.Module, variables: PyTree, x: jax.Array) -> dict[Path, tuple[Path, ...]]:
    """Every neuron layer mapped to the neuron layers its outputs feed (`connections`)."""
    return connections(model, variables, x).consumers


def layer_nics(model: nn.Module, variables: PyTree, eds: Trace, keys: jax.Array, layers: Sequence[Path], *,
               kind: str = "B", size: int | None = None, unit: str = "element",
               rho=None) -> dict[Path, tuple[jax.Array, jax.Array]]:
    """For each layer path in ``layers``: ``(real, scrambled)`` outputs, (batch, ...) under EDS and
    (len(keys), size, ...) under SDS of ``kind``, differentiable with respect to ``variables``.

    Type B recomputes each layer on its real inputs ``eds.inputs[path]`` (gradient stopped) and on their
    scrambles; type A recomputes the whole EDS from the network input and the type A SDS.
    """
    if kind not in SCRAMBLE_KINDS:
        raise ValueError(f"unknown scramble kind {kind!r}; choose one of {SCRAMBLE_KINDS}")
    options = {"size": size, "unit": unit}
    if kind == "A":
        real = extended_dataset(model, variables, eds.inputs[()], rho=rho).outputs
        scrambled = sds_type_a(model, variables, eds.inputs[()], keys, rho=rho, **options).outputs
        return {p: (real[p], scrambled[p]) for p in layers}
    inputs = {p: jax.lax.stop_gradient(eds.inputs[p]) for p in layers}
    return {p: (apply_layer(model, variables, p, inputs[p], rho=rho),
                sds_layer(model, variables, p, inputs[p], keys, rho=rho, **options)) for p in layers}


# ---------------------------------------------------------------------------------------------------------
# Statistics


def saturation(nics: jax.Array) -> jax.Array:
    """``K(x) = |tanh(4 (x - 0.5))|``: the paper's stand-in for the bimodal EDS distribution of nics."""
    return jnp.abs(jnp.tanh(4.0 * (nics - 0.5)))


def neuron_mean(values: jax.Array) -> jax.Array:
    """Mean per neuron (last axis) over every other axis (scrambles, examples, spatial positions)."""
    return jnp.mean(values.reshape(-1, values.shape[-1]), axis=0)


def hypersat(real: jax.Array, scrambled: jax.Array,
             kernel: Callable[[jax.Array], jax.Array] = saturation) -> jax.Array:
    """Eq. 5 per neuron: ``E[K(nics) | EDS] - E[K(nics) | SDS]``."""
    return neuron_mean(kernel(real)) - neuron_mean(kernel(scrambled))


def sum_except(values: jax.Array, axis: int) -> jax.Array:
    """Sum over every axis of ``values`` but ``axis``."""
    keep = axis % values.ndim
    return jnp.sum(values, axis=tuple(a for a in range(values.ndim) if a != keep))


def participation_from_grads(model: nn.Module, output_grads: PyTree, links: Connections) -> dict[Path, jax.Array]:
    """Participation factors from ``output_grads`` = d mean|f(x)| / d params.

    For neuron ``c`` of layer ``i``, the outgoing connections are, in every consumer ``j`` of ``i``, the
    entries of ``j``'s connection weights whose input index ``k`` is fed by ``c``:

        partf_c = sum_j sum_{k fed by c} sum_{other axes} |dL / dW_j[..., k, ...]|.

    Which ``k`` are fed by ``c`` is ``j``'s input `Layout` (`connections`): its own channels, after a
    flatten of NHWC maps (h, w, c) with the channel fastest, and beside other layers' after a `Concat`.
    Layers without a consumer are left out.
    """
    result = {}
    for consumer, layout in links.layouts.items():
        layer = layer_at(model, consumer)
        grads = connection_params(layer, get_path(output_grads, consumer))
        per_input = sum(sum_except(jnp.abs(g), layer.connection_axes[name]) for name, g in grads.items())
        offset = 0
        for repeat, segments in layout:
            width = sum(c for _, c in segments)
            block = per_input[offset:offset + repeat * width].reshape(repeat, width).sum(axis=0)
            offset += repeat * width
            start = 0
            for producer, count in segments:
                if producer is not None:
                    result[producer] = result.get(producer, 0.0) + block[start:start + count]
                start += count
        if offset != per_input.shape[0]:
            raise ValueError(f"layer {format_path(consumer)} has {per_input.shape[0]} inputs, but the layers "
                             f"feeding it give {offset}")
    return result


def output_magnitude(outputs: jax.Array) -> jax.Array:
    """``mean |f(x)|`` over the batch and the outputs: the loss whose gradients define participation."""
    return jnp.mean(jnp.abs(outputs))


def participation(model: nn.Module, variables: PyTree, x: jax.Array, *, rho=None) -> dict[Path, jax.Array]:
    """Participation factor of every neuron of every neuron layer that has a consumer (a constant: the
    result carries no gradient)."""
    params = variables["params"]

    def magnitude(p):
        return output_magnitude(model.apply({**variables, "params": p}, x, rho=rho))

    grads = jax.grad(magnitude)(params)
    return jax.lax.stop_gradient(participation_from_grads(model, grads, connections(model, variables, x)))


def loss2(hypersats: dict[Path, jax.Array], partfs: dict[Path, jax.Array]) -> jax.Array:
    """Eq. 6: ``1 - sum_i hypersat_i partf_i / N`` over the neurons of the layers in ``partfs`` (those
    with outgoing connections); ``partfs`` enter as constants."""
    if not partfs:
        raise ValueError("loss2 needs at least one neuron layer with outgoing connections")
    total = sum(jnp.sum(hypersats[i] * jax.lax.stop_gradient(partfs[i])) for i in partfs)
    return 1.0 - total / sum(p.size for p in partfs.values())
