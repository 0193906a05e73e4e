"""The classifier of CARSO on MNIST (Ballarin 2022, thesis; `andor_jax.models.carso_classifier`):
784-200-80-10, Dense -> Mish -> BatchNorm -> Dropout 0.15, inputs standardised inside the model, RAdam
(0.9, 0.999, 1e-8) at lr 1e-3, batch 256, cross-entropy.

Variants (``--config carso_classifier_mnist:VARIANT``):

- none: plain training (thesis: 98.40 % clean);
- ``adversarial``: the thesis's adversarial training (`andor_jax.objectives.adversarial`): every batch clean,
  PGD 0.15, PGD 0.3 (L-inf, 40 steps of 0.01, random start), FGSM 0.15, FGSM 0.3, the mean of the five
  losses per optimiser step (the author: one step per variant); thesis: 97.17 % clean;
- ``small``, ``adversarial_small``: a narrow network (32-16) on 500 images for 2 epochs, PGD of 3 steps: for
  tests and notebooks.

No learning-rate schedule: the engine has none (the thesis reduces the rate by 0.7 after 10 epochs without
improvement, over up to 300 epochs; the runs here are far shorter).  Evaluation: the thesis's attacks
(FGSM, PGD, DeepFool, L-inf) at eps 0.15 / 0.3 / 0.5, and certification by interval bounds (every layer
has a rule).
"""
import ml_collections

from andor_jax.config import base_config, check_variant, small_variant
from andor_jax.objectives.adversarial import THESIS_VARIANTS

VARIANTS = ("adversarial", "small", "adversarial_small")


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.model.name = "carso_classifier"
    config.model.hidden = (200, 80)
    config.model.dropout = 0.15
    config.train.optimizer = "radam"
    config.train.learning_rate = 1e-3
    config.train.batch_size = 256
    config.train.epochs = 30
    config.train.loss = "cross_entropy"
    config.train.checkpoint_every_steps = 200
    config.train.adversarial = ml_collections.ConfigDict({
        "variants": THESIS_VARIANTS, "pgd_steps": 40, "pgd_step_size": 0.01, "domain": (0.0, 1.0)})
    config.evaluate.attacks = ["fgsm", "pgd", "deepfool"]
    config.evaluate.eps = [0.15, 0.3, 0.5]
    config.evaluate.certify = True
    if arg in ("adversarial", "adversarial_small"):
        config.train.objective = "adversarial"
    if arg in ("small", "adversarial_small"):
        small_variant(config)
        config.model.hidden = (32, 16)
        config.train.batch_size = 40
        config.train.adversarial.pgd_steps = 3
        config.evaluate.eps = [0.15, 0.3]
    return config
