"""One training engine for every architecture.

`make_train_step` builds a single jit-compiled step ``(state, x, y) -> (state, metrics)`` out of four
replaceable pieces:

* an *objective*, which returns the gradients (the default differentiates a supervised loss; AND/OR
  training mixes the gradients of two losses);
* an optax optimiser, optionally preceded by gradient transformations (weight concentration, clipping);
* a *projection* applied to the parameters after every update (MWD clipping, AND/OR L1 normalisation);
* a schedule for ``rho``, the pseudo-gradient mixing of layers that have one (MWD units).

Data parallelism: the state is replicated and the batch split over a ``'data'`` mesh axis of the local
devices (`jax.sharding`); XLA inserts the gradient all-reduce.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from andor_jax import models

PyTree = Any
Objective = Callable[..., tuple[PyTree, PyTree, dict]]


class TrainState(NamedTuple):
    """Everything a training run needs to continue: a pytree, so it is jit-, shard- and checkpoint-able.

    ``model_state`` holds the non-parameter variable collections (e.g. ``batch_stats``); ``rng`` is a raw
    ``uint32[2]`` key so that checkpoints stay plain arrays.
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    rng: jax.Array


# ----------------------------------------------------------------------------------------------- losses

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (log-softmax + NLL) over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def squared_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error against one-hot targets, summed over classes and averaged over the batch (the loss of
    the MWD paper and its sigmoid baseline)."""
    targets = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.sum((outputs - targets) ** 2, axis=-1).mean()


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cross_entropy": cross_entropy,
    "squared_error": squared_error,
}


def get_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


# ------------------------------------------------------------------------------------------- optimisers

GRADIENT_TRANSFORMS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    "clip_by_global_norm": lambda config: optax.clip_by_global_norm(config.get("max_grad_norm", 1.0)),
}


def register_gradient_transform(name: str,
                                factory: Callable[[ml_collections.ConfigDict], optax.GradientTransformation]) -> None:
    """Makes ``factory(train_config)`` usable as ``train.gradient_transforms = "name,..."`` in a config."""
    GRADIENT_TRANSFORMS[name] = factory


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The gradient transformations named in ``config.gradient_transforms`` (comma-separated, applied in
    order), then the optimiser named by ``config.optimizer``."""
    names = [n for n in config.get("gradient_transforms", "").split(",") if n]
    unknown = [n for n in names if n not in GRADIENT_TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown gradient transform(s) {unknown}; known: {sorted(GRADIENT_TRANSFORMS)}")
    if not names:  # unwrapped, so the optimiser state keeps the plain optimiser's structure
        return make_base_optimizer(config)
    return optax.chain(*(GRADIENT_TRANSFORMS[n](config) for n in names), make_base_optimizer(config))


def make_base_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optax optimiser named by ``config.optimizer`` (adadelta, adam, radam, sgd) with
    ``config.learning_rate`` and its own settings (``momentum`` and ``nesterov`` for sgd; ``rho`` and
    ``eps`` for adadelta, defaulting to the 0.9 / 1e-6 of the MWD authors' PyTorch code)."""
    name, lr = config.optimizer, config.learning_rate
    if name == "adadelta":
        return optax.adadelta(lr, rho=config.get("rho_adadelta", 0.9), eps=config.get("eps", 1e-6))
    if name == "adam":
        return optax.adam(lr)
    if name == "radam":
        return optax.radam(lr)
    if name == "sgd":
        return optax.sgd(lr, momentum=config.get("momentum", None) or None, nesterov=config.get("nesterov", False))
    raise ValueError(f"unknown optimizer {name!r}; choose one of adadelta, adam, radam, sgd")


def make_rho_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Pseudo-gradient mixing over training: constant ``config.rho`` (default 1: pure pseudo-gradients,
    as the MWD paper trains), or a linear decay to ``config.rho_final`` over the run when that is set."""
    start = float(config.get("rho", 1.0))
    final = config.get("rho_final", None)
    if final is None:
        return optax.constant_schedule(start)
    return optax.linear_schedule(start, float(final), max(total_steps, 1))


# ----------------------------------------------------------------------------------------- objectives

def supervised_objective(model: models.Sequential, loss: Callable[[jax.Array, jax.Array], jax.Array]) -> Objective:
    """The default objective: gradients of ``loss(model(x), y)``.

    Returns ``objective(params, model_state, x, y, key, rho, step) -> (grads, new_model_state, metrics)``
    (``rho`` the pseudo-gradient mixing and ``step`` the optimiser step, both traced).
    """

    def objective(params, model_state, x, y, key, rho, step):
        def loss_fn(p):
            outputs, new_state = apply_model(model, p, model_state, x, train=True, rho=rho, key=key)
            return loss(outputs, y), (outputs, new_state)

        (value, (outputs, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, new_state, {"loss": value, "accuracy": accuracy(outputs, y)}

    return objective


ObjectiveFactory = Callable[[models.Sequential, ml_collections.ConfigDict, int], Objective]

OBJECTIVES: dict[str, ObjectiveFactory] = {
    "supervised": lambda model, config, steps_per_epoch: supervised_objective(model, get_loss(config.loss)),
}


def register_objective(name: str, factory: ObjectiveFactory) -> None:
    """Makes ``factory(model, train_config, steps_per_epoch) -> objective`` usable as
    ``train.objective = name`` (``steps_per_epoch`` lets an objective schedule by epochs)."""
    OBJECTIVES[name] = factory


def make_objective(model: models.Sequential, config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> Objective:
    name = config.get("objective", "supervised")
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](model, config, steps_per_epoch)


def apply_model(model: models.Sequential, params: PyTree, model_state: PyTree, x: jax.Array, *,
                train: bool = False, rho=None, key: jax.Array | None = None):
    """Forward pass that threads the non-parameter collections: returns ``(outputs, new_model_state)``."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": key} if key is not None else None
    if train and model_state:
        return model.apply(variables, x, train=True, rho=rho, rngs=rngs, mutable=list(model_state))
    return model.apply(variables, x, train=train, rho=rho, rngs=rngs), model_state


def accuracy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(outputs, axis=-1) == labels)


# ----------------------------------------------------------------------------------------- the step

def identity_projection(params: PyTree) -> PyTree:
    return params


def make_train_step(optimizer: optax.GradientTransformation, objective: Objective, *,
                    projection: Callable[[PyTree], PyTree] = identity_projection,
                    rho_schedule: optax.Schedule = optax.constant_schedule(1.0)):
    """Builds the (not yet jitted) step ``(state, x, y) -> (state, metrics)``."""

    def train_step(state: TrainState, x: jax.Array, y: jax.Array):
        rng, key = jax.random.split(state.rng)
        rho = rho_schedule(state.step)
        grads, model_state, metrics = objective(state.params, state.model_state, x, y, key, rho, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = projection(optax.apply_updates(state.params, updates))
        new_state = TrainState(state.step + 1, params, model_state, opt_state, rng)
        return new_state, {**metrics, "rho": rho}

    return train_step


def init_state(model: models.Sequential, optimizer: optax.GradientTransformation, sample_x: jax.Array, seed: int,
               projection: Callable[[PyTree], PyTree] = identity_projection) -> TrainState:
    """Initialises parameters (projected onto their constraint set) and the optimiser state."""
    init_key, dropout_key, rng = jax.random.split(jax.random.PRNGKey(seed), 3)
    variables = model.init({"params": init_key, "dropout": dropout_key}, sample_x)
    variables = dict(variables)
    params = projection(variables.pop("params"))
    return TrainState(jnp.zeros((), jnp.int32), params, variables, optimizer.init(params), rng)


# ---------------------------------------------------------------------------------------- sharding

class DataParallel(NamedTuple):
    """A one-axis mesh over local devices; the state is replicated, batches are split along ``'data'``."""

    mesh: Mesh

    @classmethod
    def create(cls, num_devices: int | None, batch_size: int) -> "DataParallel":
        devices = jax.local_devices()
        count = len(devices) if num_devices is None else num_devices
        if not 1 <= count <= len(devices):
            raise ValueError(f"num_devices={count} but {len(devices)} local device(s) are available")
        if batch_size % count:
            raise ValueError(f"batch size {batch_size} is not divisible by the {count} devices used for data "
                             f"parallelism; change train.batch_size or train.num_devices")
        return cls(Mesh(np.asarray(devices[:count]), ("data",)))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("data"))

    def replicate(self, tree: PyTree) -> PyTree:
        return jax.device_put(tree, self.replicated)

    def shard_batch(self, *arrays: np.ndarray):
        return tuple(jax.device_put(a, self.batch) for a in arrays)

    def jit_step(self, train_step):
        """jit with the state replicated in and out, the batch split, and the old state's buffers donated."""
        return jax.jit(train_step, in_shardings=(self.replicated, self.batch, self.batch),
                       out_shardings=(self.replicated, self.replicated), donate_argnums=0)
