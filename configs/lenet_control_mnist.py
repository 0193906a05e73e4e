"""The control of `andor_lenet_mnist`: the same LeNet (conv 12 k5, pool, conv 16 k5, pool, fc 120, fc 84,
fc 10) with ordinary convolutions, dense layers and ReLU, trained on cross-entropy alone (no projection,
no loss2, no weight concentration), inputs in [-1, 1], SGD momentum 0.9, batch 200.  The learning rate is
the usual 0.01 (the paper's 5e-4 applies to its max-normalised gradients); 20 epochs."""
from andor_jax.config import base_config


def get_config():
    config = base_config()
    config.data.domain = (-1.0, 1.0)
    config.data.flatten = False
    config.model.name = "lenet"
    config.model.activation = "relu"
    config.train.epochs = 20
    config.train.batch_size = 200
    config.train.loss = "cross_entropy"
    config.train.optimizer = "sgd"
    config.train.learning_rate = 0.01
    config.train.momentum = 0.9
    config.evaluate.eps = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    return config
