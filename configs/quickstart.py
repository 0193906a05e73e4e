"""Quickstart: the embedded default that `andor-jax run` trains and evaluates.

A small MWD network (784-128-128-10, NEG/U/NEG, pseudo-gradients, as in `mwd_small_mnist`) trained for a
few epochs on whichever MNIST source is found first (offline: the embedded 5,000-image sample), then
attacked with true and pseudo-gradients and certified by interval bound propagation on 500 test images.
"""
from andor_jax.configs.mwd_small_mnist import get_config as small_mwd_config


def get_config():
    config = small_mwd_config()
    config.train.epochs = 8
    config.train.checkpoint_every_steps = 200
    config.evaluate.attacks = "fgsm,ifgsm,pgd,apgd-ce,square"
    config.evaluate.eps = "0.1:0.5:0.1"
    config.evaluate.limit = 500
    config.evaluate.pseudo_gradient_attacks = True
    config.evaluate.certify = True
    return config
