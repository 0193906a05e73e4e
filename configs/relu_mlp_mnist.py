"""ReLU MLP baseline of the MWD paper (Agrawal, de Alfaro & Helmbold, Table 1): 784-512-512-512-10,
log-softmax + NLL, AdaDelta lr 1.0, batch 100, 30 epochs, inputs in [0, 1].  Paper: 98.62 +- 0.08 %."""
from andor_jax.config import base_config


def get_config():
    config = base_config()
    config.model.name = "mlp"
    config.model.hidden = (512, 512, 512)
    config.model.activation = "relu"
    config.train.loss = "cross_entropy"
    return config
