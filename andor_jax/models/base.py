"""The model protocol, the `Sequential` container, projection, and finding architectures by name.

A *model* is any Flax module that declares, as class attributes or properties (defaults in `Model`):

* ``randomised: bool``: its forward pass draws from the ``"sample"`` RNG stream, so inference needs a
  PRNG key (default False);
* ``gradient_modes: tuple[str, ...]``: the surfaces an attack may differentiate: ``"true"`` always,
  ``"psd"`` when some layer has a pseudo-gradient, others a model defines (e.g. a BPDA surrogate)
  (default ``("true",)``);
* ``submodels: tuple[str, ...]``: names of sub-networks whose parameters sit under ``params[name]``
  (default ``()``);
* ``attack_surface: str``: the gradient mode that an evaluation's untagged gradient attacks differentiate
  (`andor_jax.attacks.suites.through_surface`): ``"true"`` by default; CARSO's differentiable aggregation
  over a few draws, since the gradient of its vote is zero almost everywhere;

and may define ``logits(self, x, *, gradient=None)``: its real forward for ``gradient=None`` (what is
judged), the surface of a named gradient mode otherwise, with the same forward values (default: ``self(x)``).
A randomised model also defines ``monitor(self, x)``: cheap deterministic logits that the training engine
reports per epoch as ``test_monitor_accuracy`` (e.g. CARSO's decode at ``z = 0``), never as the model's
accuracy.  `logits`, `monitor_logits` and `representation` below are how the rest of the library calls a
model.

`Sequential` is the model of a chain of layers (`andor_jax.layers`), and itself a composite layer (it
may be nested).  An *architecture* is a module ``andor_jax/models/<name>.py`` with
``get_model(**kwargs) -> model``; `build_model` finds it by ``importlib`` from ``config.model.name``,
nothing registers itself on import.  An architecture module may also declare ``INFERENCE_SETTINGS``: the
keys of its config that change how a trained model infers but not what it trained (CARSO's number of draws
and aggregation).  They are no part of a checkpoint's fingerprint, and ``andor-jax evaluate`` sets them with
``--config.model.KEY=VALUE`` (`with_inference_settings`).
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from andor_jax.layers.base import (Example, Layer, Path, Trace, apply_chain, chain_interval, format_path, get_path,
                                   set_path, trace, walk)
from andor_jax.layers.standard import Activation, Concat, Dense

GRADIENT_RHO = {None: None, "true": 0.0, "psd": 1.0}  # a Sequential's gradient modes as pseudo-gradient mixes


class Model(nn.Module):
    """The declarations of the model protocol with their defaults (module docstring)."""

    randomised = False
    gradient_modes = ("true",)
    submodels = ()
    attack_surface = "true"

    def logits(self, x, *, gradient=None):
        return self(x)


class Sequential(Layer, Model):
    """Applies ``layers`` in turn.  Parameters live under ``layers_0``, ``layers_1``, ...

    ``rho`` mixes pseudo-gradients into the backward pass of layers that define them: 1 is the pure
    pseudo-gradient, 0 (or None) the true derivative.  It is a traced value, so a schedule that changes it
    during training compiles once.  The forward values never depend on it.  ``train`` and ``rho`` reach
    every layer, nested ones included.
    """

    layers: Sequence[nn.Module]

    @classmethod
    def conformance_examples(cls):
        return (Example(cls((Dense(3), Activation("tanh"), Concat(((), (Dense(2), Activation("relu")))), Dense(2))),
                        (3, 4), (-1.0, 1.0)),)

    @property
    def children(self):
        return (tuple((f"layers_{index}", layer) for index, layer in enumerate(self.layers)),)

    @property
    def gradient_modes(self) -> tuple[str, ...]:
        """``("true", "psd")`` when some layer has a pseudo-gradient (`Layer.has_pseudo_gradient`)."""
        psd = any(getattr(layer, "has_pseudo_gradient", False) for _, layer, _ in walk(self))
        return ("true", "psd") if psd else ("true",)

    def __call__(self, x, *, train: bool = False, rho=None):
        return apply_chain(self.children[0], x, train=train, rho=rho)

    def interval(self, bounds):
        return chain_interval(self.children[0], bounds)

    def outputs(self, x, *, train: bool = False, rho=None) -> Trace:
        """Every layer's input and output for the batch ``x``, keyed by path, nested layers included
        (Fontana's extended dataset, EDS); ``()`` is the whole network (`andor_jax.layers.base.trace`)."""
        return trace(self, "__call__", x, train=train, rho=rho)

    def logits(self, x, *, gradient=None):
        """The forward pass; gradient mode ``"true"`` is rho 0, ``"psd"`` rho 1 (same values)."""
        return self(x, rho=GRADIENT_RHO[gradient])


# ---------------------------------------------------------------------------------------------------------
# The protocol as functions of any model


def randomised(model: nn.Module) -> bool:
    return bool(getattr(model, "randomised", Model.randomised))


def gradient_modes(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "gradient_modes", Model.gradient_modes))


def submodels(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "submodels", Model.submodels))


def attack_surface(model: nn.Module) -> str:
    return str(getattr(model, "attack_surface", Model.attack_surface))


def check_gradient_mode(model: nn.Module, gradient: str | None) -> None:
    """ValueError unless ``gradient`` is None or one of the model's gradient modes."""
    modes = gradient_modes(model)
    if gradient is not None and gradient not in modes:
        raise ValueError(f"{type(model).__name__} has no gradient mode {gradient!r}; its modes are {list(modes)}")


def logits(model: nn.Module, variables, x: jax.Array, *, key: jax.Array | None = None,
           gradient: str | None = None) -> jax.Array:
    """The model's logits of the batch ``x``: its real forward (``gradient=None``) or the surface of the
    named gradient mode.  A randomised model needs ``key``, passed as the ``"sample"`` RNG stream."""
    check_gradient_mode(model, gradient)
    if randomised(model) and key is None:
        raise ValueError(f"{type(model).__name__} is randomised: its logits need a PRNG key")
    rngs = None if key is None else {"sample": key}
    if not hasattr(model, "logits"):
        return model.apply(variables, x, rngs=rngs)
    return model.apply(variables, x, gradient=gradient, rngs=rngs, method="logits")


def monitor_logits(model: nn.Module, variables, x: jax.Array) -> jax.Array:
    """Deterministic logits for the engine's per-epoch test metric: the real forward of a deterministic
    model; the ``monitor`` method of a randomised one (module docstring), which is not its prediction."""
    if not randomised(model):
        return model.apply(variables, x)
    if not hasattr(model, "monitor"):
        raise ValueError(f"{type(model).__name__} is randomised but defines no monitor(x): the training "
                         "engine has no deterministic logits to report per epoch")
    return model.apply(variables, x, method="monitor")


def monitor_metric(model: nn.Module) -> str:
    """The name under which the engine logs the per-epoch test accuracy of `monitor_logits`."""
    return "test_monitor_accuracy" if randomised(model) else "test_accuracy"


def as_path(path: str | Sequence[str]) -> Path:
    """``"layers_9/branches_1_0"`` or ``("layers_9", "branches_1_0")`` as a path tuple."""
    return tuple(path.split("/")) if isinstance(path, str) else tuple(path)


def representation(model: nn.Module, variables, x: jax.Array, paths: Sequence[str | Sequence[str]], *,
                   key: jax.Array | None = None) -> jax.Array:
    """The outputs of the layers at ``paths`` for the batch ``x``, each flattened to (batch, features),
    concatenated in the order of ``paths``.  A path names a layer by its parameter keys (``"layers_4"``,
    ``"layers_9/branches_1_0"``)."""
    wanted = [as_path(p) for p in paths]
    rngs = None if key is None else {"sample": key}
    outputs = model.apply(variables, x, rngs=rngs,
                          method=lambda module, x: trace(module, "__call__", x, paths=wanted).outputs)
    missing = [format_path(p) for p in wanted if p not in outputs]
    if missing:
        known = [format_path(p) for p, _, _ in walk(model)]
        raise ValueError(f"representation: no layer at {missing} in {type(model).__name__}; its layers: {known}")
    return jnp.concatenate([outputs[p].reshape(x.shape[0], -1) for p in wanted], axis=-1)


def project(model: nn.Module, params: dict, epoch=0.0) -> dict:
    """Applies every layer's constraint projection (`Layer.project`, e.g. MWD clipping or the AND/OR L1
    budget) at training time ``epoch`` to its own parameters, nested layers included; children before
    their composites."""
    projected = params
    for path, layer, layer_params in reversed(list(walk(model, params))):
        if layer_params and hasattr(layer, "project"):
            projected = set_path(projected, path, layer.project(get_path(projected, path), epoch))
    return projected


# ---------------------------------------------------------------------------------------------------------
# Architectures by name


def known_architectures() -> list[str]:
    """The architecture modules of this package (every module but ``base``)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(pathlib.Path(__file__).parent)]) if m.name != "base")


def architecture(name: str):
    """The module ``andor_jax.models.<name>``; ValueError listing the known names if there is none."""
    module_name = f"{__package__}.{name}"
    if not name.isidentifier() or name == "base":
        raise ValueError(f"unknown architecture {name!r}; known: {known_architectures()}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(f"unknown architecture {name!r}; known: {known_architectures()}") from None
    if not hasattr(module, "get_model"):
        raise ValueError(f"{module_name} defines no get_model(**kwargs); known: {known_architectures()}")
    return module


def inference_settings(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The keys of the model block ``config`` that its architecture declares as inference settings
    (``INFERENCE_SETTINGS`` of its module; module docstring)."""
    return tuple(getattr(architecture(config.name), "INFERENCE_SETTINGS", ()))


def with_inference_settings(config: ml_collections.ConfigDict, settings: dict | None) -> ml_collections.ConfigDict:
    """A copy of the model block ``config`` with the inference settings ``settings`` ({key: value}) applied;
    ValueError naming the accepted keys for any other key, and for a value of another type than the
    trained config's (an integer where a string was, ...)."""
    if not settings:
        return config
    accepted = inference_settings(config)
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        offer = f"its inference settings are {', '.join(accepted)}" if accepted else "it declares none"
        raise ValueError(f"model settings {unknown} cannot change after training for architecture "
                         f"{config.name!r}: {offer}")
    updated = ml_collections.ConfigDict(config.to_dict())
    for key, value in settings.items():
        try:
            updated[key] = value
        except TypeError as err:
            raise ValueError(f"model setting {key}={value!r}: {err}") from None
    return updated


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The model described by a config's ``model`` block: ``name`` (an architecture module) plus the
    keyword arguments of its ``get_model`` (e.g. ``hidden``, ``activation``)."""
    get_model = architecture(config.name).get_model
    kwargs = {k: v for k, v in config.to_dict().items() if k != "name"}
    try:
        inspect.signature(get_model).bind(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad options for architecture {config.name!r}: {err}") from err
    return get_model(**kwargs)
