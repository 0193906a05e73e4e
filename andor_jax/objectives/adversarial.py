"""Adversarial training with several attacks per batch (``train.objective = "adversarial"``).

Madry et al. 2018 ("Towards deep learning models resistant to adversarial attacks") train on adversarial
points of the current network; the CARSO thesis (Ballarin 2022) trains its classifier on every batch in
five variants: the clean batch, PGD (L-inf, 40 steps of 0.01, random start) at eps 0.15 and 0.3, and FGSM
(L-inf) at eps 0.15 and 0.3.  Settings (``train.adversarial``):

- ``variants``: comma-separated ``clean``, ``pgd:EPS`` or ``fgsm:EPS`` (`parse_variants`);
- ``pgd_steps``, ``pgd_step_size``: the inner PGD (40 and 0.01 in the thesis);
- ``domain``: the input box the attacks clip to (the data's domain).

The adversarial points come from the library's jit-compiled attacks (`andor_jax.attacks.pgd`,
`andor_jax.attacks.fgsm`) against the network in inference mode (running BatchNorm statistics, no
dropout), with the parameters held fixed (no gradient flows through the attack).  Two differences from the
author's code, both stated in the README:

- the author takes one optimiser step per variant (five steps per batch); the engine takes one step per
  batch, so here the loss is the *mean* of the five variants' losses, each computed in training mode on its
  own batch (BatchNorm statistics updated variant after variant, as five steps would);
- the library's PGD returns, for an input it breaks, the first misclassified iterate rather than the
  last one: early-stopped PGD, as in "friendly" adversarial training (Zhang et al. 2020, "Attacks which do
  not kill training make adversarial learning stronger"); for inputs it does not break, the last iterate.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from andor_jax import attacks
from andor_jax.objectives import Objective, apply_model, stateless
from andor_jax.objectives.losses import accuracy, get_loss

ATTACK_KINDS = ("pgd", "fgsm")
THESIS_VARIANTS = "clean,pgd:0.15,pgd:0.3,fgsm:0.15,fgsm:0.3"


def parse_variants(text: str) -> tuple[tuple[str, float], ...]:
    """``"clean,pgd:0.15,fgsm:0.3"`` -> ``(("clean", 0.0), ("pgd", 0.15), ("fgsm", 0.3))``."""
    variants = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, eps = item.partition(":")
        if kind == "clean" and not eps:
            variants.append(("clean", 0.0))
            continue
        if kind not in ATTACK_KINDS or not eps:
            raise ValueError(f"bad adversarial variant {item!r}: use clean, pgd:EPS or fgsm:EPS")
        try:
            value = float(eps)
        except ValueError as err:
            raise ValueError(f"bad eps in adversarial variant {item!r}") from err
        if value <= 0:
            raise ValueError(f"eps must be > 0 in adversarial variant {item!r}")
        variants.append((kind, value))
    if not variants:
        raise ValueError(f"no adversarial variants in {text!r}")
    return tuple(variants)


def variant_name(kind: str, eps: float) -> str:
    """The metric suffix of a variant: ``clean``, ``pgd_0.15``."""
    return kind if kind == "clean" else f"{kind}_{eps:g}"


def perturb(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array, key: jax.Array, kind: str,
            eps: float, *, domain: Sequence[float], pgd_steps: int, pgd_step_size: float) -> jax.Array:
    """The batch ``x`` moved by the variant's attack against ``logits_fn`` (``x`` itself for ``clean``),
    with no gradient flowing back through the attack."""
    if kind == "clean":
        return x
    if kind == "pgd":
        result = attacks.pgd(logits_fn, x, y, key, eps=eps, domain=tuple(domain), norm="linf", steps=pgd_steps,
                             step_size=pgd_step_size, random_start=True, stop_when_all_broken=False)
    else:
        result = attacks.fgsm(logits_fn, x, y, key, eps=eps, domain=tuple(domain))
    return jax.lax.stop_gradient(result.x_adv)


class VariantAttacks(NamedTuple):
    """The attacked variants of every training batch (module docstring) and the attacks' settings."""

    variants: tuple[tuple[str, float], ...]
    domain: tuple[float, float]
    pgd_steps: int
    pgd_step_size: float

    @classmethod
    def from_settings(cls, settings) -> "VariantAttacks":
        """From a config block with ``variants``, ``domain``, ``pgd_steps`` and ``pgd_step_size``."""
        return cls(parse_variants(settings.variants), tuple(settings.domain), int(settings.pgd_steps),
                   float(settings.pgd_step_size))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(variant_name(kind, eps) for kind, eps in self.variants)

    def inputs(self, logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array, y: jax.Array,
               key: jax.Array) -> list[jax.Array]:
        """The batch in each variant, attacked against ``logits_fn`` with its own key from ``key``."""
        keys = jax.random.split(key, len(self.variants))
        return [perturb(logits_fn, x, y, variant_key, kind, eps, domain=self.domain, pgd_steps=self.pgd_steps,
                        pgd_step_size=self.pgd_step_size)
                for variant_key, (kind, eps) in zip(keys, self.variants)]


def adversarial_objective(model, loss, variant_attacks: VariantAttacks) -> Objective:
    """Gradients of ``(1/V) sum_v loss(model(x_v; train), y)`` over the ``V`` variants ``x_v`` of the batch
    (module docstring).  Metrics: ``loss`` (the mean), ``accuracy`` (clean batch, training mode), and
    ``loss_<variant>``, ``accuracy_<variant>`` of each variant."""

    def update(params, model_state, x, y, key, rho, step):
        def inference_logits(inputs):
            return model.apply({"params": params, **model_state}, inputs, train=False)

        attack_key, dropout_key = jax.random.split(key)
        inputs = variant_attacks.inputs(inference_logits, x, y, attack_key)
        dropout_keys = jax.random.split(dropout_key, len(inputs))

        def loss_fn(p):
            state, losses, accuracies = model_state, [], []
            for x_variant, variant_key in zip(inputs, dropout_keys):
                outputs, state = apply_model(model, p, state, x_variant, train=True, rho=rho, key=variant_key)
                losses.append(loss(outputs, y))
                accuracies.append(accuracy(outputs, y))
            return jnp.mean(jnp.stack(losses)), (state, losses, accuracies)

        (value, (new_state, losses, accuracies)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        metrics = {"loss": value}
        for name, variant_loss, variant_accuracy in zip(variant_attacks.names, losses, accuracies):
            metrics[f"loss_{name}"] = variant_loss
            metrics[f"accuracy_{name}"] = variant_accuracy
        metrics["accuracy"] = metrics.get("accuracy_clean", accuracies[0])
        return grads, new_state, metrics

    return stateless(update)


def get_objective(model, train_config, steps_per_epoch: int = 1) -> Objective:
    """The objective of ``train.adversarial`` (module docstring) with the loss ``train.loss``."""
    return adversarial_objective(model, get_loss(train_config.loss),
                                 VariantAttacks.from_settings(train_config.adversarial))
