"""The layer-sequence container and the architectures built from it.

A network is a `Sequential` of layers (see `andor_jax.layers`).  Everything the library does walks that
sequence: the forward pass, the extended dataset (every layer's output), scrambled propagation and interval
bound propagation.  An architecture is a function returning a tuple of layers, registered by name so that a
config can ask for it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import ml_collections

from andor_jax.layers import Activation, Conv, Dense, Flatten, MaxPool


def call_layer(layer: nn.Module, x: jax.Array, *, train: bool = False, rho=None) -> jax.Array:
    """Applies one layer, passing the pseudo-gradient mixing ``rho`` only to layers that have one
    (class attribute ``has_pseudo_gradient = True``, e.g. MWD units)."""
    if getattr(layer, "has_pseudo_gradient", False):
        return layer(x, train=train, rho=rho)
    return layer(x, train=train)


class Sequential(nn.Module):
    """Applies ``layers`` in turn.  Parameters live under ``layers_0``, ``layers_1``, ...

    ``rho`` mixes pseudo-gradients into the backward pass of layers that define them: 1 is the pure
    pseudo-gradient, 0 (or None) the true derivative.  It is a traced value, so a schedule that changes it
    during training compiles once.  The forward values never depend on it.
    """

    layers: Sequence[nn.Module]

    def __call__(self, x, *, train: bool = False, rho=None):
        for layer in self.layers:
            x = call_layer(layer, x, train=train, rho=rho)
        return x

    def outputs(self, x, *, train: bool = False, rho=None) -> list[jax.Array]:
        """Every layer's output for the batch ``x`` (Fontana's extended dataset, EDS), input first."""
        outputs = [x]
        for layer in self.layers:
            outputs.append(call_layer(layer, outputs[-1], train=train, rho=rho))
        return outputs


def project(model: Sequential, params: dict) -> dict:
    """Applies every layer's constraint projection (``layer.project(layer_params) -> layer_params``, e.g.
    MWD clipping or AND/OR L1 normalisation) to ``params``."""
    projected = dict(params)
    for index, layer in enumerate(model.layers):
        name = f"layers_{index}"
        if hasattr(layer, "project") and name in params:
            projected[name] = layer.project(params[name])
    return projected


def mlp(hidden: Sequence[int] = (512, 512, 512), num_classes: int = 10, activation: str = "relu",
        output_activation: str | None = None) -> tuple:
    """Fully connected baseline: flatten, then ``Dense -> activation`` per hidden width, then the logits
    (passed through ``output_activation`` when one is named, e.g. sigmoid outputs for a squared loss)."""
    layers: list[nn.Module] = [Flatten()]
    for width in hidden:
        layers += [Dense(width), Activation(activation)]
    layers.append(Dense(num_classes))
    if output_activation:
        layers.append(Activation(output_activation))
    return tuple(layers)


def small_cnn(channels: Sequence[int] = (16, 32), dense: int = 128, num_classes: int = 10,
              activation: str = "relu") -> tuple:
    """Small convolutional baseline: ``(conv 3x3 -> activation -> max-pool 2) * len(channels)``, a dense
    hidden layer and the logits.  Expects NHWC inputs (keep the data unflattened)."""
    layers: list[nn.Module] = []
    for width in channels:
        layers += [Conv(width, (3, 3), padding="SAME"), Activation(activation), MaxPool((2, 2))]
    return (*layers, Flatten(), Dense(dense), Activation(activation), Dense(num_classes))


ARCHITECTURES: dict[str, Callable[..., tuple]] = {
    "mlp": mlp,
    "cnn": small_cnn,
}


def register(name: str, builder: Callable[..., tuple]) -> None:
    """Makes ``builder(**kwargs) -> tuple of layers`` available to configs as ``model.name = name``."""
    ARCHITECTURES[name] = builder


def build_model(config: ml_collections.ConfigDict) -> Sequential:
    """The `Sequential` described by a config's ``model`` block: ``name`` plus the builder's keyword
    arguments (e.g. ``hidden``, ``activation``)."""
    _import_architecture_families()
    kwargs = {k: v for k, v in config.to_dict().items() if k != "name"}
    if config.name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.name!r}; known: {sorted(ARCHITECTURES)}")
    try:
        layers = ARCHITECTURES[config.name](**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for architecture {config.name!r}: {err}") from err
    return Sequential(tuple(layers))


def _import_architecture_families() -> None:
    """Imports the modules that register further architectures, objectives and gradient transforms
    (MWD, AND/OR)."""
    import importlib

    for module in ("andor_jax.layers.mwd", "andor_jax.layers.andor", "andor_jax.andor_training"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
