"""Training CARSO's purifier, a conditional VAE (``train.objective = "cvae"``; Ballarin 2022, thesis; the
author's code, ``shared/notes/carso.md``).

For every batch the frozen classifier is attacked (the library's PGD and FGSM, L-inf, as in
`andor_jax.objectives.adversarial`: ``train.cvae.variants``, by default clean, PGD 0.15 / 0.3 with 40 steps
of 0.01 and a random start, FGSM 0.15 / 0.3), and the purifier reconstructs the *clean* image from each
variant ``x_v``, conditioned on the classifier's representation of ``x_v``.  Per example the loss is the
negative ELBO with weight ``beta`` (``train.cvae.beta``, 1 in the thesis) on the KL term,

    L(x_v, x) = sum_pixels BCE(sigmoid(d(z, c(r(x_v)))), x) + beta KL(N(mu, s^2) || N(0, I)),
    KL = -1/2 sum_j (1 + log s_j^2 - mu_j^2 - s_j^2),      z = mu + s e,  e ~ N(0, I),

summed over the batch (the code's sum reduction), and the objective is the mean over the variants: the
author takes one optimiser step per variant, the engine one step per batch (the same difference as in
`andor_jax.objectives.adversarial`).  The classifier runs in inference mode throughout; it stays frozen
because the config trains only the purifier (``train.trainable = ["purifier"]``), not because of this
objective.  Metrics are per example: ``loss``, ``bce``, ``kl`` (the mean over variants),
``loss_<variant>``, and ``accuracy``: the classifier's accuracy on the reconstructions (one posterior draw
each, mean over the variants; a training monitor, not CARSO's prediction, which decodes prior draws).

Stability (``configs/carso_mnist.py`` clips gradients to global norm 1).  The loss is kept summed, as the
thesis's, so its gradient is a sum of 256 x 784 pixel terms, not an average.  RAdam (Liu et al. 2020) takes its
first steps, while the variance rectification is undefined (``rho_t < 5``, steps 1-5 with b2 = 0.999), as
momentum SGD on the raw gradient, ``lr * m_hat``: on full MNIST the pixel logits reached 2e5 at step 2
and 1e20 at step 3, and the loss was NaN at step 5, whatever the formulation (the BCE here is already
computed from the logits, and ``log s^2`` overflowed only after the weights had).  Clipped, the same
run stayed finite and went from 561 to 149 per example in 150 steps.  PyTorch's RAdam has the same warm-up; the
author's sigmoid + ``BCELoss`` may have been held back by a saturated pixel's vanishing gradient, which
BCE from logits does not have.  Clipping bounds the warm-up steps by ``lr``; afterwards RAdam normalises
each coordinate, so clipping changes its steps only through the variation of the gradient's norm.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from andor_jax.objectives import Objective, stateless
from andor_jax.objectives.adversarial import VariantAttacks
from andor_jax.objectives.losses import accuracy


def kl_to_standard_normal(mu: jax.Array, log_variance: jax.Array) -> jax.Array:
    """``KL(N(mu, diag s^2) || N(0, I))`` per example: ``-1/2 sum_j (1 + log s_j^2 - mu_j^2 - s_j^2)``."""
    return -0.5 * jnp.sum(1.0 + log_variance - mu ** 2 - jnp.exp(log_variance), axis=-1)


def negative_elbo(pixel_logits: jax.Array, target: jax.Array, mu: jax.Array, log_variance: jax.Array,
                  beta: float) -> tuple[jax.Array, jax.Array]:
    """Per example ``(summed pixel BCE, KL)`` of a reconstruction; the loss is ``bce + beta kl``."""
    bce = jnp.sum(optax.sigmoid_binary_cross_entropy(pixel_logits, target.reshape(pixel_logits.shape)), axis=-1)
    return bce, kl_to_standard_normal(mu, log_variance)


def submodel_variables(params, model_state, name: str) -> dict:
    """The variables of the sub-network ``name`` (its params and each collection's sub-tree)."""
    return {"params": params[name], **{c: tree[name] for c, tree in model_state.items() if name in tree}}


def cvae_objective(model, variant_attacks: VariantAttacks, *, beta: float) -> Objective:
    """The objective of the module docstring for a `andor_jax.models.carso.Carso` model."""

    def update(params, model_state, x, y, key, rho, step):
        classifier_variables = submodel_variables(params, model_state, "classifier")

        def classifier_logits(inputs):
            return model.classifier.apply(classifier_variables, inputs, train=False)

        attack_key, sample_key, dropout_key = jax.random.split(key, 3)
        inputs = variant_attacks.inputs(classifier_logits, x, y, attack_key)
        sample_keys = jax.random.split(sample_key, len(inputs))
        dropout_keys = jax.random.split(dropout_key, len(inputs))

        def loss_fn(p):
            state, terms, accuracies = model_state, [], []
            for x_variant, variant_sample_key, variant_dropout_key in zip(inputs, sample_keys, dropout_keys):
                (pixel_logits, mu, log_variance), state = model.apply(
                    {"params": p, **state}, x_variant, train=True, method="reconstruct", mutable=list(state),
                    rngs={"sample": variant_sample_key, "dropout": variant_dropout_key})
                terms.append(negative_elbo(pixel_logits, x, mu, log_variance, beta))
                images = jax.lax.stop_gradient(jax.nn.sigmoid(pixel_logits)).reshape(x.shape)
                accuracies.append(accuracy(classifier_logits(images), y))
            totals = [jnp.sum(bce + beta * kl) for bce, kl in terms]
            return jnp.mean(jnp.stack(totals)), (state, terms, accuracies)

        (_, (new_state, terms, accuracies)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        bce = jnp.mean(jnp.stack([jnp.mean(b) for b, _ in terms]))
        kl = jnp.mean(jnp.stack([jnp.mean(k) for _, k in terms]))
        metrics = {"loss": bce + beta * kl, "bce": bce, "kl": kl, "accuracy": jnp.mean(jnp.stack(accuracies))}
        for name, (b, k) in zip(variant_attacks.names, terms):
            metrics[f"loss_{name}"] = jnp.mean(b + beta * k)
        return grads, new_state, metrics

    return stateless(update)


def get_objective(model, train_config, steps_per_epoch: int = 1) -> Objective:
    """The objective of ``train.cvae`` (``variants``, ``beta``, ``pgd_steps``, ``pgd_step_size``,
    ``domain``)."""
    settings = train_config.cvae
    return cvae_objective(model, VariantAttacks.from_settings(settings), beta=float(settings.beta))
