"""CARSO on MNIST (Ballarin 2022, thesis; `andor_jax.models.carso`): the purifier (a conditional VAE with
input and representation compressors) trained on top of a frozen, adversarially trained classifier.

Train the classifier first (``carso_classifier_mnist:adversarial``), then::

    andor-jax train --config carso_mnist --workdir W --config.train.init_from=CLASSIFIER_WORKDIR

The classifier's parameters and BatchNorm statistics go into ``classifier`` (``train.init_from_into``) and
stay frozen (``train.trainable = ["purifier"]``); the purifier learns (`andor_jax.objectives.cvae`) to
reconstruct the clean image from the clean image and from PGD 0.15 / 0.3 and FGSM 0.15 / 0.3 attacks on
the classifier alone, summed BCE + KL (beta 1), RAdam lr 1e-3, batch 256, gradients clipped to global norm 1
(``train.gradient_transforms``; not in the author's code: see `andor_jax.objectives.cvae`).  Inference: 1,500 latent draws
decoded with the input's representation, each classified, then the vote (the thesis).

Evaluation protocols (variants; without one, the ``evaluate`` block is the ``transfer`` protocol; each states n draws, the aggregation, EOT draws and verdict draws in
its report).  A randomised model is judged on every adversarial point by the worst case over
``evaluate.verdict_draws`` (10) independent votes of 1,500 draws, never by one fresh draw.

- ``transfer`` (the thesis): attacks on the classifier alone (``evaluate.attack_model = "classifier"``),
  the adversarial points fed to CARSO: FGSM, PGD, DeepFool (L-inf) at eps 0.15 / 0.3 / 0.5;
- ``end_to_end`` (white-box): gradients through the whole pipeline (representation, compressor,
  reparameterised draws, decoder, classifier) on the differentiable ``mean_logits`` aggregation of 8 draws
  (gradient mode ``[mean_logits]``), EOT over 20 keys per step: APGD-CE, APGD-DLR, PGD-EOT (200 steps of
  0.007, no random start, as Lee & Kim 2023),
  and Square (no gradients) on the real vote; eps 0.15 / 0.3;
- ``fixed_randomness``: the same attacks with the latent draws held fixed (``evaluate.randomness =
  "fixed"``: a deterministic network for the attacker), judged with fresh draws.

``small`` and ``<protocol>_small``: a narrow classifier (32-16) and purifier, 16 draws, 500 images, for
tests and notebooks.  Certification: interval bounds do not apply to the sampler as such (its output is a
vote over random draws, not a function of the input box), so certify the classifier's own work directory
(`carso_classifier_mnist` certifies).
"""
import ml_collections

from andor_jax.config import base_config, check_variant, small_variant
from andor_jax.objectives.adversarial import THESIS_VARIANTS

PROTOCOLS = ("transfer", "end_to_end", "fixed_randomness")
VARIANTS = ("small", *PROTOCOLS, *(f"{p}_small" for p in PROTOCOLS))


def protocol(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """Sets the ``evaluate`` block of the evaluation protocol ``name`` (module docstring)."""
    evaluate = config.evaluate
    evaluate.verdict_draws = 10
    evaluate.certify = False
    if name == "transfer":
        evaluate.attack_model = "classifier"
        evaluate.randomness = "fresh"
        evaluate.attacks = ["fgsm", "pgd", "deepfool"]
        evaluate.eps = [0.15, 0.3, 0.5]
        evaluate.attack_settings = ml_collections.ConfigDict({"pgd": {"steps": 40, "step_size": 0.01, "restarts": 1}})
        return config
    evaluate.attack_model = ""
    evaluate.eot_draws = 20
    evaluate.randomness = "fixed" if name == "fixed_randomness" else "fresh"
    evaluate.attacks = ["apgd-ce[mean_logits]", "apgd-dlr[mean_logits]", "pgd[mean_logits]", "square"]
    evaluate.eps = [0.15, 0.3]
    evaluate.attack_settings = ml_collections.ConfigDict(
        {"pgd": {"steps": 200, "step_size": 0.007, "random_start": False, "restarts": 1}})
    return config


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.model.name = "carso"
    config.model.classifier = ml_collections.ConfigDict({"hidden": (200, 80), "dropout": 0.15})
    config.model.purifier = ml_collections.ConfigDict({})
    config.model.representation_paths = ("layers_2", "layers_6", "layers_10")
    config.model.n_draws = 1500
    config.model.aggregation = "vote"
    config.model.gradient_draws = 8
    config.model.draws_per_chunk = 250
    config.model.examples_per_chunk = 100
    config.train.objective = "cvae"
    config.train.cvae = ml_collections.ConfigDict({
        "variants": THESIS_VARIANTS, "beta": 1.0, "pgd_steps": 40, "pgd_step_size": 0.01, "domain": (0.0, 1.0)})
    config.train.optimizer = "radam"
    config.train.learning_rate = 1e-3
    # RAdam's first 5 steps (rho_t < 5) are momentum SGD on the raw gradient of the summed (not averaged)
    # loss: unclipped, the purifier's parameters blew up and the loss was NaN by step 5 on full MNIST.
    config.train.gradient_transforms = ["clip_by_global_norm"]
    config.train.max_grad_norm = 1.0
    config.train.batch_size = 256
    config.train.epochs = 20
    config.train.checkpoint_every_steps = 200
    config.train.trainable = ["purifier"]
    config.train.init_from_into = "classifier"
    config.evaluate.limit = 1000
    config.evaluate.batch_size = 100
    small = arg is not None and (arg == "small" or arg.endswith("_small"))
    base = "" if arg in (None, "small") else arg.removesuffix("_small")
    if small:
        small_variant(config)
        config.model.classifier.hidden = (32, 16)
        config.model.purifier = ml_collections.ConfigDict({
            "input_widths": (64, 16), "representation_widths": (16, 8), "encoder_widths": (16, 12), "latent": 4,
            "decoder_widths": (32, 64)})
        config.model.n_draws = 16
        config.model.gradient_draws = 2
        config.model.draws_per_chunk = 8
        config.model.examples_per_chunk = 50
        config.train.batch_size = 40
        config.train.cvae.pgd_steps = 3
    protocol(config, base or "transfer")
    if small:
        config.evaluate.verdict_draws = 2
        config.evaluate.eps = [0.15, 0.3]
        if base in ("end_to_end", "fixed_randomness"):
            config.evaluate.eot_draws = 2
            config.evaluate.attack_settings.pgd.steps = 5
    return config
