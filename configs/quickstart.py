"""Quickstart: the embedded default that `andor-jax run` trains.  Small and fast (about a minute on a
2-core laptop CPU), on whichever MNIST source is found first (the embedded 5,000-image sample offline)."""
from andor_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (256, 256)
    config.model.activation = "relu"
    config.train.epochs = 5
    config.train.checkpoint_every_steps = 200
    config.evaluate.attacks = "fgsm,ifgsm,pgd,apgd-ce,square"
    config.evaluate.eps = "0.1:0.5:0.1"
    config.evaluate.limit = 500
    return config
