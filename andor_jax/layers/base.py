"""The layer protocol and the one recursive walk over a tree of layers.

A network is a tree of layers: leaves (dense, convolution, MWD units, activations ...) and composites
(`andor_jax.layers.standard.Concat`, a nested `andor_jax.models.Sequential`) whose children are layers
again.  Everything the library does is a walk over that tree with an action per layer (DESIGN.md): the
forward pass, the extended dataset (`trace`), projection, scrambling, participation, interval propagation
and diagnostics.  `walk` names every layer by its *path*, the keys leading to its parameters in the Flax
variable tree (``("layers_3",)``, ``("layers_9", "branches_1_0")``).

The protocol.  Every layer subclasses `Layer` and may override these hooks; the default of each is what
`Layer` defines:

* ``__call__(self, x, *, train: bool = False, rho=None)``: the forward pass (no default).  ``train``
  switches dropout and batch statistics; ``rho`` is the traced pseudo-gradient mix (None or 0: true
  gradient, 1: pseudo-gradient), which changes backward passes only.  Every layer accepts both, and
  composites pass both to their children.
* ``interval(self, bounds: Interval) -> Interval``: a box containing every output for inputs in
  ``bounds``, reading the layer's parameters from ``self.variables``.  Default: raises
  `MissingIntervalRuleError` (nothing can be certified through the layer).
* ``project(self, layer_params, epoch=0.0) -> layer_params``: the layer's constraint set, applied to its
  own parameters at initialisation and after every optimiser step (MWD clipping, AND/OR L1 budget).
  ``epoch`` is the training time in epochs (a traced float: steps taken / steps per epoch), for a
  constraint set that changes during training (the AND/OR budget schedule).  Default: the identity.
  Must be idempotent.
* ``affine``: ``None``, or, for an affine layer, a method ``affine(self) -> (W, b)`` with
  ``y = x W + b`` (``b`` may be None); certification bounds logit margins through it exactly.
  Default: ``None`` (not affine).
* ``preserves_order``: True when the layer is elementwise and strictly increasing, so that the order of
  its outputs is the order of its inputs (margins may be certified before it).  Default: False.
* ``has_pseudo_gradient``: True when ``rho`` changes the layer's backward pass (MWD units): the model
  then has the ``"psd"`` gradient mode.  Default: False.
* ``connection_axes``: ``{parameter name: axis}`` of the connection weights and, for each, the axis that
  runs over the layer's inputs (Dense ``kernel`` (in, out): -2; MWD ``u``, ``w`` (out, in): -1).  A layer
  with connection weights is a *neuron layer* for scrambling, hyper-saturation and participation
  (`andor_jax.scramble`).  Default: ``{}``.  A layer with parameters but no connection weights (e.g.
  batch normalisation) cannot sit between a neuron layer and the layer it feeds.  A parameter-free layer
  that keeps the size of the last axis is taken to keep channels (elementwise maps, pooling, dropout);
  one that maps NHWC to (batch, h w c) is a flatten (channel fastest).
* ``children``: for a composite, its chains of children ``((name, layer), ...)``, one tuple per chain:
  the composite applies every chain to its input and concatenates the chains' outputs on the last axis
  (a single chain is a sequence; an empty chain is the identity, a skip connection).  ``name`` is the
  Flax name of the child (the key of its parameters).  Default: ``()`` (a leaf).
* ``conformance_examples()`` (class method): small instances with an input shape and domain, on which
  ``tests/test_layer_conformance.py`` checks every layer type of the package (soundness of the interval
  rule by sampling and by gradient-found points, a degenerate box, idempotent projection, the context
  reaching nested layers, jit and vmap).  Default: none (the suite then fails, naming the layer).
"""
from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import flax.linen as nn
import jax.numpy as jnp

from andor_jax.interval import Interval

Path = tuple[str, ...]
PyTree = Any


class MissingIntervalRuleError(TypeError):
    """A layer of the network has no interval rule, so no sound bound can be computed through it."""


class Example(NamedTuple):
    """A conformance example: a layer instance, an input shape (batch first) and the inputs' domain."""

    layer: nn.Module
    shape: tuple[int, ...]
    domain: tuple[float, float] = (0.0, 1.0)


class Layer(nn.Module):
    """Base class of every layer: the hooks of the protocol (module docstring) with their defaults."""

    affine = None
    preserves_order = False
    has_pseudo_gradient = False
    connection_axes = {}

    @property
    def children(self) -> tuple[tuple[tuple[str, nn.Module], ...], ...]:
        return ()

    def interval(self, bounds: Interval) -> Interval:
        raise missing_interval_rule(self)

    def project(self, layer_params: PyTree, epoch=0.0) -> PyTree:
        return layer_params

    @classmethod
    def conformance_examples(cls) -> tuple[Example, ...]:
        return ()


def missing_interval_rule(layer: nn.Module) -> MissingIntervalRuleError:
    return MissingIntervalRuleError(
        f"layer {type(layer).__name__} ({layer.name}) has no interval rule: interval bound propagation "
        f"cannot bound its output, so nothing about this network can be certified")


# ---------------------------------------------------------------------------------------------------------
# The tree of layers


def chains(layer: nn.Module) -> tuple[tuple[tuple[str, nn.Module], ...], ...]:
    """The chains of children of a composite (`Layer.children`); ``()`` for a leaf or a foreign module."""
    return getattr(layer, "children", ()) if isinstance(layer, Layer) else ()


def children(layer: nn.Module) -> tuple[tuple[str, nn.Module], ...]:
    """Every child ``(name, layer)`` of a composite, chain after chain."""
    return tuple(child for chain in chains(layer) for child in chain)


def walk(model: nn.Module, params: PyTree | None = None, path: Path = ()) -> Iterator[tuple[Path, nn.Module, PyTree]]:
    """Every layer below ``model`` as ``(path, layer, layer_params)``, depth first, a composite before its
    children.  ``layer_params`` is the layer's sub-tree of ``params`` (``{}`` for a layer without
    parameters).  Works on bound and unbound modules alike: paths are Flax's names."""
    params = {} if params is None else params
    for name, layer in children(model):
        layer_params = params.get(name, {})
        yield (*path, name), layer, layer_params
        yield from walk(layer, layer_params, (*path, name))


def leaves(model: nn.Module, params: PyTree | None = None) -> Iterator[tuple[Path, nn.Module, PyTree]]:
    """The entries of `walk` that are not composites."""
    return ((path, layer, p) for path, layer, p in walk(model, params) if not chains(layer))


def layer_at(module: nn.Module, path: Path) -> nn.Module:
    """The layer at ``path`` below ``module`` (bound when ``module`` is)."""
    for name in path:
        named = dict(children(module))
        if name not in named:
            raise KeyError(f"no layer {name!r} in {type(module).__name__}; it has {sorted(named)}")
        module = named[name]
    return module


def get_path(tree: PyTree, path: Path) -> PyTree:
    for name in path:
        tree = tree[name]
    return tree


def set_path(tree: PyTree, path: Path, value: PyTree) -> PyTree:
    """A copy of the nested dict ``tree`` with the entry at ``path`` replaced by ``value``."""
    if not path:
        return value
    return {**tree, path[0]: set_path(tree[path[0]], path[1:], value)}


def format_path(path: Path) -> str:
    return "/".join(path) or "<model>"


# ---------------------------------------------------------------------------------------------------------
# Forward and interval passes of composites


def apply_chain(chain: Sequence[tuple[str, nn.Module]], x, *, train: bool = False, rho=None):
    """The layers of one chain applied in turn, with the context."""
    for _, layer in chain:
        x = layer(x, train=train, rho=rho)
    return x


def layer_interval(layer: nn.Module, bounds: Interval) -> Interval:
    """``layer.interval(bounds)``; `MissingIntervalRuleError` for a module without the hook."""
    if not hasattr(layer, "interval"):
        raise missing_interval_rule(layer)
    return layer.interval(bounds)


def chain_interval(chain: Sequence[tuple[str, nn.Module]], bounds: Interval) -> Interval:
    """Interval propagation through one chain: every layer's own rule in turn."""
    for _, layer in chain:
        bounds = layer_interval(layer, bounds)
    return bounds


def concatenate(values: Sequence) -> Any:
    """Arrays or intervals joined on the last axis (one value: itself)."""
    if len(values) == 1:
        return values[0]
    if isinstance(values[0], Interval):
        return Interval(jnp.concatenate([v.lower for v in values], -1), jnp.concatenate([v.upper for v in values], -1))
    return jnp.concatenate(values, axis=-1)


# ---------------------------------------------------------------------------------------------------------
# Recording every layer's input and output


class Trace(NamedTuple):
    """Every layer's input and output in one pass, keyed by path; ``()`` is the whole network.  For the
    forward pass this is Fontana's extended dataset (EDS); for ``interval`` every layer's box."""

    inputs: dict[Path, Any]
    outputs: dict[Path, Any]


def trace(module: nn.Module, method: str, value, *, paths: Sequence[Path] | None = None, **kwargs) -> Trace:
    """Calls ``module.<method>(value, **kwargs)`` (bound, inside ``apply``) and records the first argument
    and the result of every call of ``method`` on a layer below it.

    ``paths`` restricts the record to those layers (default: the layers of `walk`; a model that is not a
    composite of layers records every Flax submodule).  The recording intercepts the calls
    (`flax.linen.intercept_methods`): any composite that calls its children through ``method`` is
    traced, and the values are the ones the pass itself computed.
    """
    wanted = {p for p, _, _ in walk(module)} if paths is None else set(map(tuple, paths))
    everything = paths is None and not wanted
    root = len(module.path)
    inputs, outputs = {}, {}

    def record(next_fun, args, call_kwargs, context):
        result = next_fun(*args, **call_kwargs)
        path = tuple(context.module.path[root:])
        if context.method_name == method and (path in wanted or everything or not path):
            inputs[path], outputs[path] = args[0], result
        return result

    with nn.intercept_methods(record):
        getattr(module, method)(value, **kwargs)
    return Trace(inputs, outputs)
