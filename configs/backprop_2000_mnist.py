"""Backprop baseline of Holzhausen et al. beside the Krotov-Hopfield network: one hidden layer of 2000 ReLU
units (784-2000-10), cross-entropy, Adam lr 1e-3, batch 100, 10 epochs, inputs in [0, 1].

Variant ``small``: 784-64-10 on 500 images for 2 epochs.
"""
from andor_jax.config import base_config, check_variant, small_variant

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (2000,)
    config.model.activation = "relu"
    config.train.loss = "cross_entropy"
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.batch_size = 100
    config.train.epochs = 10
    if arg == "small":
        small_variant(config)
        config.model.hidden = (64,)
    return config
