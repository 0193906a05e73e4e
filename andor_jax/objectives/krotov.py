"""Krotov & Hopfield's local winner-take-all learning as an objective (``train.objective = "krotov"``).

The update direction of the local layer's kernel is minus its weight change: with the optimiser plain SGD
at learning rate 1 and no momentum (``train.optimizer = "sgd"``, ``train.learning_rate = 1``,
``train.momentum = 0``), a step is exactly Krotov's

    W <- W + eps_t dW / max|dW|,   eps_t = eps_0 (1 - t / T)

(`andor_jax.layers.krotov.local_update`; ``t`` the step, ``T`` = epochs x steps per epoch), the linear
decay to 0 of both reference codes.  Every other parameter gets a zero direction.

Settings, in the config's own block ``train.krotov``: ``k`` (rank of the anti-Hebbian unit), ``delta``
(its strength), ``learning_rate`` (eps_0).  The layer's ``p`` and ``R`` come from the layer itself.
Metrics: the learning rate.  The convergence diagnostic (`andor_jax.layers.krotov.convergence`:
``off_norm_fraction``, ``negative_units``, ``inhibitory_fraction``) is not a per-step metric: its passes
over the (units, inputs) kernel cost as much as the step's two matrix products (one MNIST epoch 3.56 ->
2.88 s without it, `benchmarks/bench_local.py`); ``on_epoch`` also prints the diagnostic at the start of every
epoch.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import optax

from andor_jax.layers.base import format_path, get_path, set_path, trace, walk
from andor_jax.layers.krotov import KrotovHopfield, convergence, local_update
from andor_jax.objectives import Objective, stateless


def local_layer(model) -> tuple[tuple[str, ...], KrotovHopfield]:
    """The path and the (unbound) instance of the first `KrotovHopfield` layer of ``model``."""
    for path, layer, _ in walk(model):
        if isinstance(layer, KrotovHopfield):
            return path, layer
    raise ValueError(f"objective 'krotov': {type(model).__name__} has no KrotovHopfield layer to train")


def get_objective(model, train_config, steps_per_epoch: int = 1) -> Objective:
    settings = train_config.krotov
    if not 2 <= settings.k:
        raise ValueError(f"train.krotov.k must be at least 2 (the anti-Hebbian rank), got {settings.k}")
    path, layer = local_layer(model)
    schedule = optax.linear_schedule(float(settings.learning_rate), 0.0, max(train_config.epochs * steps_per_epoch, 1))

    def update(params, model_state, x, y, key, rho, step):
        seen = model.apply({"params": params, **model_state}, x,
                           method=lambda module, x: trace(module, "__call__", x, paths=[path]))
        kernel = get_path(params, path)["kernel"]
        change = local_update(kernel, layer.prepare(seen.inputs[path]), p=layer.p, k=settings.k,
                              delta=settings.delta, radius=layer.radius, current=seen.outputs[path])
        rate = schedule(step)
        grads = jax.tree.map(jnp.zeros_like, params)
        grads = set_path(grads, path, {**get_path(grads, path), "kernel": -rate * change})
        return grads, model_state, {"learning_rate": rate}

    def on_epoch(params, model_state, objective_state, dataset, epoch):
        diagnostic = convergence(get_path(params, path)["kernel"], layer.p, layer.radius)
        print(f"epoch {epoch + 1} start: {format_path(path)}: {float(diagnostic['off_norm_fraction']):.1%} of units "
              f"off ||W||_{layer.p:g} = {layer.radius:g} by > 0.01, {int(diagnostic['negative_units'])} with mean "
              f"weight < -R/2, {float(diagnostic['inhibitory_fraction']):.1%} inhibitory", file=sys.stderr)
        return objective_state

    return stateless(update, on_epoch)
