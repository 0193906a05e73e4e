"""Extended and scrambled datasets, hyper-saturation, participation factor and loss2: Fontana, "AND/OR
trade-off in artificial neurons: impact on adversarial robustness" (arXiv 2102.07389, sec. 3-5).

Every function here walks the layers of any `andor_jax.models.Sequential` (AND/OR, MWD, the baselines).

* **EDS** (extended dataset): every layer's real outputs for a batch, input first (`extended_dataset`).
* **SDS** (scrambled dataset) of a layer's values ``v`` (batch, *neurons): each neuron's value is drawn
  from an independent uniformly random example of the batch (`scramble`), so every neuron keeps its
  marginal distribution and the correlations between neurons are broken.  *Type A* scrambles the input
  only and propagates it through the network (`sds_type_a`); *type B*, at every layer, scrambles the real
  inputs of that layer (the previous layer's EDS) and passes them through this layer only (`sds_type_b`).
  Several independent scrambles are drawn at once (vmapped over keys): a leading scramble axis.
* A **neuron layer** is a layer with connection weights (`CONNECTION_AXES`); its outputs are its neurons'
  nics (AND/OR layers), pre-activations (`Dense`, `Conv`) or unit values (MWD).  A neuron of a
  convolution is an output channel, and its statistics pool the batch and the spatial positions.
* **hypersat** (eq. 5): ``hypersat_i = E[K(nics_i) | EDS] - E[K(nics_i) | SDS]`` with
  ``K(x) = |tanh(4 (x - 0.5))|`` (`saturation`): large when the neuron's inputs co-occur more than by chance.
* **participation factor**: with ``L = mean |f(x)|`` over the batch and the network's outputs, the sum of
  ``|dL / dw|`` over the neuron's outgoing connections ``w`` (`participation`).
* **loss2** (eq. 6): ``1 - sum_i hypersat_i partf_i / N`` over the ``N`` neurons that have outgoing
  connections (`loss2`); the participation factors are weights, not differentiated.

Scrambled values never carry a gradient (`jax.lax.stop_gradient`).  For type B the statistics of a layer
are also computed from its real inputs with the gradient stopped, so each layer's term of loss2 is a
function of that layer's parameters only: the local training signal of the paper (sec. 3).
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from andor_jax.models import Sequential, call_layer

PyTree = dict
SCRAMBLE_KINDS = ("A", "B")
SCRAMBLE_UNITS = ("element", "location", "channel")
# Connection weights by parameter name, and the axis of each that runs over the layer's inputs:
# Dense (in, out) and Conv (kh, kw, in, out) kernels (AND/OR layers too); MWD's centres and scales (out, in).
CONNECTION_AXES = {"kernel": -2, "u": -1, "w": -1}


# ---------------------------------------------------------------------------------------------------------
# EDS and SDS


def extended_dataset(model: Sequential, variables: PyTree, x: jax.Array, *, rho=None) -> list[jax.Array]:
    """EDS: every layer's outputs for the batch ``x``, input first (`Sequential.outputs`)."""
    return model.apply(variables, x, rho=rho, method="outputs")


def apply_layer(model: Sequential, variables: PyTree, index: int, x: jax.Array, *, rho=None) -> jax.Array:
    """Layer ``index`` of ``model`` alone applied to ``x`` (as `Sequential` calls it)."""
    return model.apply(variables, x, method=lambda module, x: call_layer(module.layers[index], x, rho=rho))


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


def sds_type_a(model: Sequential, variables: PyTree, x: jax.Array, keys: jax.Array, *, size: int | None = None,
               unit: str = "element", rho=None) -> list[jax.Array]:
    """Type A SDS: the input scrambled (once per key) and propagated through the whole network.  Aligned
    with `extended_dataset`, each entry with a leading scramble axis: (len(keys), size, ...)."""
    return jax.vmap(lambda key: extended_dataset(
        model, variables, scramble(key, x, size=size, unit=unit), rho=rho))(keys)


def sds_layer(model: Sequential, variables: PyTree, index: int, inputs: jax.Array, keys: jax.Array, *,
              size: int | None = None, unit: str = "element", rho=None) -> jax.Array:
    """Type B SDS of layer ``index``: the layer applied to scrambles of its real ``inputs`` (EDS entry
    ``index``), one per key: (len(keys), size, ...)."""
    scrambled = scramble_many(keys, inputs, size=size, unit=unit)
    outputs = apply_layer(model, variables, index, scrambled.reshape(-1, *scrambled.shape[2:]), rho=rho)
    return outputs.reshape(*scrambled.shape[:2], *outputs.shape[1:])


def sds_type_b(model: Sequential, variables: PyTree, eds: Sequence[jax.Array], keys: jax.Array, *,
               size: int | None = None, unit: str = "element", rho=None) -> list[jax.Array]:
    """Type B SDS of every layer, aligned with ``eds``: entry 0 is the scrambled input, entry ``i + 1``
    layer ``i`` applied to the scrambled EDS entry ``i``; each (len(keys), size, ...)."""
    options = {"size": size, "unit": unit}
    return [scramble_many(keys, eds[0], **options),
            *(sds_layer(model, variables, index, eds[index], keys, rho=rho, **options)
              for index in range(len(model.layers)))]


# ---------------------------------------------------------------------------------------------------------
# Neuron layers and their nics under EDS and SDS


def connection_params(layer_params: PyTree) -> dict[str, jax.Array]:
    """The connection weights among a layer's parameters (`CONNECTION_AXES`)."""
    return {name: value for name, value in layer_params.items() if name in CONNECTION_AXES}


def neuron_layers(model: Sequential, params: PyTree) -> dict[int, int | None]:
    """Every neuron layer (one with connection weights) mapped to the layer its outputs connect to: the
    next layer with parameters, or None for the last neuron layer (whose outputs are the network's).

    Raises ValueError when that next layer has parameters but no connection weights (e.g. `BatchNorm`
    or a `Concat` of nested layers): outgoing connections, and so participation factors, are undefined.
    """
    with_params = [i for i in range(len(model.layers)) if params.get(f"layers_{i}")]
    result = {}
    for position, index in enumerate(with_params):
        if not connection_params(params[f"layers_{index}"]):
            continue
        consumer = with_params[position + 1] if position + 1 < len(with_params) else None
        if consumer is not None and not connection_params(params[f"layers_{consumer}"]):
            raise ValueError(
                f"layer {index} ({type(model.layers[index]).__name__}) feeds layer {consumer} "
                f"({type(model.layers[consumer]).__name__}), which has parameters but no connection weights "
                f"({sorted(CONNECTION_AXES)}): its neurons' outgoing connections are undefined")
        result[index] = consumer
    return result


def layer_nics(model: Sequential, variables: PyTree, eds: Sequence[jax.Array], keys: jax.Array,
               layers: Sequence[int], *, kind: str = "B", size: int | None = None, unit: str = "element",
               rho=None) -> dict[int, tuple[jax.Array, jax.Array]]:
    """For each layer index in ``layers``: ``(real, scrambled)`` outputs, (batch, ...) under EDS and
    (len(keys), size, ...) under SDS of ``kind``, differentiable with respect to ``variables``.

    Type B recomputes each layer on its real inputs ``eds[i]`` (gradient stopped) and on their scrambles;
    type A recomputes the whole EDS from ``eds[0]`` and the type A SDS.
    """
    if kind not in SCRAMBLE_KINDS:
        raise ValueError(f"unknown scramble kind {kind!r}; choose one of {SCRAMBLE_KINDS}")
    options = {"size": size, "unit": unit}
    if kind == "A":
        real = extended_dataset(model, variables, eds[0], rho=rho)
        scrambled = sds_type_a(model, variables, eds[0], keys, rho=rho, **options)
        return {i: (real[i + 1], scrambled[i + 1]) for i in layers}
    inputs = {i: jax.lax.stop_gradient(eds[i]) for i in layers}
    return {i: (apply_layer(model, variables, i, inputs[i], rho=rho),
                sds_layer(model, variables, i, inputs[i], keys, rho=rho, **options)) for i in layers}


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


def participation_from_grads(model: Sequential, output_grads: PyTree, channels: dict[int, int],
                             consumers: dict[int, int | None]) -> dict[int, jax.Array]:
    """Participation factors from ``output_grads`` = d mean|f(x)| / d params.

    For neuron ``c`` of layer ``i`` (``channels[i]`` neurons) with consumer layer ``j``, the outgoing
    connections are the entries of ``j``'s connection weights whose input index ``k`` is fed by ``c``:

        partf_c = sum_{k fed by c} sum_{other axes} |dL / dW_j[..., k, ...]|.

    ``k`` runs over ``j``'s inputs: the channels of ``i`` themselves, or, after a flatten of NHWC maps,
    (h, w, c) with the channel fastest, so ``k`` is fed by ``c = k mod channels[i]`` (pooling and
    elementwise layers in between keep channels).  Layers without a consumer are left out.
    """
    result = {}
    for index, consumer in consumers.items():
        if consumer is None:
            continue
        per_input = sum(sum_except(jnp.abs(grad), CONNECTION_AXES[name])
                        for name, grad in connection_params(output_grads[f"layers_{consumer}"]).items())
        if per_input.shape[0] % channels[index]:
            raise ValueError(
                f"layer {consumer} ({type(model.layers[consumer]).__name__}) has {per_input.shape[0]} inputs, "
                f"not a multiple of the {channels[index]} neurons of layer {index} that feed it")
        result[index] = per_input.reshape(-1, channels[index]).sum(axis=0)
    return result


def output_magnitude(outputs: jax.Array) -> jax.Array:
    """``mean |f(x)|`` over the batch and the outputs: the loss whose gradients define participation."""
    return jnp.mean(jnp.abs(outputs))


def participation(model: Sequential, variables: PyTree, x: jax.Array, *, rho=None) -> dict[int, jax.Array]:
    """Participation factor of every neuron of every neuron layer that has a consumer (a constant: the
    result carries no gradient)."""
    params = variables["params"]
    consumers = neuron_layers(model, params)

    def magnitude(p):
        eds = extended_dataset(model, {**variables, "params": p}, x, rho=rho)
        return output_magnitude(eds[-1]), eds

    grads, eds = jax.grad(magnitude, has_aux=True)(params)
    channels = {i: eds[i + 1].shape[-1] for i in consumers}
    return jax.lax.stop_gradient(participation_from_grads(model, grads, channels, consumers))


def loss2(hypersats: dict[int, jax.Array], partfs: dict[int, jax.Array]) -> jax.Array:
    """Eq. 6: ``1 - sum_i hypersat_i partf_i / N`` over the neurons of the layers in ``partfs`` (those
    with outgoing connections); ``partfs`` enter as constants."""
    if not partfs:
        raise ValueError("loss2 needs at least one neuron layer with outgoing connections")
    total = sum(jnp.sum(hypersats[i] * jax.lax.stop_gradient(partfs[i])) for i in partfs)
    return 1.0 - total / sum(p.size for p in partfs.values())
