"""ReLU MLP baseline of the MWD paper (Agrawal, de Alfaro & Helmbold, Table 1): 784-512-512-512-10,
log-softmax + NLL, AdaDelta lr 1.0, batch 100, 30 epochs, inputs in [0, 1].  Paper: 98.62 +- 0.08 %.

Variant ``small``: 784-32-10 for tests and notebooks (`config.small_variant`)."""
from andor_jax.config import base_config, check_variant, small_variant

VARIANTS = ("small",)


def get_config(arg=None):
    check_variant(arg, VARIANTS)
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (512, 512, 512)
    config.model.activation = "relu"
    config.train.loss = "cross_entropy"
    if arg == "small":
        config.model.hidden = (32,)
        small_variant(config)
    return config
