"""The AND/OR objective (``train.objective = "andor"``) and weight concentration
(``train.gradient_transforms = ["andor_jax.objectives.andor:weight_concentration"]``): Fontana, arXiv
2102.07389, sec. 4-5, with the details of the author's code (issue 14, ``shared/notes/andor.md``).

Each step (the paper's training cycle; the L1 projection is the layers' `project`, applied by the engine):

1. one forward pass keeps the EDS; its backward pass runs twice, for the cross-entropy gradient ``g_ce``
   and for the gradient of ``mean |f(x)|`` that gives the participation factors;
2. ``num_scrambles`` scrambled datasets of ``sds_size`` examples (type ``scramble``, `andor_jax.scramble`)
   and loss2; its gradient ``g_2``.  With ``output_loss2`` (the author's) the last layer has a term too:
   its neurons' hypersat of nics, weighted by their participation ``sum_batch |d mean|f| / d f_k|``;
3. the two gradients are mixed (``mix``):

   * ``"per_neuron"`` (the author's code): every kernel gradient (rank >= 2, neuron axis last) becomes a
     per-neuron direction (`neuron_direction`),
     ``d = normalise(g max(floor, (|w| / max |w|)^a) (|g| / max |g|)^c)``, maxima and ``normalise`` over
     each neuron's weights, ``a = weight_power`` (0.85: weight concentration), ``c = grad_power`` (0.5),
     so that each neuron's largest step is 1 however small its raw gradient (the floor trap of issue 14:
     raw gradients of 1e-13 in the first layer); biases get ``bias_scale`` (0.5) times the raw gradient;
     then ``g = clip(ce_weight d_ce + loss2_weight d_2, -1, 1)``;
   * ``"per_layer"``: ``g = clip(ce_weight g_ce / max|g_ce| + loss2_weight g_2 / max|g_2|, -1, 1)``, the
     maxima over each parameter array;
   * ``"weighted"``: ``g = ce_weight g_ce + loss2_weight g_2``.

The author trains the first 20 epochs (6,000 steps at batch 200 on 60,000 images) on loss2 alone:
``loss2_only_steps``, counted in steps so that a run on a subset neither stretches nor shrinks it.  During
it the cross-entropy kernel directions are 0 (biases keep theirs) and loss2 has ``warmup_loss2_weight``
(the author's 0.07); after it ``loss2_weight`` (0.7).  loss2's direction is dropped while loss2 <=
``loss2_floor`` (0.05).  With ``half_life_steps > 0`` (not the author's) the mixed direction is scaled by
``0.5^(step / half_life_steps)``: a learning-rate decay for the normalised directions, whose size is the
objective's choice.

Training health (`health_metrics`, metrics of every step, averaged per epoch into ``metrics.jsonl``, and
printed at the start of every epoch by ``on_epoch`` from the first ``health_examples`` training images):
per neuron layer, the share of neurons on the AND activation's floor (or above its ceiling) for every
example, and the mean hypersat.  A network stuck on the floor says so before its first step.
"""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from andor_jax import scramble
from andor_jax.layers.andor import on_ceiling, on_floor
from andor_jax.layers.base import format_path, layer_at
from andor_jax.objectives import Objective
from andor_jax.objectives.losses import accuracy, get_loss

MIXES = ("per_neuron", "per_layer", "weighted")


def default_settings() -> ml_collections.ConfigDict:
    """The ``train.andor`` block of a config, with the author's choices."""
    settings = ml_collections.ConfigDict()
    settings.scramble = "B"               # A: scramble the input and propagate; B: scramble at every layer
    settings.num_scrambles = 8            # independent scrambled datasets per step (vmapped)
    settings.sds_size = 0                 # examples per scrambled dataset; 0: batch size / num_scrambles
    settings.unit = "element"             # scrambling unit of conv maps: element | location | channel
    settings.mix = "per_neuron"           # per_neuron | per_layer | weighted
    settings.ce_weight = 1.0
    settings.loss2_weight = 0.7
    settings.warmup_loss2_weight = 0.07   # loss2 weight during the loss2-only warm-up
    settings.loss2_floor = 0.05           # loss2's direction is dropped while loss2 <= this
    settings.loss2_only_steps = 6000      # first steps on loss2 alone (cross-entropy kernel directions 0)
    settings.output_loss2 = True          # a loss2 term for the last layer's neurons
    settings.weight_power = 0.85          # per_neuron: (|w| / max |w|)^weight_power
    settings.grad_power = 0.5             # per_neuron: (|g| / max |g|)^grad_power
    settings.concentration_floor = 0.0    # per_neuron: lower bound of the weight factor (> 0: weights at 0 move)
    settings.bias_scale = 0.5             # per_neuron: bias directions are bias_scale x the raw gradient
    settings.half_life_steps = 0          # > 0: directions scaled by 0.5^(step / half_life_steps); 0: constant
    settings.concentration_per_neuron = False  # weight_concentration transform: |w| / max |w| of the neuron
    settings.health_examples = 500        # training images of the health line printed every epoch (0: none)
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
    if settings.unit not in scramble.SCRAMBLE_UNITS:
        raise ValueError(f"unknown train.andor.unit {settings.unit!r}; choose one of {scramble.SCRAMBLE_UNITS}")
    if settings.loss2_only_steps < 0:
        raise ValueError(f"train.andor.loss2_only_steps must be >= 0, got {settings.loss2_only_steps}")
    if settings.num_scrambles < 1 or settings.sds_size < 0:
        raise ValueError(f"train.andor.num_scrambles must be >= 1 and sds_size >= 0, got "
                         f"{settings.num_scrambles} and {settings.sds_size}")
    if settings.half_life_steps < 0:
        raise ValueError(f"train.andor.half_life_steps must be >= 0, got {settings.half_life_steps}")
    if not 0 <= settings.concentration_floor <= 1:
        raise ValueError(f"train.andor.concentration_floor must be in [0, 1], got {settings.concentration_floor}")
    return settings


# ---------------------------------------------------------------------------------------------------------
# Gradient mixing


def max_normalised(grad: jax.Array) -> jax.Array:
    """``grad / max |grad|`` over the whole array (0 stays 0)."""
    peak = jnp.max(jnp.abs(grad))
    return grad / jnp.where(peak > 0, peak, 1.0)


def neuron_normalised(values: jax.Array) -> jax.Array:
    """``values / max |values|`` per neuron (the last axis), the max over every other axis: each neuron's
    largest entry becomes +-1 (a row of zeros stays 0)."""
    peak = jnp.max(jnp.abs(values), axis=tuple(range(values.ndim - 1)), keepdims=True)
    return values / jnp.where(peak > 0, peak, 1.0)


def neuron_direction(grad: jax.Array, weight: jax.Array, weight_power: float, grad_power: float,
                     floor: float = 0.0) -> jax.Array:
    """The author's per-neuron direction of a kernel (neuron axis last):

        d = normalise(g max(floor, (|w| / max |w|)^a) (|g| / max |g|)^c)

    the maxima and ``normalise`` (the row divided by its largest magnitude, `neuron_normalised`) over each
    neuron's weights, ``a = weight_power``, ``c = grad_power``.  The weight factor is weight concentration
    (large weights move more, so a neuron's weights spread apart); ``floor > 0`` lets weights at 0 move
    too: the guard against the collapse of issue 14, where the positive weights of a neuron reach 0 and
    stay there (a factor ``0^a``), and the author's projection (``N <= P``) then zeroes the negative ones.
    """
    weight_factor = jnp.maximum(floor, jnp.abs(neuron_normalised(weight)) ** weight_power)
    grad_factor = jnp.abs(neuron_normalised(grad)) ** grad_power
    return neuron_normalised(grad * weight_factor * grad_factor)


def per_neuron_directions(grads, params, settings: ml_collections.ConfigDict):
    """`neuron_direction` of every kernel (rank >= 2) and ``bias_scale`` times every other gradient."""
    def direction(grad, weight):
        if weight.ndim < 2:
            return settings.bias_scale * grad
        return neuron_direction(grad, weight, settings.weight_power, settings.grad_power,
                                settings.concentration_floor)
    return jax.tree.map(direction, grads, params)


def per_neuron_mix(ce_grads, loss2_grads, params, settings: ml_collections.ConfigDict, ce_kernel_weight,
                   loss2_weight):
    """``clip(w_ce d_ce + loss2_weight d_2, -1, 1)`` of the `per_neuron_directions`, with ``w_ce`` =
    ``ce_kernel_weight`` for kernels (0 during the warm-up) and ``ce_weight`` for biases."""
    ce_dirs = per_neuron_directions(ce_grads, params, settings)
    loss2_dirs = per_neuron_directions(loss2_grads, params, settings)

    def mix(ce, l2):
        weight = ce_kernel_weight if ce.ndim >= 2 else settings.ce_weight
        return jnp.clip(weight * ce + loss2_weight * l2, -1.0, 1.0)
    return jax.tree.map(mix, ce_dirs, loss2_dirs)


def per_layer_mix(ce_grads, loss2_grads, ce_weight, loss2_weight):
    """Per parameter array: ``clip(ce_weight g_ce / max|g_ce| + loss2_weight g_2 / max|g_2|, -1, 1)``."""
    return jax.tree.map(lambda ce, l2: jnp.clip(ce_weight * max_normalised(ce) + loss2_weight * max_normalised(l2),
                                                -1.0, 1.0), ce_grads, loss2_grads)


def weighted_mix(ce_grads, loss2_grads, ce_weight, loss2_weight):
    """``ce_weight g_ce + loss2_weight g_2``."""
    return jax.tree.map(lambda ce, l2: ce_weight * ce + loss2_weight * l2, ce_grads, loss2_grads)


# ---------------------------------------------------------------------------------------------------------
# Training health


def neuron_fraction(mask: jax.Array) -> jax.Array:
    """The share of neurons (last axis) for which ``mask`` holds at every example and position."""
    return jnp.mean(jnp.all(mask.reshape(-1, mask.shape[-1]), axis=0))


def health_metrics(nics: dict, hypersats: dict) -> dict[str, jax.Array]:
    """For every neuron layer (path ``p``, nics of the batch ``nics[p]``): ``floor/p`` and ``ceiling/p``,
    the share of its neurons whose nics is on the AND activation's floor (or above its ceiling) at every
    example and position of the batch (`andor_jax.layers.andor.on_floor`, `on_ceiling`), and, where it
    has a loss2 term, ``hypersat/p``, its mean hypersat."""
    metrics = {}
    for path, values in nics.items():
        name = format_path(path)
        metrics[f"floor/{name}"] = neuron_fraction(on_floor(values))
        metrics[f"ceiling/{name}"] = neuron_fraction(on_ceiling(values))
        if path in hypersats:
            metrics[f"hypersat/{name}"] = jnp.mean(hypersats[path])
    return metrics


def health_line(metrics: dict, epoch: int) -> str:
    """``health at the start of epoch 3: layers_0 floor 0.00 ceiling 0.08 hypersat 0.051, ...``."""
    layers = sorted({key.split("/", 1)[1] for key in metrics if key.startswith("floor/")},
                    key=lambda name: [int(p) if p.isdigit() else p for p in name.replace("_", "/").split("/")])
    parts = []
    for name in layers:
        text = f"{name} floor {float(metrics[f'floor/{name}']):.2f} ceiling {float(metrics[f'ceiling/{name}']):.2f}"
        if f"hypersat/{name}" in metrics:
            text += f" hypersat {float(metrics[f'hypersat/{name}']):.3f}"
        parts.append(text)
    return f"health at the start of epoch {epoch + 1}: " + ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------
# The objective


def nics_scale(layer) -> float:
    """What turns a neuron layer's output into nics: the scale of a raw-output AND/OR layer, else 1."""
    return layer.scale if getattr(layer, "raw_output", False) else 1.0


def training_trace(model, params, model_state, x: jax.Array, rho, key: jax.Array | None, train: bool = True):
    """The EDS (`andor_jax.layers.base.Trace`) of a forward pass (dropout drawn from ``key``, batch
    statistics updated in training) and the new non-parameter collections."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": key} if key is not None else None
    if train and model_state:
        return model.apply(variables, x, train=True, rho=rho, rngs=rngs, method="outputs", mutable=list(model_state))
    return model.apply(variables, x, train=train, rho=rho, rngs=rngs, method="outputs"), model_state


def statistics(model, settings, links: scramble.Connections, params, model_state, eds, partfs, key, rho):
    """loss2 of the batch whose EDS is ``eds`` and its gradient with respect to ``params``:
    ``(loss2, hypersats, grads)``, hypersat of every layer with a term (those in ``partfs``)."""
    scored = list(partfs)
    scales = {path: nics_scale(layer_at(model, path)) for path in scored}
    keys = jax.random.split(key, settings.num_scrambles)
    size = settings.sds_size or max(1, eds.inputs[()].shape[0] // settings.num_scrambles)

    def loss2_fn(p):
        nics = scramble.layer_nics(model, {"params": p, **model_state}, eds, keys, scored, kind=settings.scramble,
                                   size=size, unit=settings.unit, rho=rho)
        hypersats = {path: scramble.hypersat(real / scales[path], scrambled / scales[path])
                     for path, (real, scrambled) in nics.items()}
        return scramble.loss2(hypersats, partfs), hypersats

    (loss2, hypersats), grads = jax.value_and_grad(loss2_fn, has_aux=True)(params)
    return loss2, hypersats, grads


def participation(links: scramble.Connections, model, magnitude_grads, magnitude_cotangent, output_loss2: bool):
    """Participation factors of the neuron layers with consumers (`andor_jax.scramble.participation_from_grads`)
    and, with ``output_loss2``, of the last layers' neurons: ``sum_batch |d mean|f| / d f_k|``."""
    partfs = scramble.participation_from_grads(model, magnitude_grads, links)
    if output_loss2:
        outputs = [path for path, consumers in links.consumers.items() if not consumers]
        weight = jnp.sum(jnp.abs(magnitude_cotangent.reshape(-1, magnitude_cotangent.shape[-1])), axis=0)
        for path in outputs:
            partfs[path] = weight if links.channels[path] == weight.shape[0] else jnp.ones(links.channels[path])
    return jax.lax.stop_gradient(partfs)


def andor_objective(model, train_config: ml_collections.ConfigDict) -> Objective:
    """The `Objective` of the module docstring; no state.  Metrics: ``loss`` (the supervised loss),
    ``accuracy``, ``loss2``, ``hypersat`` (mean over the loss2 neurons), ``ce_weight`` (of the kernels:
    0 during the warm-up) and the training health (`health_metrics`)."""
    settings = settings_of(train_config)
    supervised_loss = get_loss(train_config.loss)

    def layer_nics(links, eds):
        return {path: eds.outputs[path] / nics_scale(layer_at(model, path)) for path in links.channels}

    def update(params, model_state, objective_state, x, y, key, rho, step):
        dropout_key, scramble_key = jax.random.split(key)
        links = scramble.connections(model, {"params": params, **model_state}, x)

        def forward(p):
            eds, new_state = training_trace(model, p, model_state, x, rho, dropout_key)
            return eds.outputs[()], (eds, new_state)

        outputs, backward, (eds, new_state) = jax.vjp(forward, params, has_aux=True)
        loss, loss_cotangent = jax.value_and_grad(supervised_loss)(outputs, y)
        (ce_grads,) = backward(loss_cotangent)
        magnitude_cotangent = jax.grad(scramble.output_magnitude)(outputs)
        (magnitude_grads,) = backward(magnitude_cotangent)
        partfs = participation(links, model, magnitude_grads, magnitude_cotangent, settings.output_loss2)
        eds = jax.lax.stop_gradient(eds)
        loss2, hypersats, loss2_grads = statistics(model, settings, links, params, model_state, eds, partfs,
                                                   scramble_key, rho)
        warm = step < settings.loss2_only_steps
        ce_weight = jnp.where(warm, 0.0, settings.ce_weight)
        loss2_weight = jnp.where(loss2 > settings.loss2_floor,
                                 jnp.where(warm, settings.warmup_loss2_weight, settings.loss2_weight), 0.0)
        if settings.mix == "per_neuron":
            grads = per_neuron_mix(ce_grads, loss2_grads, params, settings, ce_weight, loss2_weight)
        else:
            mix = per_layer_mix if settings.mix == "per_layer" else weighted_mix
            grads = mix(ce_grads, loss2_grads, ce_weight, loss2_weight)
        if settings.half_life_steps:
            decay = 0.5 ** (step / settings.half_life_steps)
            grads = jax.tree.map(lambda g: decay * g, grads)
        metrics = {"loss": loss, "accuracy": accuracy(outputs, y), "loss2": loss2,
                   "hypersat": jnp.mean(jnp.concatenate([h for h in hypersats.values()])), "ce_weight": ce_weight,
                   **health_metrics(layer_nics(links, eds), hypersats)}
        return grads, new_state, objective_state, metrics

    @jax.jit
    def health(params, model_state, x, key):
        links = scramble.connections(model, {"params": params, **model_state}, x)
        eds, _ = training_trace(model, params, model_state, x, None, None, train=False)
        magnitude_cotangent = jax.grad(scramble.output_magnitude)(eds.outputs[()])
        magnitude_grads = jax.grad(lambda p: scramble.output_magnitude(
            model.apply({"params": p, **model_state}, x)))(params)
        partfs = participation(links, model, magnitude_grads, magnitude_cotangent, settings.output_loss2)
        _, hypersats, _ = statistics(model, settings, links, params, model_state, eds, partfs, key, None)
        return health_metrics(layer_nics(links, eds), hypersats)

    def on_epoch(params, model_state, objective_state, dataset, epoch):
        """Prints the health line of the first ``health_examples`` training images (stderr)."""
        if settings.health_examples:
            x = np.asarray(dataset.x_train[:settings.health_examples])
            metrics = jax.device_get(health(params, model_state, x, jax.random.PRNGKey(epoch)))
            print(health_line(metrics, epoch), file=sys.stderr, flush=True)
        return objective_state

    return Objective(lambda params, model_state: {}, update, on_epoch)


def get_objective(model, train_config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> Objective:
    """`andor_objective` (the warm-up is counted in steps: ``steps_per_epoch`` is not needed)."""
    return andor_objective(model, train_config)


# ---------------------------------------------------------------------------------------------------------
# Weight concentration as a gradient transformation (for the ``per_layer`` and ``weighted`` mixes)


def concentrate(grad: jax.Array, weight: jax.Array, per_neuron: bool) -> jax.Array:
    """``grad |w|`` for kernels (rank >= 2, neuron axis last); with ``per_neuron``, ``grad |w| / max |w|``
    over the neuron's weights.  Biases (rank < 2) pass unchanged: they start at 0, where a multiplicative
    update would keep them forever."""
    if weight.ndim < 2:
        return grad
    return grad * jnp.abs(neuron_normalised(weight) if per_neuron else weight)


def concentration(per_neuron: bool = False) -> optax.GradientTransformation:
    """Weight concentration (sec. 4): multiplies the gradient of every weight by its magnitude, so that
    large weights move more and the weights of a neuron spread apart (a few large, most near 0)."""

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("weight_concentration needs the parameters: call update(grads, state, params)")
        return jax.tree.map(lambda g, w: concentrate(g, w, per_neuron), updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def weight_concentration(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The factory of ``"andor_jax.objectives.andor:weight_concentration"`` (``train.andor.
    concentration_per_neuron``)."""
    return concentration(settings_of(train_config).concentration_per_neuron)
