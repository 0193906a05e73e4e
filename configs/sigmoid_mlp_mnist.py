"""Sigmoid MLP baseline of the MWD paper: 784-512-512-512-10 with sigmoid units, squared-error loss on
one-hot targets, AdaDelta lr 1.0, batch 100, 30 epochs.  Paper: 96.88 +- 0.15 %.

Variant ``small``: 784-32-10 for tests and notebooks (`config.small_variant`)."""
from andor_jax.config import base_config, check_variant, small_variant

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (512, 512, 512)
    config.model.activation = "sigmoid"
    config.train.loss = "squared_error"
    if arg == "small":
        config.model.hidden = (32,)
        small_variant(config)
    return config
