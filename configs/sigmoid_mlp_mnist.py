"""Sigmoid MLP baseline of the MWD paper: 784-512-512-512-10 with sigmoid units, squared-error loss on
one-hot targets, AdaDelta lr 1.0, batch 100, 30 epochs.  Paper: 96.88 +- 0.15 %."""
from andor_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (512, 512, 512)
    config.model.activation = "sigmoid"
    config.train.loss = "squared_error"
    return config
