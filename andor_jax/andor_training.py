"""Training AND/OR networks: the ``'andor'`` objective and the ``'weight_concentration'`` gradient
transformation, registered with the engine (`andor_jax.train`).  Fontana, arXiv 2102.07389, sec. 4-5.

Each step (the paper's training cycle; the L1 projection is the layers' `project`, applied by the engine):

1. one forward pass keeps the EDS; its backward pass runs twice, for the cross-entropy gradient ``g_ce``
   and for the gradient of ``mean |f(x)|`` that gives the participation factors;
2. ``num_scrambles`` scrambled datasets of ``sds_size`` examples (type ``scramble``, `andor_jax.scramble`)
   and loss2; its gradient ``g_2``.  By default the scrambles together hold as many examples as the
   batch: every SDS value is an independent draw, so S scrambles of m examples are distributed as one
   of S m, and the cost of loss2 grows with S m;
3. the two gradients are mixed (``mix``):

   * ``"author"`` (the author's code), per parameter array:
     ``g = clip(ce_weight g_ce / max|g_ce| + loss2_weight g_2 / max|g_2|, -1, 1)``
     (defaults 1 and 0.7: the cross-entropy gradient scaled to max 1, loss2's to 0.7);
   * ``"weighted"``: ``g = ce_weight g_ce + loss2_weight g_2``;

4. weight concentration, if listed in ``train.gradient_transforms``: ``g <- g |w|``.

The author trains the first 20 epochs on loss2 alone: ``loss2_only_epochs`` (traced, so the switch to the
full mix recompiles nothing).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from andor_jax import scramble, train
from andor_jax.models import Sequential

MIXES = ("author", "weighted")


def default_settings() -> ml_collections.ConfigDict:
    """The ``train.andor`` block of a config, with the author's choices."""
    settings = ml_collections.ConfigDict()
    settings.scramble = "B"               # A: scramble the input and propagate; B: scramble at every layer
    settings.num_scrambles = 8            # independent scrambled datasets per step (vmapped)
    settings.sds_size = 0                 # examples per scrambled dataset; 0: batch size / num_scrambles
    settings.unit = "element"             # scrambling unit of conv maps: element | location | channel
    settings.mix = "author"               # author | weighted
    settings.ce_weight = 1.0
    settings.loss2_weight = 0.7
    settings.loss2_only_epochs = 20       # first epochs trained on loss2 alone (ce_weight 0)
    settings.concentration_per_neuron = False  # weight concentration: |w| / max |w| of the neuron
    return settings


def settings_of(train_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`default_settings` updated with the config's ``train.andor`` block; unknown keys are errors."""
    settings = default_settings()
    given = train_config.get("andor", None)
    for key, value in (given.items() if given is not None else ()):
        if key not in settings:
            raise ValueError(f"unknown setting train.andor.{key}; known: {', '.join(sorted(settings))}")
        settings[key] = value
    if settings.mix not in MIXES:
        raise ValueError(f"unknown train.andor.mix {settings.mix!r}; choose one of {MIXES}")
    if settings.scramble not in scramble.SCRAMBLE_KINDS:
        raise ValueError(f"unknown train.andor.scramble {settings.scramble!r}; choose one of "
                         f"{scramble.SCRAMBLE_KINDS}")
    if settings.loss2_only_epochs < 0:
        raise ValueError(f"train.andor.loss2_only_epochs must be >= 0, got {settings.loss2_only_epochs}")
    if settings.num_scrambles < 1 or settings.sds_size < 0:
        raise ValueError(f"train.andor.num_scrambles must be >= 1 and sds_size >= 0, got "
                         f"{settings.num_scrambles} and {settings.sds_size}")
    if settings.unit not in scramble.SCRAMBLE_UNITS:
        raise ValueError(f"unknown train.andor.unit {settings.unit!r}; choose one of {scramble.SCRAMBLE_UNITS}")
    return settings


# ---------------------------------------------------------------------------------------------------------
# Gradient mixing


def max_normalised(grad: jax.Array) -> jax.Array:
    """``grad / max |grad|`` (0 stays 0)."""
    peak = jnp.max(jnp.abs(grad))
    return grad / jnp.where(peak > 0, peak, 1.0)


def author_mix(ce_grads, loss2_grads, ce_weight: float, loss2_weight: float):
    """Per parameter array: ``clip(ce_weight g_ce / max|g_ce| + loss2_weight g_2 / max|g_2|, -1, 1)``."""
    return jax.tree.map(lambda ce, l2: jnp.clip(ce_weight * max_normalised(ce) + loss2_weight * max_normalised(l2),
                                                -1.0, 1.0), ce_grads, loss2_grads)


def weighted_mix(ce_grads, loss2_grads, ce_weight: float, loss2_weight: float):
    """``ce_weight g_ce + loss2_weight g_2``."""
    return jax.tree.map(lambda ce, l2: ce_weight * ce + loss2_weight * l2, ce_grads, loss2_grads)


# ---------------------------------------------------------------------------------------------------------
# The objective


def training_outputs(model: Sequential, params, model_state, x: jax.Array, rho, key: jax.Array):
    """The EDS of a training forward pass (dropout drawn from ``key``, batch statistics updated) and the
    new non-parameter collections: ``(eds, new_model_state)``."""
    variables, rngs = {"params": params, **model_state}, {"dropout": key}
    if not model_state:
        return model.apply(variables, x, train=True, rho=rho, rngs=rngs, method="outputs"), model_state
    return model.apply(variables, x, train=True, rho=rho, rngs=rngs, method="outputs", mutable=list(model_state))


def andor_objective(model: Sequential, train_config: ml_collections.ConfigDict,
                    steps_per_epoch: int = 1) -> train.Objective:
    """``objective(params, model_state, x, y, key, rho, step) -> (grads, new_model_state, metrics)`` mixing
    the gradients of the configured loss (``train.loss``) and loss2 (module docstring); before step
    ``loss2_only_epochs * steps_per_epoch`` the supervised loss has weight 0.  Metrics: ``loss`` (the
    supervised loss), ``accuracy``, ``loss2``, ``hypersat`` (mean over the loss2 neurons) and
    ``ce_weight``."""
    settings = settings_of(train_config)
    supervised_loss = train.get_loss(train_config.loss)
    mix = author_mix if settings.mix == "author" else weighted_mix
    options = {"kind": settings.scramble, "unit": settings.unit}

    warmup_steps = settings.loss2_only_epochs * steps_per_epoch

    def objective(params, model_state, x, y, key, rho, step):
        dropout_key, scramble_key = jax.random.split(key)
        consumers = scramble.neuron_layers(model, params)
        scored = [i for i, consumer in consumers.items() if consumer is not None]

        def forward(p):
            eds, new_state = training_outputs(model, p, model_state, x, rho, dropout_key)
            return eds[-1], (eds, new_state)

        outputs, backward, (eds, new_state) = jax.vjp(forward, params, has_aux=True)
        loss, loss_cotangent = jax.value_and_grad(supervised_loss)(outputs, y)
        (ce_grads,) = backward(loss_cotangent)
        (magnitude_grads,) = backward(jax.grad(scramble.output_magnitude)(outputs))
        channels = {i: eds[i + 1].shape[-1] for i in scored}
        partfs = jax.lax.stop_gradient(scramble.participation_from_grads(model, magnitude_grads, channels, consumers))
        eds = jax.lax.stop_gradient(eds)
        keys = jax.random.split(scramble_key, settings.num_scrambles)
        size = settings.sds_size or max(1, len(x) // settings.num_scrambles)

        def loss2_fn(p):
            nics = scramble.layer_nics(model, {"params": p, **model_state}, eds, keys, scored, size=size, rho=rho,
                                       **options)
            hypersats = {i: scramble.hypersat(*nics[i]) for i in scored}
            return scramble.loss2(hypersats, partfs), hypersats

        (loss2, hypersats), loss2_grads = jax.value_and_grad(loss2_fn, has_aux=True)(params)
        ce_weight = jnp.where(step < warmup_steps, 0.0, settings.ce_weight)
        grads = mix(ce_grads, loss2_grads, ce_weight, settings.loss2_weight)
        metrics = {"loss": loss, "accuracy": train.accuracy(outputs, y), "loss2": loss2,
                   "hypersat": jnp.mean(jnp.concatenate([hypersats[i] for i in scored])), "ce_weight": ce_weight}
        return grads, new_state, metrics

    return objective


# ---------------------------------------------------------------------------------------------------------
# Weight concentration


def concentrate(grad: jax.Array, weight: jax.Array, per_neuron: bool) -> jax.Array:
    """``grad |w|`` for connection weights (rank >= 2, neuron axis last); with ``per_neuron``,
    ``grad |w| / max |w|`` over the neuron's weights.  Biases (rank < 2) pass unchanged: they start at 0,
    where a multiplicative update would keep them forever."""
    if weight.ndim < 2:
        return grad
    factor = jnp.abs(weight)
    if per_neuron:
        peak = jnp.max(factor, axis=tuple(range(weight.ndim - 1)), keepdims=True)
        factor = factor / jnp.where(peak > 0, peak, 1.0)
    return grad * factor


def weight_concentration(per_neuron: bool = False) -> optax.GradientTransformation:
    """Weight concentration (sec. 4): multiplies the gradient of every weight by its magnitude, so that
    large weights move more and the weights of a neuron spread apart (a few large, most near 0)."""

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("weight_concentration needs the parameters: call update(grads, state, params)")
        return jax.tree.map(lambda g, w: concentrate(g, w, per_neuron), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


train.register_objective("andor", andor_objective)
train.register_gradient_transform(
    "weight_concentration", lambda config: weight_concentration(settings_of(config).concentration_per_neuron))
