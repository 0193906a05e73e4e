"""Training objectives: what a train step differentiates (or otherwise computes) to get its update direction.

An objective is optax-style: a pair of pure functions in a NamedTuple, with its own state carried in the
train state (`andor_jax.train.TrainState.objective_state`), checkpointed and resumed with the rest::

    init(params, model_state) -> objective_state
    update(params, model_state, objective_state, x, y, key, rho, step)
        -> (grads, new_model_state, new_objective_state, metrics)
    on_epoch(params, model_state, objective_state, dataset, epoch) -> objective_state   # optional

* ``init`` and ``update`` are jit-able.  ``objective_state`` is any pytree of arrays (``{}`` when there is
  none); its structure must not change between steps.
* ``update`` gets the batch ``(x, y)``, a fresh PRNG ``key`` (dropout, scrambles, sampling), the traced
  pseudo-gradient mix ``rho`` of the engine's schedule (``train.psd_mix``; layers without pseudo-gradients
  ignore it) and the traced optimiser ``step`` (for warm-ups and phases: use ``jnp.where``/``lax.cond`` on it,
  so that a phase change recompiles nothing).  ``grads`` has the structure of ``params``; it is whatever
  direction the optimiser should descend: true gradients, a mix of several losses' gradients, or, for a
  local learning rule, minus its weight change.  ``metrics`` is a dict of scalars, averaged per epoch into
  ``metrics.jsonl`` (prefixed ``train_``).
* ``on_epoch`` runs on the host at the start of every epoch (`andor_jax.experiment.fit`), before its first
  step, with the whole `andor_jax.data.Dataset` and the 0-based epoch: for work that needs the full training
  set (e.g. eigenvectors of its representations).  A run resumed in the middle of an epoch does not call it
  again: the state it returned at the start of that epoch is in the checkpoint.

Objectives are found by name without import side effects: ``train.objective = "NAME"`` imports
``andor_jax.objectives.NAME`` (a dotted name ``"package.module"`` imports that module) and calls its
``get_objective(model, train_config, steps_per_epoch) -> Objective``; ``steps_per_epoch`` lets an objective
schedule by epochs.  The objective reads its settings from the ``train`` block; every key it reads is
declared in `andor_jax.config.base_config` or, for an objective's own block (e.g. ``train.andor``), by the
configs that use it.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, NamedTuple, Optional

import jax

PyTree = Any


class Objective(NamedTuple):
    """``init``, ``update`` and optionally ``on_epoch`` of an objective (see the module docstring)."""

    init: Callable[[PyTree, PyTree], PyTree]
    update: Callable[..., tuple[PyTree, PyTree, PyTree, dict]]
    on_epoch: Optional[Callable[..., PyTree]] = None


def stateless(update: Callable[..., tuple[PyTree, PyTree, dict]], on_epoch=None) -> Objective:
    """An `Objective` without state from ``update(params, model_state, x, y, key, rho, step) ->
    (grads, new_model_state, metrics)``; its state is ``{}``."""

    def init(params, model_state):
        return {}

    def update_with_state(params, model_state, objective_state, x, y, key, rho, step):
        grads, new_model_state, metrics = update(params, model_state, x, y, key, rho, step)
        return grads, new_model_state, objective_state, metrics

    return Objective(init, update_with_state, on_epoch)


def available() -> list[str]:
    """The objective modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "losses")


def get_objective(model, train_config, steps_per_epoch: int = 1) -> Objective:
    """The objective named by ``train_config.objective`` (module docstring), built for ``model``."""
    name = train_config.objective
    module_name = name if "." in name else f"{__name__}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(f"unknown objective {name!r}: no module {module_name}; objectives here: "
                         f"{', '.join(available())}") from err
    if not hasattr(module, "get_objective"):
        raise ValueError(f"objective module {module_name} defines no get_objective(model, train_config, "
                         f"steps_per_epoch)")
    objective = module.get_objective(model, train_config, steps_per_epoch)
    if not isinstance(objective, Objective):
        raise TypeError(f"{module_name}.get_objective returned {type(objective).__name__}, not an Objective")
    return objective


def apply_model(model, params: PyTree, model_state: PyTree, x: jax.Array, *, train: bool = False, rho=None,
                key: jax.Array | None = None, method=None):
    """The forward pass of training: threads the non-parameter collections (e.g. ``batch_stats``) and the
    dropout key; returns ``(outputs, new_model_state)``.  ``method`` names another method of the model (e.g.
    ``"outputs"`` for every layer's output)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": key} if key is not None else None
    kwargs = {"method": method} if method is not None else {}
    if train and model_state:
        return model.apply(variables, x, train=True, rho=rho, rngs=rngs, mutable=list(model_state), **kwargs)
    return model.apply(variables, x, train=train, rho=rho, rngs=rngs, **kwargs), model_state
