"""One training engine for every architecture.

`make_train_step` builds a single jit-compiled step ``(state, x, y) -> (state, metrics)`` out of
replaceable pieces:

* an *objective* (`andor_jax.objectives`), which returns the update direction and carries its own state
  (supervised gradients; AND/OR's mix of two losses; a local learning rule);
* an optax optimiser, optionally preceded by gradient transformations (clipping, weight concentration) and
  restricted to the trainable parameters (``train.trainable``: the rest is frozen);
* a *projection* ``(params, step) -> params`` applied to the parameters at initialisation (step 0) and after
  every update (the step reached), e.g. MWD clipping, the AND/OR L1 budget and its schedule;
* a schedule for the pseudo-gradient mix ``rho`` of layers that have one (MWD units), ``train.psd_mix``:
  it is independent of the objective, which receives its traced value every step.

Data parallelism: the state is replicated and the batch split over a ``'data'`` mesh axis of the devices
of every process (`jax.sharding`, `andor_jax.distributed`); XLA inserts the gradient all-reduce.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from andor_jax import distributed, objectives

PyTree = Any


class TrainState(NamedTuple):
    """Everything a training run needs to continue: a pytree, so it is jit-, shard- and checkpoint-able.

    ``model_state`` holds the non-parameter variable collections (e.g. ``batch_stats``); ``objective_state``
    the objective's own state (`andor_jax.objectives.Objective`); ``rng`` is a raw ``uint32[2]`` key so
    that checkpoints stay plain arrays.
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    objective_state: PyTree
    rng: jax.Array


# ------------------------------------------------------------------------------------------- optimisers

BUILTIN_GRADIENT_TRANSFORMS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "clip_by_global_norm": lambda config: optax.clip_by_global_norm(config.max_grad_norm),
}


def gradient_transform(name: str, config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The gradient transformation named ``name`` in ``train.gradient_transforms``, built from the train
    config.  A name is either built in (`BUILTIN_GRADIENT_TRANSFORMS`: ``clip_by_global_norm``, which reads
    ``train.max_grad_norm``) or ``"package.module:factory"``, imported on demand, where
    ``factory(train_config) -> optax.GradientTransformation`` (e.g.
    ``"andor_jax.objectives.andor:weight_concentration"``): nothing is registered by importing a module."""
    if name in BUILTIN_GRADIENT_TRANSFORMS:
        return BUILTIN_GRADIENT_TRANSFORMS[name](config)
    module_name, colon, attribute = name.partition(":")
    if not (colon and module_name and attribute):
        raise ValueError(f"unknown gradient transform {name!r}; built in: {sorted(BUILTIN_GRADIENT_TRANSFORMS)}, "
                         f"or give 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ValueError(f"gradient transform {name!r} not found: {err}") from err
    return factory(config)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int = 1) -> optax.GradientTransformation:
    """The gradient transformations listed in ``config.gradient_transforms`` (applied in order), then the
    optimiser named by ``config.optimizer`` (its learning rate following ``config.learning_rate_schedule``
    over ``total_steps``); with ``config.trainable`` set, all of it applies to the trainable parameters only
    and the others get zero updates (``optax.set_to_zero``, no optimiser state)."""
    transforms = [gradient_transform(name, config) for name in config.gradient_transforms]
    base = make_base_optimizer(config, total_steps)
    # Unwrapped when there is nothing to chain, so the optimiser state keeps the plain optimiser's structure.
    optimizer = optax.chain(*transforms, base) if transforms else base
    if not config.trainable:
        return optimizer
    prefixes = tuple(config.trainable)
    return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()},
                                 lambda params: trainable_labels(params, prefixes))


LEARNING_RATE_SCHEDULES = ("constant", "cosine", "linear")


def learning_rate(config: ml_collections.ConfigDict, total_steps: int) -> float | optax.Schedule:
    """``config.learning_rate``, constant, or decaying to 0 over ``total_steps`` (``config.learning_rate_schedule``:
    ``cosine``, lr (1 + cos(pi t / T)) / 2, Loshchilov & Hutter 2017; ``linear``, lr (1 - t / T)).  The schedule
    reads the optimiser's own step count, so a resumed run continues it."""
    name, lr = config.get("learning_rate_schedule", "constant"), float(config.learning_rate)
    if name == "constant":
        return lr
    steps = max(int(total_steps), 1)
    if name == "cosine":
        return optax.cosine_decay_schedule(lr, steps)
    if name == "linear":
        return optax.linear_schedule(lr, 0.0, steps)
    raise ValueError(f"unknown train.learning_rate_schedule {name!r}; choose one of {', '.join(LEARNING_RATE_SCHEDULES)}")


def make_base_optimizer(config: ml_collections.ConfigDict, total_steps: int = 1) -> optax.GradientTransformation:
    """The optax optimiser named by ``config.optimizer`` (adadelta, adam, radam, sgd) with the learning rate of
    `learning_rate` and its own settings: ``momentum`` (0 or None: none) and ``nesterov`` for sgd;
    ``adadelta_rho`` and ``adadelta_eps`` for adadelta (0.9 / 1e-6 in the MWD authors' PyTorch code)."""
    name, lr = config.optimizer, learning_rate(config, total_steps)
    if name == "adadelta":
        return optax.adadelta(lr, rho=config.adadelta_rho, eps=config.adadelta_eps)
    if name == "adam":
        return optax.adam(lr)
    if name == "radam":
        return optax.radam(lr)
    if name == "sgd":
        return optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose one of adadelta, adam, radam, sgd")


def psd_mix_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The pseudo-gradient mix ``rho`` over training: constant ``config.psd_mix`` (1: pure pseudo-gradients,
    as the MWD paper trains; 0: true gradients), or a linear change to ``config.psd_mix_final`` over the run
    when that is set.  The step evaluates it on its traced step counter: no recompilation."""
    if config.psd_mix_final is None:
        return optax.constant_schedule(float(config.psd_mix))
    return optax.linear_schedule(float(config.psd_mix), float(config.psd_mix_final), max(total_steps, 1))


# ------------------------------------------------------------------------------------ trainable parameters

def path_names(path) -> tuple[str, ...]:
    """A pytree key path as names: ``(DictKey('layers_0'), DictKey('kernel'))`` -> ``('layers_0', 'kernel')``."""
    return tuple(str(getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))) for entry in path)


def trainable_labels(params: PyTree, prefixes: Sequence[str]) -> PyTree:
    """``"trainable"`` for every parameter whose path (names joined by ``/``, e.g. ``purifier/layers_0/kernel``)
    starts with one of ``prefixes`` (whole names: ``layers_1`` does not match ``layers_10``), else
    ``"frozen"``.  A prefix that matches no parameter is a ValueError naming it."""
    wanted = [tuple(p.strip("/").split("/")) for p in prefixes]
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [path_names(path) for path, _ in leaves]
    unused = ["/".join(w) for w in wanted if not any(n[:len(w)] == w for n in names)]
    if unused:
        tops = sorted({n[0] for n in names if n})
        raise ValueError(f"train.trainable prefix(es) {unused} match no parameter; top-level parameters: {tops}")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "trainable" if any(path_names(path)[:len(w)] == w for w in wanted) else "frozen", params)


def keep_frozen(labels: PyTree, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where the label is ``"trainable"``, ``old`` (bit for bit) where it is ``"frozen"``."""
    return jax.tree.map(lambda label, n, o: n if label == "trainable" else o, labels, new, old)


# ----------------------------------------------------------------------------------------- the step

Projection = Callable[[PyTree, jax.Array], PyTree]


def identity_projection(params: PyTree, step=0) -> PyTree:
    return params


def make_train_step(optimizer: optax.GradientTransformation, objective: objectives.Objective, *,
                    projection: Projection = identity_projection,
                    rho_schedule: optax.Schedule = optax.constant_schedule(1.0),
                    trainable: Sequence[str] = ()):
    """Builds the (not yet jitted) step ``(state, x, y) -> (state, metrics)``: the objective's update
    direction at ``rho = rho_schedule(step)``, the optimiser, the projection; parameters outside the
    ``trainable`` prefixes (when given) keep their exact values.  Metrics: the objective's and ``psd_mix``."""

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        rng, key = jax.random.split(state.rng)
        rho = rho_schedule(state.step)
        grads, model_state, objective_state, metrics = objective.update(
            state.params, state.model_state, state.objective_state, x, y, key, rho, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = projection(optax.apply_updates(state.params, updates), state.step + 1)
        if trainable:
            params = keep_frozen(trainable_labels(state.params, trainable), params, state.params)
        new_state = TrainState(state.step + 1, params, model_state, opt_state, objective_state, rng)
        return new_state, {**metrics, "psd_mix": rho}

    return train_step


def init_state(model, optimizer: optax.GradientTransformation, objective: objectives.Objective,
               sample_x: jax.Array, seed: int,
               projection: Projection = identity_projection) -> TrainState:
    """Initialises parameters (projected onto their constraint set), the optimiser and objective states, in
    one compiled computation (large models initialise many times faster than op by op)."""

    @jax.jit
    def initialise(sample_x):
        init_key, dropout_key, rng = jax.random.split(jax.random.PRNGKey(seed), 3)
        variables = dict(model.init({"params": init_key, "dropout": dropout_key}, sample_x))
        params = projection(variables.pop("params"), 0)
        return restart(TrainState(jnp.zeros((), jnp.int32), params, variables, None, None, rng), params,
                       variables, optimizer, objective)

    return initialise(sample_x)


def restart(state: TrainState, params: PyTree, model_state: PyTree, optimizer: optax.GradientTransformation,
            objective: objectives.Objective) -> TrainState:
    """``state`` with new variables, and the optimiser and objective states initialised for them (how a run
    starts from another run's parameters, ``train.init_from``)."""
    return state._replace(params=params, model_state=model_state, opt_state=optimizer.init(params),
                          objective_state=objective.init(params, model_state))


# ---------------------------------------------------------------------------------------- sharding

class DataParallel(NamedTuple):
    """A one-axis mesh over the devices of every process (`andor_jax.distributed`; one process: its own);
    the state is replicated, batches are split along ``'data'``."""

    mesh: Mesh

    @classmethod
    def create(cls, num_devices: int | None, batch_size: int) -> "DataParallel":
        """The first ``num_devices`` local devices of every process (None: all of them); ``batch_size`` is the
        global batch, split over all of those devices."""
        local = jax.local_devices()
        count = len(local) if num_devices is None else num_devices
        if not 1 <= count <= len(local):
            raise ValueError(f"num_devices={count} but {len(local)} local device(s) are available")
        processes = jax.process_count()
        if batch_size % (count * processes):
            where = f" x {processes} processes" if processes > 1 else ""
            raise ValueError(f"batch size {batch_size} is not divisible by the {count * processes} devices "
                             f"({count} per process{where}) used for data parallelism; change train.batch_size "
                             f"or train.num_devices")
        by_process = sorted(jax.devices(), key=lambda device: (device.process_index, device.id))
        devices = [device for p in range(processes)
                   for device in [d for d in by_process if d.process_index == p][:count]]
        return cls(Mesh(np.asarray(devices), ("data",)))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))

    def replicate(self, tree: PyTree) -> PyTree:
        return distributed.global_tree(tree, self.replicated)

    def shard_batch(self, *arrays: np.ndarray):
        """The global batch ``arrays`` (the same on every process) split over the mesh."""
        return tuple(distributed.global_array(a, self.batch) for a in arrays)

    def jit_step(self, train_step):
        """jit with the state replicated in and out, the batch split, and the old state's buffers donated."""
        return jax.jit(train_step, in_shardings=(self.replicated, self.batch, self.batch),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=0)
