"""Quickstart: the embedded default that `andor-jax run` trains and evaluates in a few minutes.

A small MWD network (784-128-128-10, NEG/U/NEG, pseudo-gradients, as in `mwd_small_mnist`) trained for 20
epochs on whichever MNIST source is found first (offline: the embedded 5,000-image sample), then attacked
with true and pseudo-gradients ([psd]) and certified by interval bound propagation on 300 test images.
The attacks are lighter than the full suite (PGD with 2 restarts, Square with 300 queries); the configs of
the paper's experiments run the full suite.

Variant ``small`` (``quickstart:small``): the same pipeline in seconds, for tests, CI and notebooks: a
784-32-32-10 network, 2 epochs of 500 images, FGSM and PGD ([psd] too) and certification on 100 images.
"""
import ml_collections

from andor_jax.config import check_variant, small_variant
from andor_jax.configs.mwd_small_mnist import get_config as small_mwd_config

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = small_mwd_config()
    config.train.epochs = 20
    config.train.checkpoint_every_steps = 200
    config.evaluate.attacks = ["fgsm", "ifgsm", "pgd", "square"]
    config.evaluate.attack_settings = ml_collections.ConfigDict(
        {"pgd": {"restarts": 2}, "square": {"n_queries": 300}})
    config.evaluate.eps = [0.1, 0.2, 0.3]
    config.evaluate.limit = 300
    config.evaluate.batch_size = 300
    config.evaluate.pseudo_gradient_attacks = True
    config.evaluate.certify = True
    if arg == "small":
        config.model.hidden = (32, 32)
        small_variant(config)
    return config
